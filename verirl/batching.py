"""Which completions go into which optimizer step and which forward/backward.

An update makes ``epochs`` passes over the rollout's N rows; each pass splits the rows
(shuffled when there is more than one minibatch) into minibatches, one optimizer step
each; a minibatch is run in micro-batches whose gradients accumulate: of
``micro_batch_size`` rows, or packed by a token budget (:func:`pack_by_tokens`). The
loss denominators are always those of the whole minibatch
(:class:`verirl.losses.LossScale`), so how it is split never changes the gradient.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


def chunks(items: Sequence[int], size: int) -> list[list[int]]:
    """``items`` in consecutive pieces of ``size`` (the last may be shorter)."""
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


def minibatches(n: int, minibatch: int, epochs: int) -> Iterator[list[int]]:
    """The row indices of each optimizer step: ``epochs`` passes over ``range(n)``, each
    shuffled with torch's RNG (seeded with the run) unless it is a single minibatch."""
    for _ in range(epochs):
        order = torch.randperm(n).tolist() if minibatch < n else list(range(n))
        yield from chunks(order, minibatch)


def rows_to_run(rows: list[int], carries_signal: Sequence[bool], skip_zero: bool) -> list[int]:
    """The rows of a minibatch that need a forward/backward: all of them, or with
    ``skip_zero`` only those whose advantages are not all zero (at least one row, so the
    step has a graph)."""
    if not skip_zero:
        return rows
    return [i for i in rows if carries_signal[i]] or rows[:1]


def pack_by_tokens(rows: Sequence[int], prompt_lens: Sequence[int], completion_lens: Sequence[int],
                   budget: int) -> list[list[int]]:
    """``rows`` in micro-batches whose padded size stays within ``budget`` tokens.

    A micro-batch of ``n`` rows is padded to its longest prompt ``P`` and its longest
    completion ``T`` (:func:`verirl.rollout.base.trim_padding`), so it costs
    ``n · (P + T)`` tokens of compute and activation memory. Rows are taken longest
    completion first, so rows of like length share a micro-batch and little of the
    budget goes to padding; a new micro-batch starts when the next row would take the
    cost past ``budget`` (a row longer than the budget runs alone).
    """
    order = sorted(rows, key=lambda i: (-completion_lens[i], -prompt_lens[i], i))
    out: list[list[int]] = []
    current: list[int] = []
    P = T = 0
    for i in order:
        p, t = max(P, prompt_lens[i]), max(T, completion_lens[i])
        if current and (len(current) + 1) * (p + t) > budget:
            out.append(current)
            current, p, t = [], prompt_lens[i], completion_lens[i]
        current.append(i)
        P, T = p, t
    if current:
        out.append(current)
    return out


def micro_batch_rows(rows: Sequence[int], micro: int, budget: int = 0, prompt_lens: Sequence[int] = (),
                     completion_lens: Sequence[int] = ()) -> list[list[int]]:
    """The micro-batches of ``rows``: packed by the token ``budget`` when it is set
    (:func:`pack_by_tokens`), and in any case at most ``micro`` rows each."""
    if not budget:
        return chunks(rows, micro)
    return [piece for packed in pack_by_tokens(rows, prompt_lens, completion_lens, budget)
            for piece in chunks(packed, micro)]
