"""Rewards aggregation: run the configured verifiers on a batch and combine their scores.

A rewards config is a list of terms ``{verifier: NAME, weight: float, params...}``.
The sample's reward is the weighted sum over terms::

    R_i = Σ_k w_k · s_k(i)

where ``s_k(i)`` is term k's score for sample i: an outcome verifier's float, or a
process verifier's step rewards reduced to one number (``reduce``: mean of the steps by
default). A score of ``None`` ("does not apply") contributes nothing.

Nothing a verifier does stops training: if it raises, runs past ``batch_timeout``,
returns a malformed result, or reports a per-sample :class:`~verirl.Failure`, the
affected samples get the term's ``fallback`` score; the failure is counted (by kind)
and logged once per term and cause.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


from verirl.plugins import get_verifier
from verirl.verifier import ConfigError, Failure, Sample, Step

log = logging.getLogger("verirl.rewards")

# Keys of a rewards-config term that belong to the aggregator; all others are the
# verifier's own params.
TERM_KEYS = ("verifier", "name", "weight", "fallback", "batch_timeout", "reduce")
REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda xs: sum(xs) / len(xs) if xs else 0.0,
    "min": lambda xs: min(xs) if xs else 0.0,
    "sum": lambda xs: float(sum(xs)),
    "last": lambda xs: xs[-1] if xs else 0.0,
}


@dataclass
class RewardTerm:
    """One entry of a rewards config."""

    verifier: str
    weight: float = 1.0
    fallback: float = 0.0
    name: str = ""  # label in `scores`; defaults to the verifier name
    batch_timeout: float = 600.0  # wall-clock bound on one batch call, seconds
    reduce: str = "mean"  # process verifiers: how step rewards become one number
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or self.verifier
        if self.reduce not in REDUCERS:
            raise ConfigError(
                f"rewards term {self.name!r}: reduce must be one of {sorted(REDUCERS)}, "
                f"got {self.reduce!r}"
            )
        for key in ("weight", "fallback", "batch_timeout"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"rewards term {self.name!r}: {key} must be a number, got {value!r}")
            setattr(self, key, float(value))


def parse_rewards(entries: Any, *, source: str = "rewards") -> list[RewardTerm]:
    """Turn a rewards config (a list of dicts, or ``{rewards: [...]}``) into terms."""
    if isinstance(entries, dict) and "rewards" in entries:
        entries = entries["rewards"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"{source}: expected a non-empty list of {{verifier: NAME, weight: W, ...}}, "
            f"got {entries!r}"
        )
    terms = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"verifier": entry}
        if not isinstance(entry, dict) or "verifier" not in entry:
            raise ConfigError(f"{source}[{i}]: each term needs a 'verifier' key, got {entry!r}")
        entry = dict(entry)
        params = {k: entry.pop(k) for k in list(entry) if k not in TERM_KEYS}
        terms.append(RewardTerm(params=params, **entry))
    names = [t.name for t in terms]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(
            f"{source}: term names must be unique, {sorted(dupes)} repeat; give repeated "
            "verifiers distinct `name:` keys"
        )
    return terms


def load_rewards(path: str | Path) -> list[RewardTerm]:
    """Read a rewards YAML file."""
    from verirl.config import read_yaml

    return parse_rewards(read_yaml(path, "rewards file"), source=str(path))


@dataclass
class RewardBatch:
    """The scored batch.

    ``rewards[i]``: the weighted sum for sample i. ``scores[i]``: ``{term name: score}``
    with the raw (unweighted) verifier result after fallback — a float, ``None``, or a
    process verifier's list of :class:`Step`. ``steps[i]``: sample i's weighted step
    rewards for process supervision, sorted by ``char_end`` (see :class:`RewardFunction`
    for where the outcome scores go).
    """

    rewards: list[float]
    scores: list[dict[str, Any]]
    steps: list[list[Step]]
    failures: dict[str, dict[str, int]]
    seconds: float


def _reduced(term: RewardTerm, score: Any) -> float:
    if score is None:
        return math.nan
    if isinstance(score, list):
        return REDUCERS[term.reduce]([s.reward for s in score])
    return float(score)


OUTCOME_STEPS = ("always", "fallback")


class RewardFunction:
    """Builds the configured verifiers once and scores batches of samples.

    Step rewards (process supervision, ``RewardBatch.steps``), with ``w_k`` term k's weight:

    - each step a process term returns is a step of its own, with reward ``w_k · r``;
    - each outcome term's score ``s`` is one more step, the *final-answer step*, spanning
      the whole completion, so it ends on the completion's last character (the last
      token before EOS) with reward ``w_k · s``;
    - ``outcome_step="always"``: the final-answer steps are always there;
      ``"fallback"``: only for a completion to which no process term gave a step (the
      verifier found none, or does not apply), so that it is still scored by its outcome.

    A completion with no step at all carries no process signal.
    """

    def __init__(self, terms: Sequence[RewardTerm], outcome_step: str = "always"):
        if outcome_step not in OUTCOME_STEPS:
            raise ConfigError(f"outcome_step must be one of {list(OUTCOME_STEPS)}, got {outcome_step!r}")
        self.outcome_step = outcome_step
        self.terms = list(terms)
        self.specs = [get_verifier(t.verifier) for t in self.terms]
        self.scorers = [spec.build(**dict(t.params)) for spec, t in zip(self.specs, self.terms)]
        self.totals: dict[str, dict[str, int]] = {
            t.name: {"timeout": 0, "error": 0, "not_applicable": 0} for t in self.terms
        }
        self._logged: set[tuple[str, str]] = set()

    def __call__(self, samples: Sequence[Sample]) -> RewardBatch:
        start = time.perf_counter()
        n = len(samples)
        rewards = [0.0] * n
        scores: list[dict[str, Any]] = [{} for _ in range(n)]
        steps: list[list[Step]] = [[] for _ in range(n)]
        final_steps: list[list[Step]] = [[] for _ in range(n)]
        failures = {t.name: {"timeout": 0, "error": 0, "not_applicable": 0} for t in self.terms}
        for term, spec, scorer in zip(self.terms, self.specs, self.scorers):
            results = self._run(term, scorer, samples)
            for i, result in enumerate(results):
                if isinstance(result, Failure):
                    failures[term.name][result.kind] += 1
                    self._log_once(term, result)
                    result = term.fallback
                else:
                    result, problem = _validate(spec.kind, result, samples[i])
                    if problem is not None:
                        failures[term.name]["error"] += 1
                        self._log_once(term, Failure("error", problem))
                        result = term.fallback
                scores[i][term.name] = result
                if result is None:
                    failures[term.name]["not_applicable"] += 1
                    continue
                rewards[i] += term.weight * _reduced(term, result)
                if isinstance(result, list):  # process steps
                    steps[i].extend(Step(s.char_start, s.char_end, term.weight * s.reward) for s in result)
                else:
                    final_steps[i].append(Step(0, len(samples[i].completion), term.weight * result))
        for name, counts in failures.items():
            for kind, count in counts.items():
                self.totals[name][kind] += count
        for process, final in zip(steps, final_steps):
            if self.outcome_step == "always" or not process:
                process.extend(final)
            process.sort(key=lambda step: step.char_end)
        return RewardBatch(rewards, scores, steps, failures, time.perf_counter() - start)

    def term_values(self, batch: RewardBatch) -> tuple[list[list[float]], list[float]]:
        """Each sample's unweighted score per term, ``[N][K]`` (a process term reduced by
        its ``reduce``; ``nan`` where the verifier said it does not apply), and the terms'
        weights ``[K]``: the inputs of normalise-then-sum advantages (``gdpo``)."""
        values = []
        for row in batch.scores:
            values.append([_reduced(term, row.get(term.name)) for term in self.terms])
        return values, [term.weight for term in self.terms]

    def _run(self, term: RewardTerm, scorer: Callable, samples: Sequence[Sample]) -> list:
        """Call one verifier on the batch within its wall-clock bound.

        The call runs in a daemon thread: if it overruns ``batch_timeout`` the thread is
        abandoned and every sample gets a timeout. (Verifiers whose work can hang in C,
        such as sympy, bound each sample themselves in killable worker processes.)
        """
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = scorer(list(samples))
            except Exception as exc:  # counted and logged by the caller
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"verifier-{term.name}", daemon=True)
        thread.start()
        thread.join(term.batch_timeout)
        n = len(samples)
        if thread.is_alive():
            return [Failure("timeout", f"batch call ran past batch_timeout={term.batch_timeout:g}s")] * n
        if "error" in box:
            exc = box["error"]
            return [Failure("error", f"raised {type(exc).__name__}: {exc}")] * n
        result = box.get("result")
        if not isinstance(result, (list, tuple)) or len(result) != n:
            got = f"{type(result).__name__} of length {len(result)}" if isinstance(result, (list, tuple)) else repr(result)[:80]
            return [Failure("error", f"returned {got}; expected a list of {n} scores")] * n
        return list(result)

    def _log_once(self, term: RewardTerm, failure: Failure) -> None:
        key = (term.name, failure.kind + ":" + failure.cause[:60])
        if key in self._logged:
            return
        self._logged.add(key)
        log.warning(
            "verifier %r (%s): %s: %s; the sample gets fallback %g (logged once per cause)",
            term.name, term.verifier, failure.kind, failure.cause, term.fallback,
        )

    def close(self) -> None:
        for scorer in self.scorers:
            close = getattr(scorer, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> "RewardFunction":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _validate(kind: str, result: Any, sample: Sample) -> tuple[Any, str | None]:
    """Check one sample's result; return (clean result, problem or None)."""
    if result is None:
        return None, None
    if kind == "outcome":
        if isinstance(result, bool) or not isinstance(result, numbers.Real):
            return None, f"returned {result!r} ({type(result).__name__}); outcome scores are floats"
        value = float(result)
        if not math.isfinite(value):
            return None, f"returned non-finite score {value}"
        return value, None
    if not isinstance(result, (list, tuple)):
        return None, f"returned {type(result).__name__}; process scores are lists of (char_start, char_end, reward)"
    length = len(sample.completion)
    clean = []
    for step in result:
        if not isinstance(step, (list, tuple)) or len(step) != 3:
            return None, f"returned step {step!r}; steps are (char_start, char_end, reward)"
        start, end, reward = step
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= length):
            return None, f"returned step span ({start!r}, {end!r}) outside the completion (length {length})"
        if isinstance(reward, bool) or not isinstance(reward, numbers.Real) or not math.isfinite(reward):
            return None, f"returned step reward {reward!r}; must be a finite float"
        clean.append(Step(start, end, float(reward)))
    return clean, None
