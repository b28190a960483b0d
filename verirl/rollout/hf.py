"""The embedded default engine: the trainer's own transformers model, sampled by the lean
loop of :mod:`verirl.rollout.decode` (default) or by transformers ``generate`` (the
reference it is tested against)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from verirl.rollout.base import Finished, RolloutBatch, SamplingConfig, concat_batches
from verirl.rollout.decode import can_decode, decode

log = logging.getLogger("verirl.rollout.hf")

DECODERS = ("loop", "generate")


class HFEngine:
    """Batched, left-padded sampling with the KV cache, on the policy model itself
    (so no weight sync is needed). ``batch_size`` bounds completions per call, in whole
    groups of ``n`` (0: all at once).

    ``decoder``: ``"loop"`` (:func:`verirl.rollout.decode.decode`: rows that finish leave
    the batch, inverse-CDF sampling, finished completions reported as they end) or
    ``"generate"`` (transformers ``generate``). Greedy decoding gives the same tokens in
    both; sampled completions follow the same distribution but not the same random
    draws. A model the loop cannot run (:func:`~verirl.rollout.decode.can_decode`) is
    sampled by ``generate``.

    ``share_prompts``: each distinct prompt is prefilled once and its KV cache copied to
    its ``n`` samples (see :func:`prefill_shared` for ``generate``).

    ``compact_frac``: the loop drops finished rows from the batch once they are more than
    this fraction of it (0.25 measured fastest on the tiny model; see
    ``benchmarks/rollout_throughput.py``).

    ``preallocate``, ``ready_masks``: the loop's KV cache in buffers that grow by
    doubling, each step's attention mask handed over ready-made
    (:func:`~verirl.rollout.decode.decode`). Both on by default; off only to measure
    what each saves (the samples are the same)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 0, share_prompts: bool = True,
                 decoder: str = "loop", compact_frac: float = 0.25, preallocate: bool = True,
                 ready_masks: bool = True):
        if decoder not in DECODERS:
            raise ValueError(f"unknown HF decoder {decoder!r}; choose one of {list(DECODERS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.share_prompts = share_prompts
        self.compact_frac = compact_frac
        self.decoder = decoder
        if decoder == "loop" and (why := can_decode(model)) is not None:
            log.info("the HF engine samples %s with generate (its loop needs a decoder-only LM with a KV cache)", why)
            self.decoder = "generate"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = _eos_ids(model, tokenizer)
        self.preallocate = preallocate
        self.ready_masks = ready_masks

    def sync_weights(self, state_dict: Any = None) -> None:
        """Nothing to do: the engine samples from the trainer's own model object."""
        return None

    def sleep(self) -> None:
        """Nothing to free: the engine holds no memory of its own between calls."""
        return None

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, on_finished: Finished | None = None
                 ) -> RolloutBatch:
        per_call = max(1, self.batch_size // sampling.n) if self.batch_size else len(prompts)
        parts = []
        for i in range(0, len(prompts), per_call):
            offset = i * sampling.n
            report = None if on_finished is None else _shifted(on_finished, offset)
            parts.append(self._generate(list(prompts[i : i + per_call]), sampling, report))
        return parts[0] if len(parts) == 1 else concat_batches(parts, self.tokenizer.pad_token_id)

    def _generate(self, prompts: list[str], sampling: SamplingConfig, on_finished: Finished | None) -> RolloutBatch:
        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        index = torch.arange(len(prompts), device=device).repeat_interleave(sampling.n)
        prompt_ids = enc["input_ids"].to(device)
        prompt_mask = enc["attention_mask"].to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            if self.decoder == "loop":
                return self._loop(prompt_ids, prompt_mask, index, sampling, on_finished)
            return self._hf_generate(prompt_ids, prompt_mask, index, sampling, on_finished)
        finally:
            self.model.train(was_training)

    def _loop(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, index: torch.Tensor,
              sampling: SamplingConfig, on_finished: Finished | None) -> RolloutBatch:
        tok = self.tokenizer
        texts: dict[int, str] = {}

        def finished_rows(rows: list[int], ids: list[list[int]]) -> None:
            decoded = tok.batch_decode(ids, skip_special_tokens=True)
            texts.update(zip(rows, decoded))
            if on_finished is not None:
                on_finished(rows, decoded, [len(x) for x in ids])

        if not self.share_prompts:  # prefill every row's copy of its prompt
            prompt_ids, prompt_mask, index = prompt_ids[index], prompt_mask[index], torch.arange(
                len(index), device=index.device)
        out = decode(self.model, prompt_ids, prompt_mask, index, sampling.max_new_tokens, sampling.temperature,
                     sampling.top_p, self.eos_ids, tok.pad_token_id, compact_frac=self.compact_frac,
                     on_finished=finished_rows, preallocate=self.preallocate, ready_masks=self.ready_masks)
        mask, finished = completion_mask(out.tokens, self.eos_ids)
        logprobs = None if out.logprobs is None else out.logprobs * mask
        return RolloutBatch(prompt_ids[index], prompt_mask[index], out.tokens, mask, logprobs,
                            [texts[i] for i in range(len(index))], finished)

    def _hf_generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, index: torch.Tensor,
                     sampling: SamplingConfig, on_finished: Finished | None) -> RolloutBatch:
        tok = self.tokenizer
        input_ids, attention_mask = prompt_ids[index], prompt_mask[index]
        greedy = sampling.temperature == 0
        extra = {}
        if self.share_prompts and sampling.n > 1:
            extra = prefill_shared(self.model, prompt_ids, prompt_mask, index)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=0 if not greedy else None,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=tok.pad_token_id,
            use_cache=True,
            return_dict_in_generate=True,
            output_scores=not greedy,
            **extra,
        )
        completion = out.sequences[:, input_ids.shape[1] :]
        mask, finished = completion_mask(completion, self.eos_ids)
        completion = completion.masked_fill(mask == 0, tok.pad_token_id)
        logprobs = None
        if not greedy:
            # behaviour log-probs of the sampled tokens under the distribution they were
            # drawn from: the processed scores (logits / T, nucleus-filtered when top_p < 1)
            scores = torch.stack(out.scores, dim=1).float()
            logprobs = torch.log_softmax(scores, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1) * mask
        texts = tok.batch_decode(completion, skip_special_tokens=True)
        if on_finished is not None:
            on_finished(list(range(len(texts))), texts, mask.sum(-1).tolist())
        return RolloutBatch(input_ids, attention_mask, completion, mask, logprobs, texts, finished)


