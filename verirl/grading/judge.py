"""Is an extracted answer the gold answer, under a grading policy?

- :func:`quick_verdict` decides, without parsing, the pairs that need no parser: the same
  text twice, and two plain numbers (:func:`verirl.grading.numbers.plain_verdict`);
- :func:`judge` decides one pair: by :func:`quick_verdict`, else by the safe parser
  (:mod:`verirl.grading.parse`) and sympy equivalence (:mod:`verirl.grading.equiv`);
- :func:`judge_item` is its one-argument form, what the ``math_answer`` verifier's
  sandboxed workers run;
- :func:`is_equivalent` / :func:`is_correct` decide in this process, for trusted input
  (no time bound).

This module imports sympy only when a pair needs it, so that a process that only
extracts answers and refers to :func:`judge_item` (the verifier, which hands pairs to
its workers) never loads it.
"""

from __future__ import annotations

import logging
import re

from verirl.grading.extract import extract_answer, extract_gold
from verirl.grading.numbers import plain_verdict
from verirl.grading.policy import MAX_CHARS, PRESETS, Policy

log = logging.getLogger(__name__)

# what the sandbox's forkserver imports once, so that every worker forks with them
ENGINE_MODULES = ("verirl.grading.parse", "verirl.grading.equiv", __name__)


class GoldAnswerError(ValueError):
    """The gold answer cannot be parsed (a dataset problem, not the model's)."""


_SPACES_RE = re.compile(r"\s+")


def quick_verdict(pred: str, gold: str, policy: Policy) -> bool | None:
    """The verdict on a pair that needs no parser, or None.

    The same text (up to runs of whitespace, which the tokenizer does not count) is the
    same answer under every policy: it parses to the same value, or, unparseable, it is
    the same words (a text with no letter or digit is left to the engine, which reports
    it as an unreadable gold). Two plain numbers: :func:`plain_verdict`.
    """
    if _SPACES_RE.sub(" ", pred.strip()) == _SPACES_RE.sub(" ", gold.strip()) and any(c.isalnum() for c in gold):
        return True
    return plain_verdict(pred, gold, policy)


def judge(pred: str, gold: str, policy: Policy = PRESETS["train"]) -> bool:
    """Is the extracted answer ``pred`` equivalent to the gold answer ``gold``?

    An unparseable ``pred`` is not equivalent (False). An unparseable ``gold`` raises
    :class:`GoldAnswerError` unless the two texts are the same words (the dataset,
    not the model, is at fault: the caller should count it, not score it 0).
    """
    verdict = quick_verdict(pred, gold, policy)
    if verdict is not None:
        return verdict
    # the engine: imported here, in the worker that needs it (see the module doc)
    from verirl.grading.equiv import equivalent
    from verirl.grading.parse import ParseError, normalize_text, parse_answer

    try:
        g = parse_answer(gold, policy.percent)
    except ParseError as exc:
        if normalize_text(pred) == normalize_text(gold) and normalize_text(gold):
            return True
        raise GoldAnswerError(f"gold answer {gold[:200]!r} cannot be parsed: {exc}") from exc
    try:
        p = parse_answer(pred, policy.percent)
    except ParseError as exc:  # an unreadable answer is a wrong answer
        log.debug("prediction %r not parsed: %s", pred[:200], exc)
        return False
    return equivalent(p, g, policy)


def judge_item(item: tuple[str, str, Policy]) -> bool:
    """``judge(*item)``: the picklable one-argument form the sandbox workers run."""
    pred, gold, policy = item
    return judge(pred, gold, policy)


def is_equivalent(pred: str, gold: str, policy: Policy | None = None) -> bool:
    """In-process equivalence of two final answers (no time bound: for trusted input).
    An unparseable gold answer falls back to comparing the texts' words."""
    if len(pred) > MAX_CHARS:
        return False
    try:
        return judge(pred, gold, policy or PRESETS["train"])
    except GoldAnswerError:
        return False


def is_correct(completion: str, gold_answer: str, policy: Policy | None = None) -> bool:
    """Does the completion's final answer equal the gold answer field's (in-process)?"""
    policy = policy or PRESETS["train"]
    pred = extract_answer(completion, policy.fallback)
    if pred is None:
        return False
    return is_equivalent(pred, extract_gold(gold_answer), policy)
