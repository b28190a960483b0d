"""The embedded rollout engine (transformers ``generate``) on the shipped tiny model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.models import _takes_logits_to_keep, completion_logits
from verirl.rollout import make_engine
from verirl.rollout.base import SamplingConfig
from verirl.models import prompt_cache
from verirl.rollout.decode import buffer_cache, choose_tokens, decode
from verirl.rollout.hf import DECODERS, HFEngine, completion_mask, prefill_shared
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


@pytest.mark.parametrize("decoder", DECODERS)
def test_rows_masks_and_behaviour_logprobs(tiny, prompts, decoder):
    model, tok = tiny
    engine = HFEngine(model, tok, decoder=decoder)
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


@pytest.mark.parametrize("decoder", DECODERS)
def test_greedy_matches_plain_generate(tiny, prompts, decoder):
    model, tok = tiny
    batch = sample(HFEngine(model, tok, decoder=decoder), prompts, 1, 0.0)
    assert batch.logprobs is None
    for i, p in enumerate(prompts):
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, do_sample=False, max_new_tokens=56, pad_token_id=tok.pad_token_id)
        ids = out[0, enc.input_ids.shape[1]:].tolist()
        assert batch.texts[i] == tok.decode(ids, skip_special_tokens=True)
        length = int(batch.completion_mask[i].sum())
        assert batch.completion_ids[i, :length].tolist() == ids[:length]


def test_loop_greedy_equals_generate_greedy_in_a_padded_batch_of_groups(tiny, prompts):
    """Left padding, n = 3 copies per prompt, rows dropped as they finish: the loop's greedy
    tokens are generate's, token for token, with the same masks."""
    model, tok = tiny
    loop = sample(HFEngine(model, tok, decoder="loop"), prompts, 3, 0.0)
    plain = sample(HFEngine(model, tok, decoder="generate"), prompts, 3, 0.0)
    assert torch.equal(loop.completion_ids, plain.completion_ids)
    assert torch.equal(loop.completion_mask, plain.completion_mask)
    assert torch.equal(loop.finished, plain.finished) and loop.texts == plain.texts


@pytest.mark.parametrize("top_p", [1.0, 0.7])
@pytest.mark.parametrize("decoder", DECODERS)
def test_nucleus_logprobs_are_of_the_renormalised_nucleus(tiny, prompts, decoder, top_p):
    """With ``top_p < 1`` every sampled token lies in its step's nucleus, and its stored
    log-prob is log(p / mass of the nucleus) at the temperature (both decoders)."""
    model, tok = tiny
    torch.manual_seed(1)
    batch = HFEngine(model, tok, decoder=decoder).generate(prompts, SamplingConfig(4, 24, 1.3, top_p))
    logits = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                               batch.completion_mask, 1.3)
    probs = torch.softmax(logits, -1)
    for i in range(batch.completion_ids.shape[0]):
        for t in range(int(batch.completion_mask[i].sum())):
            p = probs[i, t]
            token = int(batch.completion_ids[i, t])
            ranked = p.sort(descending=True).values
            before = ranked.cumsum(0) - ranked
            nucleus = ranked[before < top_p]
            assert p[token] >= nucleus.min() * (1 - 1e-5)  # inside the nucleus
            want = torch.log(p[token] / nucleus.sum())
            assert abs(batch.logprobs[i, t].item() - want.item()) < 1e-4


@pytest.mark.parametrize("compact_frac", [0.0, 0.5, 1.0])
def test_dropping_finished_rows_changes_no_sample(tiny, prompts, compact_frac):
    """The loop's samples and log-probs do not depend on when finished rows leave the batch."""
    model, tok = tiny
    keep_all = sample(HFEngine(model, tok, compact_frac=1.0), prompts, 4, 1.0)
    dropped = sample(HFEngine(model, tok, compact_frac=compact_frac), prompts, 4, 1.0)
    assert torch.equal(keep_all.completion_ids, dropped.completion_ids)
    valid = keep_all.completion_mask.bool()
    torch.testing.assert_close(dropped.logprobs[valid], keep_all.logprobs[valid], rtol=1e-5, atol=1e-5)


