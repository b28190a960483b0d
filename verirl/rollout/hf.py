"""The embedded default engine: transformers ``generate`` on the trainer's own model."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from verirl.rollout.base import RolloutBatch, SamplingConfig, concat_batches


class HFEngine:
    """Batched, left-padded sampling with the KV cache, on the policy model itself
    (so no weight sync is needed). ``batch_size`` bounds completions per ``generate``
    call (0: all at once)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = _eos_ids(model, tokenizer)

    def sync_weights(self) -> None:
        return None

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> RolloutBatch:
        expanded = [p for p in prompts for _ in range(sampling.n)]
        step = self.batch_size or len(expanded)
        parts = [self._generate(expanded[i : i + step], sampling) for i in range(0, len(expanded), step)]
        return parts[0] if len(parts) == 1 else concat_batches(parts, self.tokenizer.pad_token_id)

    def _generate(self, prompts: list[str], sampling: SamplingConfig) -> RolloutBatch:
        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        input_ids = enc["input_ids"].to(device)
        attention_mask = enc["attention_mask"].to(device)
        greedy = sampling.temperature == 0
        was_training = self.model.training
        self.model.eval()
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
