"""The rollout-engine seam: what any engine (transformers, vLLM) hands the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch


@dataclass
class SamplingConfig:
    """How to sample: ``n`` completions per prompt; ``temperature == 0`` means greedy."""

    n: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class RolloutBatch:
    """``N = len(prompts) * n`` completions; completion ``k*n + j`` is sample j of prompt k.

    - ``prompt_ids``/``prompt_mask`` ``[N, P]``: prompts, left-padded;
    - ``completion_ids``/``completion_mask`` ``[N, T]``: completions, right-padded; the mask
      covers the generated tokens up to and including EOS;
    - ``logprobs`` ``[N, T]``: the engine's log-probs of the sampled tokens under the
      distribution it sampled them from (the behaviour policy π_engine: the logits at the
      sampling temperature, renormalised over the nucleus when ``top_p < 1``), 0 on
      padding; None if the engine has none (greedy);
    - ``texts``: decoded completions (special tokens skipped); ``finished[N]``: ended with EOS.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor | None
    texts: list[str]
    finished: torch.Tensor

    @property
    def num_tokens(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


#: ``on_finished(rows, texts, num_tokens)``: completions that just ended (EOS or the
#: length limit), by their row in the RolloutBatch being built, with their decoded texts
#: (as in ``RolloutBatch.texts``) and token counts; each row is reported exactly once.
Finished = Callable[[list[int], list[str], list[int]], None]


class RolloutEngine(Protocol):
    """Generates completions from the current policy."""

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig,
                 on_finished: Finished | None = None) -> RolloutBatch:
        """Sample ``sampling.n`` completions for each prompt; report each completion to
        ``on_finished`` as soon as the engine knows it (an engine that only knows them at
        the end reports them all then)."""
        ...

    def sleep(self) -> None:
        """Free the accelerator memory the engine holds (KV cache, its own weights) until
        its next call: the trainer calls it before each update. A no-op for engines
        holding none."""
        ...

    def sync_weights(self, state_dict: dict[str, Any] | None = None) -> None:
        """Make the engine sample from the trainer's current weights: ``state_dict``, the
        trainer's full (unsharded) state dict, or the trainer's model when None. A no-op
        when the engine samples from the trainer's model object itself."""
        ...


def _pad_to(x: torch.Tensor, width: int, value: int | float, left: bool) -> torch.Tensor:
    pad = width - x.shape[1]
    if pad == 0:
        return x
    filler = torch.full((x.shape[0], pad), value, dtype=x.dtype, device=x.device)
    return torch.cat([filler, x] if left else [x, filler], dim=1)


def concat_batches(parts: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    P = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.completion_ids.shape[1] for p in parts)
    cat = lambda xs: torch.cat(xs, dim=0)  # noqa: E731
    return RolloutBatch(
        prompt_ids=cat([_pad_to(p.prompt_ids, P, pad_id, True) for p in parts]),
        prompt_mask=cat([_pad_to(p.prompt_mask, P, 0, True) for p in parts]),
        completion_ids=cat([_pad_to(p.completion_ids, T, pad_id, False) for p in parts]),
        completion_mask=cat([_pad_to(p.completion_mask, T, 0, False) for p in parts]),
        logprobs=None if parts[0].logprobs is None else cat([_pad_to(p.logprobs, T, 0.0, False) for p in parts]),
        texts=[t for p in parts for t in p.texts],
        finished=cat([p.finished for p in parts]),
    )


def select_rows(batch: RolloutBatch, rows: Sequence[int]) -> RolloutBatch:
    """The completions at ``rows`` (in that order)."""
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=batch.prompt_ids.device)
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[idx],
        prompt_mask=batch.prompt_mask[idx],
        completion_ids=batch.completion_ids[idx],
        completion_mask=batch.completion_mask[idx],
        logprobs=None if batch.logprobs is None else batch.logprobs[idx],
        texts=[batch.texts[i] for i in rows],
        finished=batch.finished[idx],
    )


def trim_padding(batch: RolloutBatch) -> RolloutBatch:
    """Drop the prompt columns that are padding in every row (left) and the completion
    columns past the longest completion (right), so a micro-batch of short sequences
    costs what its sequences need. Completion column t keeps its index t."""
    P = batch.prompt_mask.shape[1]
    first = int((batch.prompt_mask.sum(0) > 0).int().argmax()) if P else 0
    T = int(batch.completion_mask.sum(-1).max()) if batch.completion_mask.numel() else 0
    T = max(T, 1)
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[:, first:],
        prompt_mask=batch.prompt_mask[:, first:],
        completion_ids=batch.completion_ids[:, :T],
        completion_mask=batch.completion_mask[:, :T],
        logprobs=None if batch.logprobs is None else batch.logprobs[:, :T],
        texts=batch.texts,
        finished=batch.finished,
    )