def _decode_rows(model, tok, prompts, n, temperature, compact_frac, share, preallocate, top_p=1.0,
                 max_new_tokens=40, ready_masks=True, eos_ids=None):
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    index = torch.arange(len(prompts)).repeat_interleave(n)
    ids, mask = enc.input_ids, enc.attention_mask
    if not share:
        ids, mask, index = ids[index], mask[index], torch.arange(len(index))
    torch.manual_seed(3)
    return decode(model, ids, mask, index, max_new_tokens, temperature, top_p, eos_ids or [tok.eos_token_id],
                  tok.pad_token_id, compact_frac=compact_frac, preallocate=preallocate, ready_masks=ready_masks)


@pytest.mark.parametrize("ready_masks", [True, False])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("compact_frac", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.8, 0.7)])
def test_lean_decode_paths_give_the_plain_loops_samples(tiny, prompts, temperature, top_p, compact_frac, share,
                                                        ready_masks):
    """Writing the KV cache into buffers (views of their filled prefix into attention)
    and handing the model its 4-D attention mask ready-made give the tokens and
    log-probs of transformers' concatenating cache with the 2-D mask, whatever rows
    leave the batch when, with and without the shared prefill."""
    model, tok = tiny
    grown = _decode_rows(model, tok, prompts, 4, temperature, compact_frac, share, preallocate=False, top_p=top_p,
                         ready_masks=False)
    buffered = _decode_rows(model, tok, prompts, 4, temperature, compact_frac, share, preallocate=True, top_p=top_p,
                            ready_masks=ready_masks)
    assert torch.equal(grown.tokens, buffered.tokens)
    assert torch.equal(grown.finished, buffered.finished)
    if temperature:
        torch.testing.assert_close(buffered.logprobs, grown.logprobs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("switches", [{"preallocate": False}, {"ready_masks": False}])
def test_engine_switches_of_the_loop_change_no_sample(tiny, prompts, switches):
    """HFEngine's switches for measuring the loop's savings leave its samples alone."""
    model, tok = tiny
    full, ablated = HFEngine(model, tok), HFEngine(model, tok, **switches)
    for seed in (0, 1):
        a, b = sample(full, prompts, 3, 1.0, seed=seed), sample(ablated, prompts, 3, 1.0, seed=seed)
        assert torch.equal(a.completion_ids, b.completion_ids)
        torch.testing.assert_close(b.logprobs, a.logprobs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_new_tokens", [6, 40])
@pytest.mark.parametrize("first_columns", [2, 64])
def test_buffers_that_grow_and_rows_cut_at_the_limit_give_the_same_samples(tiny, prompts, monkeypatch,
                                                                           first_columns, max_new_tokens):
    """Buffers that start small and double (2 columns past the prompt: several
    doublings), and rows cut off at the length limit (6 tokens: most rows), give the
    concatenating cache's samples."""
    import verirl.rollout.decode as decoding

    model, tok = tiny
    monkeypatch.setattr(decoding, "FIRST_COLUMNS", first_columns)
    grown = _decode_rows(model, tok, prompts, 4, 1.0, 0.25, True, preallocate=False, ready_masks=False,
                         max_new_tokens=max_new_tokens)
    buffered = _decode_rows(model, tok, prompts, 4, 1.0, 0.25, True, preallocate=True,
                            max_new_tokens=max_new_tokens)
    assert torch.equal(grown.tokens, buffered.tokens)
    assert torch.equal(grown.finished, buffered.finished)
    torch.testing.assert_close(buffered.logprobs, grown.logprobs, rtol=1e-5, atol=1e-5)
    if max_new_tokens == 6:
        assert not buffered.finished.all()  # the length limit was reached


def test_buffered_rows_leaving_move_and_free(tiny, prompts):
    """Rows leaving a buffered cache: the live rows' keys are where fill_from_the_end
    puts them; once half the rows or more have left, the keys live in new, smaller
    buffers (the old memory is freed); a longer reordering selects rows."""
    from transformers import cache_utils

    from verirl.rollout.decode import fill_from_the_end

    if not hasattr(cache_utils, "DynamicLayer"):
        pytest.skip("this transformers has no per-layer cache objects: nothing is buffered")
    model, tok = tiny
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    _, cache = prompt_cache(model, enc.input_ids, enc.attention_mask, logits_to_keep=1)
    rows = torch.arange(len(prompts)).repeat_interleave(2)  # 10 rows
    assert buffer_cache(cache, rows, enc.input_ids.shape[1] + 8)
    layer = cache.layers[0]
    want = layer.keys.clone()
    alive = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)  # 3 leave: kept in place
    keep = fill_from_the_end(alive)
    before = layer.key_buffer.data_ptr()
    cache.reorder_cache(keep)
    assert torch.equal(layer.keys, want[keep]) and layer.key_buffer.data_ptr() == before
    want = layer.keys.clone()
    alive = torch.tensor([0, 1, 0, 0, 1, 0, 1], dtype=torch.bool)  # 4 of 7 leave: smaller buffers
    keep = fill_from_the_end(alive)
    cache.reorder_cache(keep)
    assert torch.equal(layer.keys, want[keep]) and layer.key_buffer.data_ptr() != before
    assert layer.key_buffer.shape[0] == 3
    cache.reorder_cache(torch.tensor([2, 0, 1, 1, 0]))  # more rows than the buffers hold
    assert torch.equal(layer.keys, want[keep][torch.tensor([2, 0, 1, 1, 0])])
    with pytest.raises(NotImplementedError):
        layer.crop(-1)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_lean_decode_paths_with_grouped_query_attention(tiny, prompts, temperature):
    """The same with a model whose attention shares key/value heads (GQA: transformers
    packs the mask or repeats the keys), built offline with random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = tiny
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    # random weights rarely say EOS: one token in 25 ends a row, so rows leave at
    # different steps (the batch is compacted) and some run to the limit
    stops = list(range(3, len(tok), 25))
    plain = _decode_rows(model, tok, prompts, 3, temperature, 0.25, True, preallocate=False, ready_masks=False,
                         eos_ids=stops)
    lean = _decode_rows(model, tok, prompts, 3, temperature, 0.25, True, preallocate=True, ready_masks=True,
                        eos_ids=stops)
    assert 0 < int(plain.finished.sum()) < len(plain.finished)  # some rows left the batch, some ran on
    assert torch.equal(plain.tokens, lean.tokens)
    if temperature:
        torch.testing.assert_close(lean.logprobs, plain.logprobs, rtol=1e-5, atol=1e-5)


def test_the_tiny_model_takes_its_decode_masks_ready_made(tiny):
    """The ready-made mask is the path taken for an SDPA Llama on a transformers with
    masking_utils; eager attention (which adds its mask) and sliding-window layers are not."""
    import copy

    from verirl.rollout.decode import takes_ready_mask

    try:
        import transformers.masking_utils  # noqa: F401
    except ImportError:
        pytest.skip("this transformers has no masking_utils: the model builds every mask")
    model, _ = tiny
    assert takes_ready_mask(model)
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"
    assert not takes_ready_mask(eager)
    windowed = copy.deepcopy(model)
    windowed.config.layer_types = ["full_attention", "sliding_attention"] * 2
    assert not takes_ready_mask(windowed)


def test_models_whose_masks_differ_build_their_own(tiny, prompts):
    """A vision-language model whose text layers slide a window (the window lives in
    its text config) and an ALiBi model (its biases are built from the 2-D mask) are
    not handed a ready-made mask; both decode the same tokens as with the 2-D mask."""
    import transformers
    from transformers import AutoModelForCausalLM

    from verirl.rollout.decode import takes_ready_mask

    if not hasattr(transformers, "Gemma3Config") or not hasattr(transformers, "FalconConfig"):
        pytest.skip("this transformers has no Gemma 3 or Falcon")
    torch.manual_seed(0)
    gemma = AutoModelForCausalLM.from_config(transformers.Gemma3Config(
        text_config=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         sliding_window=4, layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
                         bos_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=255, boi_token_index=254, eoi_token_index=253),
        attn_implementation="sdpa").eval()
    falcon = AutoModelForCausalLM.from_config(transformers.FalconConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, alibi=True),
        attn_implementation="sdpa").eval()
    for model, vocab in ((gemma, 250), (falcon, 64)):
        assert not takes_ready_mask(model)
        ids = torch.randint(3, vocab, (3, 12))
        mask = (torch.arange(12)[None] >= torch.tensor([0, 3, 6])[:, None]).long()
        index = torch.arange(3).repeat_interleave(2)
        plain = decode(model, ids * mask, mask, index, 10, 0.0, 1.0, [2], 0, ready_masks=False, preallocate=False)
        lean = decode(model, ids * mask, mask, index, 10, 0.0, 1.0, [2], 0)
        assert torch.equal(plain.tokens, lean.tokens)


def test_preallocated_buffers_are_used_with_the_installed_transformers(tiny, prompts):
    """The buffered cache is the path the loop takes with a plain transformers dynamic
    cache (else the speed-up would vanish silently), its keys are views of the buffers,
    and a cache of another kind (here an unfilled one) is left as it is."""
    from transformers import cache_utils

    if not hasattr(cache_utils, "DynamicLayer"):
        pytest.skip("this transformers (< 4.56) has no per-layer cache objects: the loop concatenates")
    model, tok = tiny
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    _, cache = prompt_cache(model, enc.input_ids, enc.attention_mask, logits_to_keep=1)
    before = [layer.keys.clone() for layer in cache.layers]
    rows = torch.tensor([2, 2, 0, 4])
    assert buffer_cache(cache, rows, enc.input_ids.shape[1] + 10)
    P = enc.input_ids.shape[1]
    for layer, keys in zip(cache.layers, before):
        assert layer.keys.shape == (4, keys.shape[1], P, keys.shape[3])
        assert layer.keys.data_ptr() == layer.key_buffer.data_ptr()  # a view, not a copy
        assert torch.equal(layer.keys, keys[rows])
    assert cache.get_seq_length() == P
    empty = cache_utils.DynamicCache()
    assert not buffer_cache(empty, rows, 10)


@pytest.mark.parametrize("batch_size", [0, 6])
@pytest.mark.parametrize("decoder", DECODERS)
def test_every_completion_is_reported_once_as_it_finishes(tiny, prompts, decoder, batch_size):
    model, tok = tiny
    seen: list[tuple[int, str, int]] = []
    order: list[list[int]] = []

    def on_finished(rows, texts, lengths):
        order.append(rows)
        seen.extend(zip(rows, texts, lengths))

    torch.manual_seed(0)
    batch = HFEngine(model, tok, decoder=decoder, batch_size=batch_size).generate(
        prompts, SamplingConfig(3, 40, 1.0), on_finished=on_finished)
    assert sorted(r for r, _, _ in seen) == list(range(len(batch.texts)))
    for row, text, length in seen:
        assert text == batch.texts[row] and length == int(batch.completion_mask[row].sum())
    if decoder == "loop" and batch_size == 0:  # reported as they end: shorter ones first
        lengths = {row: length for row, _, length in seen}
        ends = [max(lengths[r] for r in rows) for rows in order]
        assert len(order) > 1 and ends == sorted(ends)


def test_inverse_cdf_sampling_is_exact():
    """Uniforms on a fine grid land on token k in proportion p_k; no zero-probability token
    is ever chosen, even at u → 1; the nucleus keeps the most probable tokens."""
    logits = torch.log(torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0]])).expand(4000, 5).clone()
    u = (torch.arange(4000, dtype=torch.float32) + 0.5) / 4000
    tokens, logp = choose_tokens(logits, 1.0, 1.0, u)
    counts = torch.bincount(tokens, minlength=5).float() / 4000
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(logp, torch.log(torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0]))[tokens])
    edge, _ = choose_tokens(logits[:1], 1.0, 1.0, torch.tensor([1.0 - 2**-24]))
    assert edge.item() == 3  # u just below 1 takes the last token with probability
    tokens, logp = choose_tokens(logits, 1.0, 0.8, u)  # nucleus {0.6, 0.3}: mass 0.9
    counts = torch.bincount(tokens, minlength=5).float() / 4000
    torch.testing.assert_close(counts, torch.tensor([0.0, 0.0, 0.6 / 0.9, 0.3 / 0.9, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(logp, torch.log(torch.tensor([1.0, 1.0, 0.6 / 0.9, 0.3 / 0.9, 1.0]))[tokens])
    greedy, none = choose_tokens(logits[:2], 0.0, 1.0, None)
    assert greedy.tolist() == [2, 2] and none is None
    # temperature flattens: T = 2 samples from p^(1/2) normalised
    tokens, _ = choose_tokens(logits, 2.0, 1.0, u)
    want = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0]).sqrt()
    torch.testing.assert_close(torch.bincount(tokens, minlength=5).float() / 4000, want / want.sum(), atol=1e-3, rtol=0)


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
    split._generate = lambda ps, s, cb: calls.append(len(ps)) or original(ps, s, cb)
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
    with pytest.raises(ConfigError, match=r"choose one of \['hf', 'vllm'\]"):
        make_engine("nope", None, None)
