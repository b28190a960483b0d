"""Rollout engines: sample G completions per prompt and return token ids, masks and
behaviour log-probs (:class:`RolloutBatch`). ``hf`` (the trainer's transformers model,
sampled by a lean decode loop or by ``generate``) is the embedded default that works
anywhere; ``vllm`` is the GPU engine (optional extra, imported lazily)."""

from __future__ import annotations

from typing import Any

from verirl.rollout.base import RolloutBatch, RolloutEngine, SamplingConfig
from verirl.verifier import ConfigError

__all__ = ["RolloutBatch", "RolloutEngine", "SamplingConfig", "engine_options", "make_engine"]

ENGINES = ("hf", "vllm")


def engine_options(config: Any, model_path: str) -> dict[str, Any]:
    """The keyword arguments :func:`make_engine` gives the engine ``config.rollout.engine``
    names, read from the config (``model_path``: where the policy was loaded from)."""
    r, m = config.rollout, config.model
    if r.engine == "hf":
        return {"batch_size": r.batch_size, "share_prompts": m.share_prompt_forward, "decoder": r.hf_decoder}
    from verirl.data import resolve_path

    return {"model_path": str(resolve_path(model_path)), "dtype": m.dtype, "seed": config.train.seed,
            "gpu_memory_utilization": r.gpu_memory_utilization, "tensor_parallel_size": r.tensor_parallel_size,
            "sleep_level": r.vllm_sleep_level, "weight_sync": r.vllm_weight_sync,
            "enforce_eager": r.vllm_enforce_eager, "max_model_len": r.vllm_max_model_len,
            "trust_remote_code": m.trust_remote_code}


def make_engine(name: str, model: Any, tokenizer: Any, **options: Any) -> RolloutEngine:
    """Build the engine called ``name`` for the given policy model and tokenizer."""
    if name == "hf":
        from verirl.rollout.hf import HFEngine

        return HFEngine(model, tokenizer, **options)
    if name == "vllm":
        from verirl.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model, tokenizer, **options)
    raise ConfigError(f"unknown rollout.engine {name!r}; choose one of {list(ENGINES)}")
