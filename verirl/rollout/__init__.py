"""Rollout engines: sample G completions per prompt and return token ids, masks and
behaviour log-probs (:class:`RolloutBatch`). ``hf`` (transformers ``generate``) is the
embedded default that works anywhere; ``vllm`` is the GPU engine (optional extra,
imported lazily)."""

from __future__ import annotations

from typing import Any

from verirl.rollout.base import RolloutBatch, RolloutEngine, SamplingConfig
from verirl.verifier import ConfigError

__all__ = ["RolloutBatch", "RolloutEngine", "SamplingConfig", "make_engine"]


def make_engine(name: str, model: Any, tokenizer: Any, **options: Any) -> RolloutEngine:
    """Build the engine called ``name`` for the given policy model and tokenizer."""
    if name == "hf":
        from verirl.rollout.hf import HFEngine

        return HFEngine(model, tokenizer, batch_size=options.get("batch_size", 0),
                        share_prompts=options.get("share_prompts", True), decoder=options.get("decoder", "loop"))
    if name == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ConfigError(
                "rollout.engine=vllm needs vLLM on a CUDA machine: pip install 'verirl[vllm]'; "
                "use rollout.engine=hf to sample with transformers instead"
            ) from None
        raise ConfigError("rollout.engine=vllm is not implemented yet; use rollout.engine=hf")
    raise ConfigError(f"unknown rollout.engine {name!r}; choose 'hf' or 'vllm'")
