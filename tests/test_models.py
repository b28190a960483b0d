"""Completion logits: the shared-prompt forward against the plain one, on real tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.models import completion_logits, prompt_groups, shared_prompt_forward
from verirl.tiny import tiny_model_path


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    tok.padding_side = "left"
    return model, tok


def grouped_batch(tok, questions, G, T, seed=0):
    """Left-padded prompts, each repeated G times, rows shuffled (groups not contiguous);
    random completions of T tokens with right padding of varying length."""
    g = torch.Generator().manual_seed(seed)
    enc = tok([f"Question: {q}\nAnswer:" for q in questions], return_tensors="pt", padding=True,
              add_special_tokens=False)
    perm = torch.randperm(len(questions) * G, generator=g)
    prompt_ids = enc.input_ids.repeat_interleave(G, 0)[perm]
    prompt_mask = enc.attention_mask.repeat_interleave(G, 0)[perm]
    N = prompt_ids.shape[0]
    completion_ids = torch.randint(3, len(tok), (N, T), generator=g)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    completion_mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tok.pad_token_id)
    return prompt_ids, prompt_mask, completion_ids, completion_mask


QUESTIONS = ["Tom has 3 apples. He buys 4 more. How many apples does Tom have now?",
             "Mia earns $7 an hour and works 5 hours. How much money does Mia earn?",
             "Sam had 20 cards."]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("T", [1, 2, 9])
def test_shared_prompt_logits_and_gradients_match_the_plain_forward(tiny, temperature, T):
    model, tok = tiny
    batch = grouped_batch(tok, QUESTIONS, G=4, T=T)
    first_rows, index = prompt_groups(model, batch[0])  # the shared path is taken, not skipped
    assert len(first_rows) == 3 and torch.equal(batch[0][first_rows][index], batch[0])
    plain = completion_logits(model, *batch, temperature)
    shared = completion_logits(model, *batch, temperature, share_prompts=True)
    valid = batch[3].bool()
    assert shared.shape == plain.shape
    torch.testing.assert_close(shared[valid], plain[valid], rtol=1e-4, atol=1e-4)

    weights = torch.randn(plain.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in model.parameters()]
    g_plain = torch.autograd.grad((plain * weights)[valid].sum(), params)
    g_shared = torch.autograd.grad((shared * weights)[valid].sum(), params)
    for a, b in zip(g_plain, g_shared):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * float(a.abs().max()) + 1e-6)


def test_shared_prompt_outputs_depend_on_their_own_prompt(tiny):
    """Each row must read its own prompt's cache: swapping the index changes the logits."""
    model, tok = tiny
    enc = tok([f"Question: {q}\nAnswer:" for q in QUESTIONS[:2]], return_tensors="pt", padding=True,
              add_special_tokens=False)
    completion = torch.full((2, 3), 9)
    mask = torch.ones(2, 3, dtype=torch.long)
    straight = shared_prompt_forward(model, enc.input_ids, enc.attention_mask, torch.tensor([0, 1]), completion, mask)
    swapped = shared_prompt_forward(model, enc.input_ids, enc.attention_mask, torch.tensor([1, 0]), completion, mask)
    torch.testing.assert_close(straight[0], swapped[1])
    assert not torch.allclose(straight[0], straight[1], atol=1e-3)


def test_sharing_falls_back_when_no_prompt_repeats(tiny):
    model, tok = tiny
    batch = grouped_batch(tok, QUESTIONS, G=1, T=5)
    torch.testing.assert_close(completion_logits(model, *batch, share_prompts=True), completion_logits(model, *batch))


def test_char_model_with_one_layer(char_model):
    """A second architecture size and a character tokenizer (prompts of equal length)."""
    model = AutoModelForCausalLM.from_pretrained(char_model)
    tok = AutoTokenizer.from_pretrained(char_model)
    tok.padding_side = "left"
    batch = grouped_batch(tok, ["1+2=", "30+4=", "5+66="], G=3, T=6, seed=2)
    valid = batch[3].bool()
    torch.testing.assert_close(completion_logits(model, *batch, share_prompts=True)[valid],
                               completion_logits(model, *batch)[valid], rtol=1e-4, atol=1e-4)
