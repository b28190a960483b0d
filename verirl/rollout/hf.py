"""The embedded default engine: transformers ``generate`` on the trainer's own model."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from verirl.rollout.base import RolloutBatch, SamplingConfig, concat_batches


class HFEngine:
    """Batched, left-padded sampling with the KV cache, on the policy model itself
    (so no weight sync is needed). ``batch_size`` bounds completions per ``generate``
    call, in whole groups of ``n`` (0: all at once).

    ``share_prompts``: each distinct prompt is prefilled once and its KV cache copied to
    its ``n`` samples before ``generate`` continues from it, instead of ``generate``
    prefilling every copy (see :func:`prefill_shared`)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 0, share_prompts: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.share_prompts = share_prompts
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = _eos_ids(model, tokenizer)

    def sync_weights(self) -> None:
        return None

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> RolloutBatch:
        per_call = max(1, self.batch_size // sampling.n) if self.batch_size else len(prompts)
        parts = [self._generate(list(prompts[i : i + per_call]), sampling) for i in range(0, len(prompts), per_call)]
        return parts[0] if len(parts) == 1 else concat_batches(parts, self.tokenizer.pad_token_id)

    def _generate(self, prompts: list[str], sampling: SamplingConfig) -> RolloutBatch:
        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        index = torch.arange(len(prompts), device=device).repeat_interleave(sampling.n)
        prompt_ids = enc["input_ids"].to(device)
        prompt_mask = enc["attention_mask"].to(device)
        input_ids, attention_mask = prompt_ids[index], prompt_mask[index]
        greedy = sampling.temperature == 0
        was_training = self.model.training
        self.model.eval()
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
            output_logits=not greedy,
            **extra,
        )
        self.model.train(was_training)
        completion = out.sequences[:, input_ids.shape[1] :]
        mask, finished = completion_mask(completion, self.eos_ids)
        completion = completion.masked_fill(mask == 0, tok.pad_token_id)
        logprobs = None
        if not greedy:
            # behaviour log-probs of the sampled tokens: log softmax(logits / T)
            logits = torch.stack(out.logits, dim=1).float() / sampling.temperature
            logprobs = torch.log_softmax(logits, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1) * mask
        texts = tok.batch_decode(completion, skip_special_tokens=True)
        return RolloutBatch(input_ids, attention_mask, completion, mask, logprobs, texts, finished)


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