def _shifted(on_finished: Finished, offset: int) -> Finished:
    """The callback with row indices shifted by ``offset`` (the rows of earlier calls)."""
    return lambda rows, texts, lengths: on_finished([r + offset for r in rows], texts, lengths)


def prefill_shared(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   index: torch.Tensor) -> dict[str, Any]:
    """``generate`` keyword arguments that hand it a KV cache of every row's prompt but
    its last token, computed once per distinct prompt: ``prompt_ids`` ``[U, P]``
    (left-padded), row ``i`` of the batch being prompt ``index[i]``.

    ``generate`` then runs only the last prompt column and the new tokens (a prompt
    cache must leave it at least one token). Returns ``{}`` (no sharing) when the model
    has no transformers cache, names its own cache implementation, or some prompt is a
    single token (its row would be all padding in the prefill)."""
    from verirl.models import _takes_logits_to_keep, cache_kwarg_name, prompt_cache

    cache_kwarg = cache_kwarg_name(model)
    # a model that asks for its own cache kind (static, hybrid, ...) gets it: generate
    # refuses a cache object next to a cache_implementation
    wants_own_cache = getattr(getattr(model, "generation_config", None), "cache_implementation", None) is not None
    if (prompt_ids.shape[1] < 2 or cache_kwarg is None or wants_own_cache or not _takes_logits_to_keep(model)
            or int(prompt_mask[:, :-1].sum(-1).min()) == 0):
        return {}
    _, cache = prompt_cache(model, prompt_ids[:, :-1], prompt_mask[:, :-1], logits_to_keep=1)
    cache.reorder_cache(index)
    return {cache_kwarg: cache}


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    if not ids:
        raise ValueError("the tokenizer and model define no eos_token_id; generation could never stop")
    return sorted(ids)


def completion_mask(completion: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ``[N, T]`` of the tokens up to and including the first EOS, and ``finished[N]``."""
    is_eos = torch.isin(completion, torch.tensor(list(eos_ids), device=completion.device))
    finished = is_eos.any(-1)
    # index of the first EOS, or T when there is none
    first = torch.where(finished, is_eos.int().argmax(-1), torch.full_like(finished, completion.shape[1], dtype=torch.long))
    positions = torch.arange(completion.shape[1], device=completion.device).unsqueeze(0)
    mask = (positions <= first.unsqueeze(1)).long()
    return mask, finished
