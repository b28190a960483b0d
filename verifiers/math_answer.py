"""Built-in verifier ``math_answer``: is the completion's final answer the gold answer?

The final answer is extracted from the completion (the last ``\\boxed{}``, GSM8K ``####``,
"the answer is ...", an ``A: ...`` line, then the policy's fallback), the gold answer
from ``sample.answer`` (a bare answer or a full solution), and the two are compared under
the grading policy (``verirl/grading/README.md``): the ``preset`` (``train``, strict, the
default; ``eval``, lenient) with any of its switches overridden by the params of the same
name. The same text twice and pairs of plain numbers are decided in this process
(:func:`verirl.grading.judge.quick_verdict`: bounded string and integer work); every
other pair is compared by the safe parser and
sympy in a pool of sandboxed worker processes, each pair under a hard time bound,
started on the first pair that needs one. Verdicts are cached.

Score per sample: ``correct`` if equivalent, ``incorrect`` if not or if no answer is
found, ``None`` when the sample has no gold answer, ``Failure("timeout")`` when the
comparison ran past ``timeout`` seconds, ``Failure("error")`` when the gold answer
cannot be parsed or a worker failed.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Sequence

from verirl import ConfigError, Failure, Sample, hookimpl, verifier
from verirl.grading.extract import extract_answer, extract_gold
from verirl.grading.judge import ENGINE_MODULES, judge_item, quick_verdict
from verirl.grading.policy import MAX_CHARS, Policy, make_policy
from verirl.sandbox import WorkerPool

log = logging.getLogger(__name__)

Score = float | None | Failure
Key = tuple[str, str, Policy]


@verifier("math_answer", kind="outcome")
class MathAnswer:
    """Final-answer correctness under a written grading policy (sandboxed sympy, hard time bound).

    Params:
        preset: the grading policy: "train" (strict, the default) or "eval" (lenient,
            for comparison with published evaluations).
        numeric / min_digits / rel_tol / units / percent / unevaluated / fallback: override the
            preset's switch of that name (None keeps the preset's; see
            verirl/grading/policy.py).
        timeout: hard bound in seconds on comparing one sample (the worker is killed).
        workers: worker processes; 0 = one per available core.
        correct / incorrect: the scores given.
        cache_size: verdicts remembered (LRU) by (answer, gold answer, policy); 0 = none.
        extract_gold: find the gold answer in ``sample.answer`` (``\\boxed{}``/``####``);
            False takes ``sample.answer`` as the final answer itself.
        memory_mb: address space each worker may add (MiB) before MemoryError.
    """

    def __init__(
        self,
        *,
        preset: str = "train",
        numeric: str | None = None,
        min_digits: int | None = None,
        rel_tol: float | None = None,
        units: str | None = None,
        percent: str | None = None,
        unevaluated: str | None = None,
        fallback: str | None = None,
        timeout: float = 2.0,
        workers: int = 0,
        correct: float = 1.0,
        incorrect: float = 0.0,
        cache_size: int = 100_000,
        extract_gold: bool = True,
        memory_mb: int = 3072,
    ) -> None:
        if timeout <= 0:
            raise ConfigError(f"math_answer param 'timeout' must be > 0 seconds, got {timeout!r}")
        if workers < 0:
            raise ConfigError(f"math_answer param 'workers' must be >= 0 (0 = all cores), got {workers!r}")
        if cache_size < 0:
            raise ConfigError(f"math_answer param 'cache_size' must be >= 0, got {cache_size!r}")
        if memory_mb < 64:
            raise ConfigError(f"math_answer param 'memory_mb' must be >= 64, got {memory_mb!r}")
        try:
            self.policy = make_policy(preset, numeric=numeric, min_digits=min_digits, rel_tol=rel_tol,
                                      units=units, percent=percent, unevaluated=unevaluated,
                                      fallback=fallback)
        except ConfigError as exc:
            raise ConfigError(f"math_answer param: {exc}") from exc
        self.timeout = timeout
        self.workers = workers
        self.correct = correct
        self.incorrect = incorrect
        self.cache_size = cache_size
        self.extract_gold = extract_gold
        self.memory_mb = memory_mb
        self._pool: WorkerPool | None = None
        self._cache: OrderedDict[Key, bool | Failure] = OrderedDict()
        self._lock = threading.Lock()
        # counters for metrics: how each sample was decided
        self.stats = {"samples": 0, "cache_hits": 0, "no_answer": 0, "no_gold": 0,
                      "too_long": 0, "quick": 0, "judged": 0, "timeouts": 0, "errors": 0}

    @property
    def pool(self) -> WorkerPool:
        """The sandbox pool, started on the first pair that needs it, then reused."""
        if self._pool is None:
            self._pool = WorkerPool(
                judge_item, workers=self.workers, timeout_s=self.timeout,
                memory_mb=self.memory_mb, preload=ENGINE_MODULES,
            )
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (they also stop at interpreter exit)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "MathAnswer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, samples: Sequence[Sample]) -> list[Score]:
        with self._lock:
            return self._score(samples)

    def _score(self, samples: Sequence[Sample]) -> list[Score]:
        scores: list[Score] = [None] * len(samples)
        todo: dict[Key, list[int]] = {}
        for i, sample in enumerate(samples):
            self.stats["samples"] += 1
            gold = extract_gold(sample.answer) if self.extract_gold else sample.answer.strip()
            if not gold:
                self.stats["no_gold"] += 1
                continue  # None: this verifier does not apply without a gold answer
            pred = extract_answer(sample.completion, self.policy.fallback, problem=sample.prompt)
            if pred is None:
                self.stats["no_answer"] += 1
                scores[i] = self.incorrect
                continue
            if len(pred) > MAX_CHARS:
                self.stats["too_long"] += 1
                scores[i] = self.incorrect
                continue
            key = (pred, gold, self.policy)
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                scores[i] = self._to_score(cached)
                continue
            if key in todo:
                todo[key].append(i)
                continue
            quick = quick_verdict(pred, gold, self.policy)
            if quick is not None:  # the same text, or two plain numbers: no sandbox needed
                self.stats["quick"] += 1
                self._remember(key, quick)
                scores[i] = self._to_score(quick)
                continue
            todo[key] = [i]
        if todo:
            keys = list(todo)
            verdicts = self.pool.map(keys)
            self.stats["judged"] += len(keys)
            for key, verdict in zip(keys, verdicts):
                if isinstance(verdict, Failure):
                    self.stats["timeouts" if verdict.kind == "timeout" else "errors"] += 1
                    log.debug("math_answer %s on answer %r vs gold %r: %s",
                              verdict.kind, key[0][:100], key[1][:100], verdict.cause)
                self._remember(key, verdict)
                for i in todo[key]:
                    scores[i] = self._to_score(verdict)
        return scores

    def _to_score(self, verdict: bool | Failure) -> Score:
        if isinstance(verdict, Failure):
            return verdict
        return self.correct if verdict else self.incorrect

    def _remember(self, key: Key, verdict: bool | Failure) -> None:
        # timeouts and errors are cached too: the same hostile text would hang again
        if self.cache_size == 0:
            return
        self._cache[key] = verdict
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


@hookimpl
def verirl_register_verifiers() -> list:
    return [MathAnswer]
