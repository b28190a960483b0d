"""Accuracy of a model on a set of problems: pass@1, pass@k and maj@k.

- pass@k (unbiased estimator, Chen et al. 2021): with ``n`` samples of which ``c`` are
  correct, ``pass@k = 1 − C(n−c, k) / C(n, k)``, averaged over problems.
- maj@k: the answer given most often among the first ``k`` samples (answers compared
  as strings after extraction) is the model's answer; it scores if it is correct.
- accuracy: with one greedy sample per problem, the fraction correct (= pass@1).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from verirl.data import Problem
from verirl.rollout.base import RolloutEngine, SamplingConfig
from verirl.verifier import Sample


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 − C(n−c, k) / C(n, k)``."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    completions: list[list[str]]  # per problem, its samples
    correct: list[list[bool]]


def evaluate(
    engine: RolloutEngine,
    problems: Sequence[Problem],
    prompts: Sequence[str],
    score: Callable[[list[Sample]], list[float]],
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    ks: Sequence[int] = (1,),
    extract: Callable[[str], Any] | None = None,
    on_batch: Callable[[int], Any] | None = None,
) -> EvalResult:
    """Generate ``n`` samples per problem and score them with ``score`` (a sample is
    correct when its score is > 0.5). ``extract`` (completion → answer key) enables maj@k;
    ``on_batch`` is called with the number of problems each batch finished (progress)."""
    sampling = SamplingConfig(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    completions: list[list[str]] = []
    correct: list[list[bool]] = []
    per_call = max(1, batch_size // n)
    for start in range(0, len(problems), per_call):
        chunk = list(problems[start : start + per_call])
        batch = engine.generate(list(prompts[start : start + per_call]), sampling)
        samples = [
            Sample(prompt=prompts[start + i // n], completion=text, answer=chunk[i // n].answer,
                   row=chunk[i // n].row, num_tokens=int(batch.num_tokens[i]), max_tokens=max_new_tokens)
            for i, text in enumerate(batch.texts)
        ]
        scores = score(samples)
        for p in range(len(chunk)):
            completions.append(batch.texts[p * n : (p + 1) * n])
            correct.append([s > 0.5 for s in scores[p * n : (p + 1) * n]])
        if on_batch is not None:
            on_batch(len(chunk))
    metrics: dict[str, float] = {}
    total = len(correct)
    metrics["accuracy"] = sum(sum(c) / len(c) for c in correct) / total
    for k in ks:
        if k <= n:
            metrics[f"pass@{k}"] = sum(pass_at_k(n, sum(c), k) for c in correct) / total
    if extract is not None:
        for k in ks:
            if 1 < k <= n:
                hits = 0
                for texts, flags in zip(completions, correct):
                    answers = [extract(t) for t in texts[:k]]
                    voted = Counter(a for a in answers if a is not None).most_common(1)
                    if voted:
                        hits += flags[answers.index(voted[0][0])]
                metrics[f"maj@{k}"] = hits / total
    return EvalResult(metrics, completions, correct)
