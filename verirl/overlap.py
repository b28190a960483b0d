"""Scoring completions while the rest of the batch is still generating.

The engine reports completions as they finish (``on_finished``,
:data:`verirl.rollout.base.Finished`); :class:`OverlappedScoring` hands them to the
reward function in one background thread, whatever has accumulated (at least
``min_batch`` rows) each time the thread is free, so the verifiers (which do their
heavy work in worker processes, :class:`verirl.sandbox.WorkerPool`) run during
decoding instead of after it. The scores are those of one call on the whole batch, in
row order: each sample's score does not depend on which others share its call.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from verirl.rewards import RewardBatch, RewardFunction
from verirl.verifier import Sample

#: ``make_sample(row, text, num_tokens)``: the verifiers' view of one finished completion
MakeSample = Callable[[int, str, int], Sample]


class OverlappedScoring:
    """One rollout's scoring, started as completions finish.

    Pass :meth:`submit` as the engine's ``on_finished``; after ``generate`` returns,
    :meth:`result` waits for what is still being scored and returns the
    :class:`RewardBatch` of all rows and the seconds of scoring that ran while the
    engine was still generating. Not reusable across rollouts."""

    def __init__(self, reward_fn: RewardFunction, make_sample: MakeSample, min_batch: int = 1):
        self.reward_fn = reward_fn
        self.make_sample = make_sample
        self.min_batch = min_batch  # fewer finished rows wait for more (each call has a fixed cost)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verirl-scoring")
        self._pending: list[tuple[int, Sample]] = []
        self._running: Future | None = None
        self._chunks: list[tuple[list[int], Future]] = []

    def submit(self, rows: list[int], texts: list[str], num_tokens: list[int]) -> None:
        self._pending.extend((row, self.make_sample(row, text, n)) for row, text, n in zip(rows, texts, num_tokens))
        if len(self._pending) >= self.min_batch and (self._running is None or self._running.done()):
            self._dispatch()

    def _dispatch(self) -> None:
        if not self._pending:
            return
        rows = [row for row, _ in self._pending]
        samples = [sample for _, sample in self._pending]
        self._pending = []
        self._running = self._pool.submit(self._score, samples)
        self._chunks.append((rows, self._running))

    def _score(self, samples: list[Sample]) -> tuple[RewardBatch, float]:
        """The chunk's scores and the time its scoring started."""
        start = time.perf_counter()
        return self.reward_fn(samples), start

    def result(self, num_rows: int) -> tuple[RewardBatch, float]:
        """``(scores of rows 0..num_rows-1, overlapped seconds)``. Every row must have
        been submitted once."""
        generation_end = time.perf_counter()
        self._dispatch()
        try:
            done = [(rows, future.result()) for rows, future in self._chunks]
        finally:
            self._pool.shutdown(wait=True)
        # a chunk's scoring ran over [start, start + seconds]; count what lies before generation ended
        overlap = sum(min(batch.seconds, max(0.0, generation_end - start)) for _, (batch, start) in done)
        return merge_in_row_order([(rows, batch) for rows, (batch, _) in done], num_rows), overlap


def merge_in_row_order(parts: list[tuple[list[int], RewardBatch]], num_rows: int) -> RewardBatch:
    """One :class:`RewardBatch` over rows ``0..num_rows-1`` from batches of scattered rows
    (each row in exactly one part); failures add up, seconds are the scoring's total."""
    rewards: list = [None] * num_rows
    scores: list = [None] * num_rows
    steps: list = [None] * num_rows
    failures: dict[str, dict[str, int]] = {}
    seconds = 0.0
    for rows, batch in parts:
        for k, row in enumerate(rows):
            if rewards[row] is not None:
                raise ValueError(f"row {row} was scored twice")
            rewards[row], scores[row], steps[row] = batch.rewards[k], batch.scores[k], batch.steps[k]
        for name, counts in batch.failures.items():
            for kind, n in counts.items():
                failures.setdefault(name, {}).setdefault(kind, 0)
                failures[name][kind] += n
        seconds += batch.seconds
    missing = [row for row in range(num_rows) if rewards[row] is None]
    if missing:
        raise ValueError(f"rows {missing[:5]}{'…' if len(missing) > 5 else ''} were never submitted for scoring")
    return RewardBatch(rewards, scores, steps, failures, seconds)
