"""The HF engine's default decoder: a lean sampling loop over a transformers causal LM's
own forward, for the small batches and models of CPU runs, where ``generate``'s
per-token bookkeeping costs as much as the model.

What it does differently from ``generate`` (the same model calls):

- each distinct prompt is prefilled once and its KV cache copied to its ``n`` rows;
- the KV cache is written into buffers (growing by doubling, up to prompt + the length
  limit) and attention reads views of their filled prefix, where transformers' dynamic
  cache concatenates (copies) every layer's whole cache at every token
  (:func:`buffer_cache`; a cache of another kind is used as it is);
- rows that finished are dropped from the batch (their KV cache rows with them) once
  they are ``compact_frac`` of it, so the model stops computing tokens nobody keeps;
  live rows from the end of the batch take their places, so only those rows move
  (:func:`fill_from_the_end`);
- the step's attention mask is handed to a model that takes it ready-made as a view of
  one ``[N, 1, 1, P + T]`` boolean tensor (:func:`takes_ready_mask`), instead of the
  model building it from the 2-D mask at every token;
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
           compact_frac: float = 0.25, on_finished: RowsFinished | None = None, preallocate: bool = True,
           ready_masks: bool = True) -> Decoded:
    """Sample (or, at ``temperature == 0``, greedily decode) up to ``max_new_tokens``
    tokens for ``N = len(index)`` rows, row ``i`` continuing prompt ``index[i]`` of the
    ``U`` left-padded ``prompt_ids`` ``[U, P]``. The model must pass :func:`can_decode`;
    it is called as in :func:`verirl.models.shared_prompt_forward` (position ids that skip
    the left padding, an explicit cache). Rows that finish are dropped from the batch
    once they are more than ``compact_frac`` of it (0: as soon as any finishes; 1: never).
    ``preallocate``: write the KV cache into buffers that grow by doubling
    (:func:`buffer_cache`); off, transformers' cache grows by concatenation at every
    token. The tokens and log-probs are the same either way.
    ``ready_masks``: hand a model that takes one (:func:`takes_ready_mask`) each step's
    4-D attention mask ready-made; the samples are the same either way.

    The loop runs under ``torch.inference_mode`` (no autograd bookkeeping per op: 12 % of
    the loop's time on the tiny model); its outputs are copied out of it, so they are
    ordinary tensors the update can use.
    """
    with torch.inference_mode():
        out = _decode(model, prompt_ids, prompt_mask, index, max_new_tokens, temperature, top_p, eos_ids, pad_id,
                      compact_frac, on_finished, preallocate, ready_masks)
    return Decoded(out.tokens.clone(), None if out.logprobs is None else out.logprobs.clone(), out.finished.clone())


def _decode(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, index: Tensor, max_new_tokens: int,
            temperature: float, top_p: float, eos_ids: Sequence[int], pad_id: int, compact_frac: float,
            on_finished: RowsFinished | None, preallocate: bool, ready_masks: bool) -> Decoded:
    from verirl.models import _takes_logits_to_keep, cache_kwarg_name, prompt_cache

    device = prompt_ids.device
    N, T = index.shape[0], max_new_tokens
    head = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    out, cache = prompt_cache(model, prompt_ids, prompt_mask, **head)
    logits = out.logits[:, -1][index]
    if not (preallocate and buffer_cache(cache, index, prompt_ids.shape[1] + T)) and (
            index.shape[0] != prompt_ids.shape[0] or not torch.equal(index, torch.arange(N, device=device))):
        cache.reorder_cache(index)
    cache_kwarg = cache_kwarg_name(model)
    eos = torch.tensor(sorted(set(eos_ids)), device=device)

    tokens = torch.full((N, T), pad_id, dtype=torch.long, device=device)
    logprobs = None if temperature == 0 else torch.zeros(N, T, device=device)
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    rows = torch.arange(N, device=device)  # batch row → output row
    alive = torch.ones(N, dtype=torch.bool, device=device)
    P = prompt_mask.shape[1]
    # the attention mask of every step: the prompt's, then one column per new token; as
    # the [N, 1, 1, L] boolean mask attention reads where the model takes one (a view
    # per step, instead of the model building it from the 2-D mask at every token)
    mask = torch.cat([prompt_mask[index], torch.ones(N, T, dtype=prompt_mask.dtype, device=device)], dim=1)
    if ready_masks and takes_ready_mask(model):
        mask = mask.bool()[:, None, None, :]
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
            keep = fill_from_the_end(alive)
            cache.reorder_cache(keep)
            rows, alive, nxt, mask, start = rows[keep], alive[keep], nxt[keep], mask[keep], start[keep]
        step = model(input_ids=nxt.unsqueeze(1), attention_mask=mask[..., : P + t + 1],
                     position_ids=(start + t).unsqueeze(1), use_cache=True, **head, **{cache_kwarg: cache})
        logits = step.logits[:, -1]
    if on_finished is not None and alive.any():
        _report(on_finished, rows[alive], tokens, steps)  # cut off at the length limit
    tokens = tokens[:, :steps]
    return Decoded(tokens, None if logprobs is None else logprobs[:, :steps], finished)


def takes_ready_mask(model: Any) -> bool:
    """Whether ``model`` can be given its decode steps' attention mask ready-made, as the
    ``[N, 1, 1, L]`` boolean tensor (True: attend) its attention reads. Only where that
    is known to be what the model would build: a model class of transformers itself (a
    remote-code model may build masks with older helpers that refuse one) on a
    transformers with ``masking_utils`` (which passes a 4-D mask through untouched),
    SDPA attention (which takes a boolean mask; eager attention adds its mask), and a
    decoder whose every layer is plain full attention: no sliding window, no chunked
    attention, no ALiBi (built from the 2-D mask), read from the text config of a
    composite (vision-language) model."""
    try:
        import transformers.masking_utils  # noqa: F401
    except ImportError:
        return False
    if not type(model).__module__.startswith("transformers."):
        return False
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "_attn_implementation", "sdpa") != "sdpa":
        return False
    if getattr(text, "sliding_window", None) is not None and getattr(text, "use_sliding_window", True):
        return False
    if getattr(text, "attention_chunk_size", None) or getattr(text, "alibi", False):
        return False
    if getattr(text, "position_embedding_type", None) == "alibi":
        return False
    layer_types = getattr(text, "layer_types", None)
    return layer_types is None or all(kind == "full_attention" for kind in layer_types)


def fill_from_the_end(alive: Tensor) -> Tensor:
    """The rows to keep ``[k]`` (``k`` = live rows), in the order that moves fewest: a
    live row among the first ``k`` stays where it is, and the live rows beyond ``k``
    fill the dead rows' places among the first ``k``, in order. A cache that keeps its
    rows in buffers moves only those rows (:class:`BufferedLayerMixin`); any cache can
    ``index_select`` them."""
    k = int(alive.sum())
    keep = torch.arange(k, device=alive.device)
    keep[~alive[:k]] = alive[k:].nonzero().squeeze(1) + k
    return keep


#: the buffers' first capacity beyond the prompt, in tokens; they double from there as
#: the decode goes on, up to the length limit (so a long limit with short completions
#: does not hold memory for the limit from the first token)
FIRST_COLUMNS = 64


def buffer_cache(cache: Any, rows: Tensor, max_length: int) -> bool:
    """Move a freshly prefilled transformers ``DynamicCache`` into buffers: each layer's
    keys and values ``[U, H, P, D]`` are copied, rows ``rows`` (``[N]``, indices into
    the ``U`` prompts) in that order, into buffers ``[N, H, C, D]`` with
    ``C = min(P + FIRST_COLUMNS, max_length)`` (they double as needed, never past
    ``max_length``), and the layer becomes a ``BufferedLayer``
    (:class:`BufferedLayerMixin`). Returns whether it did; ``False`` (the cache
    untouched) for a transformers without per-layer cache objects (before 4.54), an
    offloading cache, or a cache with any layer that is not a plain, filled
    ``DynamicLayer`` (sliding window, linear attention, quantized, ...)."""
    layer_class = _buffered_layer_class()
    if layer_class is None or not getattr(cache, "layers", None) or getattr(cache, "offloading", False):
        return False
    plain = layer_class.__bases__[1]  # the installed transformers' DynamicLayer
    # (4.54-4.56's layers have no is_initialized: a filled layer is one with keys)
    if any(type(layer) is not plain or getattr(layer, "keys", None) is None or layer.keys.numel() == 0
           for layer in cache.layers):
        return False
    cache.layers = [layer_class(layer.keys, layer.values, rows, max_length) for layer in cache.layers]
    return True


_BUFFERED: list[Any] = []


def _buffered_layer_class() -> Any:
    """``BufferedLayer`` (:class:`BufferedLayerMixin` over the installed transformers'
    ``DynamicLayer``), built on first use; ``None`` where transformers has no
    ``DynamicLayer``."""
    if not _BUFFERED:
        try:
            from transformers.cache_utils import DynamicLayer
        except ImportError:
            _BUFFERED.append(None)
        else:
            _BUFFERED.append(type("BufferedLayer", (BufferedLayerMixin, DynamicLayer), {}))
    return _BUFFERED[0]


class BufferedLayerMixin:
    """What makes ``BufferedLayer`` out of transformers' ``DynamicLayer``: ``keys``
    and ``values`` are views ``[:, :, :length]`` of buffers ``[rows, H, capacity, D]``.

    - ``update`` writes the new tokens' states into the next columns (no copy of the
      cache), first doubling the capacity (up to ``max_length``) when it is full;
    - ``reorder_cache(rows)`` with no more rows than the buffers hold (rows leaving the
      batch) copies only the rows that change place and keeps the first ``k`` rows;
      once that leaves half the buffers' rows or fewer, the filled columns move to
      smaller buffers so the memory of the rows that left is freed. More rows than the
      buffers hold: a plain row selection.

    It lives inside one :func:`decode` call; the ``DynamicLayer`` methods the loop never
    calls (crop, batch selection, reset, offloading) raise instead of leaving the
    buffers and the views out of step."""

    def __init__(self, keys: Tensor, values: Tensor, rows: Tensor, max_length: int) -> None:
        self.is_initialized = True
        self.device, self.length, self.max_length = keys.device, keys.shape[-2], max_length
        capacity = min(self.length + FIRST_COLUMNS, max_length)
        self.key_buffer = _buffer(keys.index_select(0, rows), capacity)
        self.value_buffer = _buffer(values.index_select(0, rows), capacity)
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            if end > self.max_length:
                raise RuntimeError(f"the decode's KV buffers end at {self.max_length} positions; writing up to {end}")
            capacity = min(max(end, 2 * self.key_buffer.shape[-2]), self.max_length)
            self.key_buffer, self.value_buffer = _buffer(self.keys, capacity), _buffer(self.values, capacity)
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def reorder_cache(self, rows: Tensor) -> None:
        k = rows.shape[0]
        if k > self.key_buffer.shape[0]:
            self.key_buffer = self.key_buffer.index_select(0, rows)
            self.value_buffer = self.value_buffer.index_select(0, rows)
        else:
            moved = rows != torch.arange(k, device=rows.device)
            destinations, sources = moved.nonzero().squeeze(1), rows[moved]
            for buffer in (self.key_buffer, self.value_buffer):
                # the right side is gathered (copied) before the assignment writes
                buffer[destinations, :, : self.length] = buffer[sources, :, : self.length]
            if 2 * k <= self.key_buffer.shape[0]:
                capacity = self.key_buffer.shape[-2]
                self.key_buffer, self.value_buffer = (_buffer(self.keys[:k], capacity),
                                                      _buffer(self.values[:k], capacity))
            else:
                self.key_buffer, self.value_buffer = self.key_buffer[:k], self.value_buffer[:k]
        self._views()

    def _unsupported(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("a decode loop's buffered KV cache layer supports update and reorder_cache only")

    crop = batch_select_indices = batch_repeat_interleave = reset = offload = prefetch = _unsupported


def _buffer(states: Tensor, capacity: int) -> Tensor:
    """``states`` ``[N, H, L, D]`` in the first ``L`` columns of a new, otherwise
    uninitialised ``[N, H, capacity, D]``. (On a CPU, fresh memory page-faults on first
    touch unless the allocator keeps freed memory:
    :func:`verirl.cpu_memory.keep_freed_memory`, which the trainer sets.)"""
    buffer = states.new_empty(states.shape[0], states.shape[1], capacity, states.shape[3])
    buffer[:, :, : states.shape[2]] = states
    return buffer


def _report(on_finished: RowsFinished, rows: Tensor, tokens: Tensor, length: int) -> None:
    """Hand the rows' completions so far (up to and including their EOS) to the callback."""
    on_finished(rows.tolist(), tokens[rows, :length].tolist())
