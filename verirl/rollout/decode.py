"""The HF engine's default decoder: a lean sampling loop over a transformers causal LM's
own forward, for the small batches and models of CPU runs, where ``generate``'s
per-token bookkeeping costs as much as the model.

What it does differently from ``generate`` (same model calls, same KV cache object):

- each distinct prompt is prefilled once and its KV cache copied to its ``n`` rows;
- rows that finished are dropped from the batch (their KV cache rows with them) once
  they are ``compact_frac`` of it, so the model stops computing tokens nobody keeps;
- sampling draws one uniform number per original row and step from torch's global RNG
  and inverts the cumulative distribution (``searchsorted``), instead of
  ``torch.multinomial``: the same distribution, far cheaper on a CPU, and the samples
  do not depend on when rows are dropped. The samples therefore differ from
  ``generate``'s for the same seed; greedy decoding (``temperature == 0``) is argmax in
  both and gives exactly ``generate``'s tokens;
- the log-prob of each sampled token is taken from the distribution it was sampled
  from (temperature, then nucleus renormalisation when ``top_p < 1``) on the spot,
  with no ``[N, T, V]`` logits kept;
- finished completions are reported as they finish (``on_finished``), so their
  scoring can start while the rest are still generating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

#: ``on_finished(rows, token_ids)``: rows (indices into the decoded batch) whose
#: completions just ended (EOS or the length limit), with each one's tokens (EOS included)
RowsFinished = Callable[[list[int], list[list[int]]], None]


@dataclass
class Decoded:
    """``N`` completions: ``tokens`` ``[N, T]`` right-padded with ``pad_id`` after each
    row's first EOS, ``logprobs`` ``[N, T]`` of the sampled tokens (0 on padding; None
    when greedy), ``finished[N]`` (ended with EOS). ``T`` is the longest completion."""

    tokens: Tensor
    logprobs: Tensor | None
    finished: Tensor


def can_decode(model: Any) -> str | None:
    """Why :func:`decode` cannot run ``model`` (``None`` when it can): it needs a
    transformers decoder-only LM that takes a KV cache object and does not ask for its
    own cache implementation (static, hybrid, ...), which ``generate`` builds for it."""
    from verirl.models import cache_kwarg_name

    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if cache_kwarg_name(model) is None:
        return "a model whose forward takes no KV cache"
    if getattr(getattr(model, "generation_config", None), "cache_implementation", None) is not None:
        return "a model that names its own cache implementation"
    return None


def choose_tokens(logits: Tensor, temperature: float, top_p: float, uniform: Tensor | None
                  ) -> tuple[Tensor, Tensor | None]:
    """Next tokens ``[n]`` from ``logits`` ``[n, V]`` and their log-probs under the
    distribution they were drawn from (None when greedy).

    ``temperature == 0``: ``argmax``. Otherwise ``p = softmax(logits / temperature)``,
    restricted when ``top_p < 1`` to the nucleus (the most probable tokens, in order,
    until their mass reaches ``top_p``; at least one) and renormalised; the token is the
    first index whose cumulative probability exceeds ``u · Σp`` for the row's uniform
    ``u ∈ [0, 1)`` (``uniform`` ``[n]``): inverse-CDF sampling, exactly ``P(k) = p_k``.
    """
    if temperature == 0:
        return logits.argmax(-1), None
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    probs = logp.exp()
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        before = probs.cumsum(-1) - probs  # mass of the more probable tokens
        probs = probs * (before < top_p)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    # u · total can round up to total; stay strictly below it so a zero-width (zero
    # probability) interval can never be chosen
    target = torch.minimum(uniform.unsqueeze(1).to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    choice = torch.searchsorted(cdf, target, right=True).squeeze(1)
    chosen_p = probs.gather(1, choice.unsqueeze(1)).squeeze(1)
    if order is None:
        return choice, logp.gather(1, choice.unsqueeze(1)).squeeze(1)
    return order.gather(1, choice.unsqueeze(1)).squeeze(1), torch.log(chosen_p / total.squeeze(1))


def decode(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, index: Tensor, max_new_tokens: int,
           temperature: float, top_p: float, eos_ids: Sequence[int], pad_id: int, *,
           compact_frac: float = 0.25, on_finished: RowsFinished | None = None) -> Decoded:
    """Sample (or, at ``temperature == 0``, greedily decode) up to ``max_new_tokens``
    tokens for ``N = len(index)`` rows, row ``i`` continuing prompt ``index[i]`` of the
    ``U`` left-padded ``prompt_ids`` ``[U, P]``. The model must pass :func:`can_decode`;
    it is called as in :func:`verirl.models.shared_prompt_forward` (position ids that skip
    the left padding, an explicit cache). Rows that finish are dropped from the batch
    once they are more than ``compact_frac`` of it (0: as soon as any finishes; 1: never).

    The loop runs under ``torch.inference_mode`` (no autograd bookkeeping per op: 12 % of
    the loop's time on the tiny model); its outputs are copied out of it, so they are
    ordinary tensors the update can use.
    """
    with torch.inference_mode():
        out = _decode(model, prompt_ids, prompt_mask, index, max_new_tokens, temperature, top_p, eos_ids, pad_id,
                      compact_frac, on_finished)
    return Decoded(out.tokens.clone(), None if out.logprobs is None else out.logprobs.clone(), out.finished.clone())


def _decode(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, index: Tensor, max_new_tokens: int,
            temperature: float, top_p: float, eos_ids: Sequence[int], pad_id: int, compact_frac: float,
            on_finished: RowsFinished | None) -> Decoded:
    from verirl.models import _takes_logits_to_keep, cache_kwarg_name, prompt_cache

    device = prompt_ids.device
    N, T = index.shape[0], max_new_tokens
    head = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    out, cache = prompt_cache(model, prompt_ids, prompt_mask, **head)
    logits = out.logits[:, -1][index]
    if index.shape[0] != prompt_ids.shape[0] or not torch.equal(index, torch.arange(N, device=device)):
        cache.reorder_cache(index)
    cache_kwarg = cache_kwarg_name(model)
    eos = torch.tensor(sorted(set(eos_ids)), device=device)

    tokens = torch.full((N, T), pad_id, dtype=torch.long, device=device)
    logprobs = None if temperature == 0 else torch.zeros(N, T, device=device)
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    rows = torch.arange(N, device=device)  # batch row → output row
    alive = torch.ones(N, dtype=torch.bool, device=device)
    P = prompt_mask.shape[1]
    # the attention mask of every step: the prompt's, then one column per new token
    mask = torch.cat([prompt_mask[index], torch.ones(N, T, dtype=prompt_mask.dtype, device=device)], dim=1)
    start = prompt_mask.sum(-1)[index]  # the first new token's position: the prompt's length
    steps = 0
    for t in range(T):
        uniform = None if temperature == 0 else torch.rand(N, device=device)[rows]
        nxt, lp = choose_tokens(logits, temperature, top_p, uniform)
        live = rows[alive]
        tokens[live, t] = nxt[alive]
        if logprobs is not None:
            logprobs[live, t] = lp[alive]
        steps = t + 1
        ended = alive & torch.isin(nxt, eos)
        if ended.any():
            finished[rows[ended]] = True
            alive &= ~ended
            if on_finished is not None:
                _report(on_finished, rows[ended], tokens, steps)
        if t == T - 1 or not alive.any():
            break
        if (~alive).sum() > compact_frac * alive.shape[0]:
            keep = alive.nonzero().squeeze(1)
            cache.reorder_cache(keep)
            rows, alive, nxt, mask, start = rows[keep], alive[keep], nxt[keep], mask[keep], start[keep]
        step = model(input_ids=nxt.unsqueeze(1), attention_mask=mask[:, : P + t + 1],
                     position_ids=(start + t).unsqueeze(1), use_cache=True, **head, **{cache_kwarg: cache})
        logits = step.logits[:, -1]
    if on_finished is not None and alive.any():
        _report(on_finished, rows[alive], tokens, steps)  # cut off at the length limit
    tokens = tokens[:, :steps]
    return Decoded(tokens, None if logprobs is None else logprobs[:, :steps], finished)


def _report(on_finished: RowsFinished, rows: Tensor, tokens: Tensor, length: int) -> None:
    """Hand the rows' completions so far (up to and including their EOS) to the callback."""
    ids = []
    for row in rows.tolist():
        seq = tokens[row, :length].tolist()
        ids.append(seq)
    on_finished(rows.tolist(), ids)
