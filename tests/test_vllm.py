"""The vLLM engine.

On any machine: the refusals (no vLLM, an unsupported version, a missing GPU, options
that do not go together) come as ConfigErrors before any model loads, and the layout
vLLM's token lists are put into is the HF engine's. With vLLM and a CUDA GPU
(``benchmarks/gpu_check.sh`` runs these): vLLM's greedy samples and log-probs agree with
the HF engine's on the tiny model, and after one optimizer step with a large learning
rate its next greedy sample is the HF engine's from the updated weights, for both weight
sync paths, sleeping between calls.
"""

from __future__ import annotations

import copy

import pytest
import torch

from verirl.config import load_config
from verirl.rollout.base import SamplingConfig
from verirl.rollout.hf import HFEngine
from verirl.rollout.vllm_engine import (SUPPORTED, installed_vllm, ipc_protocol, ipc_update_info,
                                         supported_version_error, to_rollout_batch)
from verirl.tiny import tasks, tiny_model_path
from verirl.verifier import ConfigError

HAVE_VLLM = installed_vllm() is not None
HAVE_GPU = torch.cuda.is_available()
needs_vllm_gpu = pytest.mark.skipif(
    not (HAVE_VLLM and HAVE_GPU),
    reason=f"needs vLLM and a CUDA GPU (vLLM {'installed' if HAVE_VLLM else 'not installed'}, "
           f"{'a' if HAVE_GPU else 'no'} CUDA device); benchmarks/gpu_check.sh runs these on a GPU machine",
)


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    return model.eval(), AutoTokenizer.from_pretrained(tiny_model_path())


@pytest.fixture(scope="module")
def prompts():
    return [f"Question: {r['question']}\nAnswer:" for r in tasks.read_jsonl(tiny_model_path() / "test.jsonl")[:6]]


# --------------------------------------------------------------------------- everywhere


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here: the missing-vLLM refusal cannot be seen")
def test_engine_vllm_without_vllm_is_a_config_error_naming_the_versions():
    with pytest.raises(ConfigError, match=rf"needs vLLM >= {SUPPORTED[0]} and < {SUPPORTED[1]}.*verirl\[vllm\]"):
        load_config(None, ["rollout.engine=vllm"])


@pytest.mark.parametrize("version, ok", [
    ("0.16.2", False), ("0.17.0", True), ("0.25.1", True), ("0.34.0", True), ("0.34.1+cu129", True),
    ("0.34.0rc1", True), ("0.35.0", False), ("1.0.0", False), ("0.8.5.post1", False),
])
def test_supported_versions(version, ok):
    error = supported_version_error(version)
    assert (error is None) == ok
    if not ok:
        assert f"vLLM {version} is installed" in error and f"vllm>={SUPPORTED[0]},<{SUPPORTED[1]}" in error


# vLLM's IPC engine, release by release (read from each release's package: see
# verirl.rollout.vllm_engine.IPCProtocol): the handle was reduce_tensor's (function,
# arguments) pair up to 0.21.0 and the arguments alone from 0.22.0; an update became a
# start / update / finish session in 0.21.0.
@pytest.mark.parametrize("version, args_only, session", [
    ("0.17.0", False, False), ("0.18.1", False, False), ("0.20.2", False, False),
    ("0.21.0", False, True), ("0.21.1.dev3+gabc", False, True),
    ("0.22.0", True, True), ("0.22.0rc1", True, True), ("0.25.1", True, True), ("0.34.0", True, True),
])
def test_ipc_protocol_follows_the_installed_release(version, args_only, session):
    protocol = ipc_protocol(version)
    assert (protocol.args_only, protocol.session) == (args_only, session)


def _rebuild_cuda_tensor(*args):  # stands in for torch's: reduce_tensor's first element
    return args


@pytest.mark.parametrize("version, pair", [("0.17.0", True), ("0.21.0", True), ("0.22.0", False), ("0.34.0", False)])
def test_ipc_handle_is_what_that_releases_worker_unpacks(version, pair):
    """The handle goes through each release's own unpacking (ipc_engine.receive_weights):
    ``func, args = handle`` before 0.22.0, the handle as the arguments from then on; either
    way argument 6 is the device index the worker overwrites with its own."""
    reduced = (_rebuild_cuda_tensor, tuple(f"arg{i}" for i in range(15)))
    handle = ipc_protocol(version).handle(reduced)
    if pair:
        func, args = handle
        assert func is _rebuild_cuda_tensor
    else:
        func, args = _rebuild_cuda_tensor, handle  # vLLM names rebuild_cuda_tensor itself
    args = list(args)
    assert args[6] == "arg6" and len(args) == 15
    args[6] = 0
    assert func(*args)[6] == 0


def test_ipc_update_calls_by_release():
    info = ipc_update_info(["w"], ["float32"], [[2, 3]], [{"GPU-uuid": ("handle",)}])
    assert set(info) == {"names", "dtype_names", "shapes", "ipc_handles"}
    update = ("update_weights", ({"update_info": info},))
    assert ipc_protocol("0.20.2").calls(info) == [update]  # LLM.update_weights does the whole update
    assert ipc_protocol("0.21.0").calls(info) == [("start_weight_update", ()), update, ("finish_weight_update", ())]
    with pytest.raises(ValueError, match="one name, dtype, shape and handle per tensor"):
        ipc_update_info(["w", "b"], ["float32"], [[2, 3]], [{}])


