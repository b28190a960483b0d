"""Which completions go into which optimizer step and which forward/backward.

An update makes ``epochs`` passes over the rollout's N rows; each pass splits the rows
(shuffled when there is more than one minibatch) into minibatches, one optimizer step
each; a minibatch is run in micro-batches whose gradients accumulate. The loss
denominators are always those of the whole minibatch (:class:`verirl.losses.LossScale`),
so how it is split never changes the gradient.
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
