"""The embedded rollout engine (transformers ``generate``) on the shipped tiny model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.models import _takes_logits_to_keep, completion_logits
from verirl.rollout import make_engine
from verirl.rollout.base import SamplingConfig
from verirl.rollout.hf import HFEngine, completion_mask, prefill_shared
from verirl.tiny import tasks, tiny_model_path
from verirl.verifier import ConfigError


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    model.eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_path())


@pytest.fixture(scope="module")
def prompts():
    rows = tasks.read_jsonl(tiny_model_path() / "test.jsonl")[:5]
    return [f"Question: {r['question']}\nAnswer:" for r in rows]


def sample(engine, prompts, n, temperature, seed=0, max_new_tokens=56):
    torch.manual_seed(seed)
    return engine.generate(prompts, SamplingConfig(n, max_new_tokens, temperature))


def test_rows_masks_and_behaviour_logprobs(tiny, prompts):
    model, tok = tiny
    engine = HFEngine(model, tok)
    batch = sample(engine, prompts, 4, 0.8)
    N, T = batch.completion_ids.shape
    assert N == len(prompts) * 4 == len(batch.texts)
    for i in range(N):  # row k*n + j continues prompt k, without its left padding
        real = batch.prompt_ids[i][batch.prompt_mask[i].bool()]
        assert tok.decode(real) == prompts[i // 4]
        length = int(batch.completion_mask[i].sum())
        ids = batch.completion_ids[i, :length].tolist()
        assert (tok.eos_token_id in ids) == bool(batch.finished[i])
        if batch.finished[i]:
            assert ids.index(tok.eos_token_id) == length - 1  # the mask ends at the first EOS
        assert (batch.completion_ids[i, length:] == tok.pad_token_id).all()
        assert batch.texts[i] == tok.decode(ids, skip_special_tokens=True)
    # the stored behaviour log-probs are log π(a_t|s_t) at the sampling temperature
    logits = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                               batch.completion_mask, 0.8)
    recomputed = torch.log_softmax(logits, -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    valid = batch.completion_mask.bool()
    torch.testing.assert_close(batch.logprobs[valid], recomputed[valid], rtol=1e-4, atol=1e-4)
    assert (batch.logprobs[~valid] == 0).all()


def test_greedy_matches_plain_generate(tiny, prompts):
    model, tok = tiny
    batch = sample(HFEngine(model, tok), prompts[:2], 1, 0.0)
    assert batch.logprobs is None
    for i, p in enumerate(prompts[:2]):
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, do_sample=False, max_new_tokens=56, pad_token_id=tok.pad_token_id)
        assert batch.texts[i] == tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prompt_prefill_gives_the_same_samples(tiny, prompts, temperature):
    model, tok = tiny
    n = 1 if temperature == 0 else 6
    if not _takes_logits_to_keep(model):
        pytest.skip("this transformers version's causal LMs take no logits_to_keep: no shared prefill")
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert prefill_shared(model, enc.input_ids, enc.attention_mask, torch.arange(len(prompts)))  # sharing is on
    plain = sample(HFEngine(model, tok, share_prompts=False), prompts, n, temperature)
    shared = sample(HFEngine(model, tok, share_prompts=True), prompts, n, temperature)
    assert torch.equal(plain.completion_ids, shared.completion_ids)
    assert plain.texts == shared.texts
    if temperature:
        valid = plain.completion_mask.bool()
        torch.testing.assert_close(shared.logprobs[valid], plain.logprobs[valid], rtol=1e-4, atol=1e-4)


def test_one_token_prompt_falls_back_to_plain_prefill(tiny, prompts):
    model, tok = tiny
    short = ["7", prompts[0]]
    assert len(tok(short[0], add_special_tokens=False).input_ids) == 1
    plain = sample(HFEngine(model, tok, share_prompts=False), short, 3, 1.0, max_new_tokens=8)
    shared = sample(HFEngine(model, tok, share_prompts=True), short, 3, 1.0, max_new_tokens=8)
    assert torch.equal(plain.completion_ids, shared.completion_ids)


def test_a_model_with_its_own_cache_implementation_keeps_it(tiny, prompts):
    model, tok = tiny
    plain = sample(HFEngine(model, tok, share_prompts=False), prompts[:2], 3, 1.0, max_new_tokens=8)
    model.generation_config.cache_implementation = "static"
    try:
        shared = sample(HFEngine(model, tok, share_prompts=True), prompts[:2], 3, 1.0, max_new_tokens=8)
    finally:
        model.generation_config.cache_implementation = None
    assert shared.texts == plain.texts


def test_batch_size_splits_in_whole_groups(tiny, prompts):
    model, tok = tiny
    whole = sample(HFEngine(model, tok), prompts, 3, 0.0)
    # 7 completions per call → 2 prompts (6 completions) per call; groups never split
    split = HFEngine(model, tok, batch_size=7)
    calls = []
    original = split._generate
    split._generate = lambda ps, s: calls.append(len(ps)) or original(ps, s)
    parts = sample(split, prompts, 3, 0.0)
    assert calls == [2, 2, 1]
    assert parts.texts == whole.texts


def test_completion_mask_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (50, 12), generator=g)
    mask, finished = completion_mask(ids, [2, 5])
    for row, m, f in zip(ids.tolist(), mask.tolist(), finished.tolist()):
        ends = [t for t, x in enumerate(row) if x in (2, 5)]
        last = ends[0] if ends else len(row) - 1
        assert m == [1 if t <= last else 0 for t in range(len(row))]
        assert f == bool(ends)


def test_make_engine_names():
    with pytest.raises(ConfigError, match="choose 'hf' or 'vllm'"):
        make_engine("nope", None, None)