@pytest.mark.parametrize("overrides, match", [
    (["rollout.tensor_parallel_size=2"], r"rollout.tensor_parallel_size applies to rollout.engine=vllm"),
    (["rollout.engine=vllm", "model.lora_rank=8"], r"model.lora_rank with rollout.engine=vllm"),
    (["rollout.gpu_memory_utilization=1.5"], r"rollout.gpu_memory_utilization must be in \(0, 1\]"),
    (["rollout.vllm_sleep_level=3"], r"'rollout.vllm_sleep_level' must be one of \[0, 1, 2\]"),
    (["rollout.vllm_weight_sync=nccl"], r"'rollout.vllm_weight_sync' must be one of \['auto', 'weight_transfer'"),
])
def test_vllm_options_are_checked_before_any_model_loads(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_token_lists_take_the_hf_engines_layout(tiny, prompts):
    """An HF engine batch taken apart into the lists vLLM returns (prompt ids, completion
    ids up to EOS, per-token log-probs) and put back together is the same batch."""
    model, tok = tiny
    torch.manual_seed(0)
    engine = HFEngine(model, tok)
    batch = engine.generate(prompts, SamplingConfig(3, 20, 1.0))
    prompt_lists = [ids[m.bool()].tolist() for ids, m in zip(batch.prompt_ids, batch.prompt_mask)]
    lengths = batch.completion_mask.sum(-1).tolist()
    completions = [batch.completion_ids[i, :n].tolist() for i, n in enumerate(lengths)]
    logprobs = [batch.logprobs[i, :n].tolist() for i, n in enumerate(lengths)]
    rebuilt = to_rollout_batch(prompt_lists, completions, logprobs, tok, engine.eos_ids)
    for field in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "finished"):
        assert torch.equal(getattr(rebuilt, field), getattr(batch, field)), field
    torch.testing.assert_close(rebuilt.logprobs, batch.logprobs)
    assert rebuilt.texts == batch.texts


# --------------------------------------------------------------------------- with vLLM on a GPU


def _vllm_engine(model, tok, weight_sync: str, sleep_level: int = 2):
    from verirl.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(model, tok, model_path=str(tiny_model_path()), dtype="float32", seed=0,
                      gpu_memory_utilization=0.3, sleep_level=sleep_level, weight_sync=weight_sync,
                      enforce_eager=True)


@pytest.fixture(scope="module", params=["weight_transfer", "load_weights"])
def on_gpu(request, tiny):
    """A CUDA copy of the tiny model and a colocated vLLM engine kept in step with it."""
    if not (HAVE_VLLM and HAVE_GPU):
        pytest.skip("needs vLLM and a CUDA GPU")
    from verirl.rollout.vllm_engine import check_vllm

    try:
        check_vllm(request.param)
    except ConfigError as exc:
        pytest.skip(str(exc))
    model = copy.deepcopy(tiny[0]).cuda()
    engine = _vllm_engine(model, tiny[1], request.param)
    yield model, tiny[1], engine
    del engine
    torch.cuda.empty_cache()


@pytest.mark.gpu
@needs_vllm_gpu
def test_vllm_greedy_matches_the_hf_engine_and_its_logprobs_the_trainers(on_gpu, prompts):
    model, tok, engine = on_gpu
    hf = HFEngine(model, tok)
    assert engine.generate(prompts, SamplingConfig(1, 40, 0.0)).texts == hf.generate(prompts, SamplingConfig(1, 40, 0.0)).texts
    from verirl.models import completion_logits

    sampled = engine.generate(prompts, SamplingConfig(4, 40, 1.0))
    batch = sampled
    logits = completion_logits(model, batch.prompt_ids.cuda(), batch.prompt_mask.cuda(), batch.completion_ids.cuda(),
                               batch.completion_mask.cuda(), 1.0)
    trainer_logp = torch.log_softmax(logits, -1).gather(-1, batch.completion_ids.cuda().unsqueeze(-1)).squeeze(-1)
    valid = batch.completion_mask.bool()
    diff = (trainer_logp.cpu()[valid] - batch.logprobs[valid]).abs()
    assert diff.max() < 1e-2, f"max |log π_trainer − log π_vllm| = {diff.max():.2e}"
    assert len({t for t in sampled.texts}) > len(prompts)  # G samples per prompt, not one copied


@pytest.mark.gpu
@needs_vllm_gpu
def test_after_an_optimizer_step_vllm_samples_the_updated_policy(on_gpu, prompts):
    model, tok, engine = on_gpu
    greedy = SamplingConfig(1, 40, 0.0)
    before = engine.generate(prompts, greedy).texts
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    batch = HFEngine(model, tok).generate(prompts, SamplingConfig(2, 40, 1.0))
    from verirl.models import completion_logits

    logits = completion_logits(model, batch.prompt_ids.cuda(), batch.prompt_mask.cuda(), batch.completion_ids.cuda(),
                               batch.completion_mask.cuda(), 1.0)
    logp = torch.log_softmax(logits, -1).gather(-1, batch.completion_ids.cuda().unsqueeze(-1)).squeeze(-1)
    (-(logp * batch.completion_mask.cuda()).sum()).backward()  # a large step towards these samples
    optimizer.step()
    engine.sleep()  # as the trainer does around its update
    engine.sync_weights()
    after = engine.generate(prompts, greedy).texts
    assert after == HFEngine(model, tok).generate(prompts, greedy).texts
    assert after != before  # the step changed the policy, and vLLM follows it
