"""Final answers of math completions: extraction and equivalence (the core's helpers).

- :func:`extract_answer` finds the final answer in a model's completion;
- :func:`extract_gold` finds it in a dataset's answer field (a bare answer, or a full
  solution with ``\\boxed{}`` or GSM8K's ``#### N``);
- :func:`is_equivalent` / :func:`is_correct` decide equivalence in this process
  (for trusted, quick use: no time bound);
- :func:`judge` / :func:`judge_item` are what the sandboxed workers of the
  ``math_answer`` verifier run.

Parsing is :mod:`verirl.grading.parse` (no eval of any text); equivalence is
:mod:`verirl.grading.equiv`.
"""

from __future__ import annotations

import logging
import re

from verirl.grading.equiv import equivalent
from verirl.grading.parse import MAX_CHARS, ParseError, normalize_text, parse_answer

log = logging.getLogger(__name__)

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_MAX_BOX_SCAN = 20_000  # characters scanned for one box's closing brace
_MAX_BOXES_TRIED = 20
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?[ \t]*([^\n]+)", re.IGNORECASE)
_A_LINE_RE = re.compile(r"^[ \t]*A[ \t]*:[ \t]*(\S[^\n]*)$", re.MULTILINE)
_NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")


class GoldAnswerError(ValueError):
    """The gold answer cannot be parsed (a dataset problem, not the model's)."""


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (balanced
    braces; ``\\boxed 5`` also works), or None."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    for start in reversed(starts[-_MAX_BOXES_TRIED:]):
        j = start
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            content = _balanced(text, j)
            if content is not None:
                return content.strip()
        elif j > start:  # "\boxed 5": one token
            m = re.match(r"[^\s$]+", text[j:j + 200])
            if m:
                return m.group(0)
    return None


def _balanced(text: str, i: int) -> str | None:
    depth = 0
    end = min(len(text), i + _MAX_BOX_SCAN)
    j = i
    while j < end:
        c = text[j]
        if c == "\\":
            j += 2  # \{ and \} are set braces, not grouping
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
        j += 1
    return None


def _after_hashes(text: str) -> str | None:
    k = text.rfind("####")
    if k < 0:
        return None
    rest = text[k + 4:].lstrip(" \t#")
    line = rest.split("\n", 1)[0].strip()
    return line or None


def _clean_sentence(s: str) -> str:
    """The answer part of "... is 42. Because ...": up to the end of the sentence."""
    s = s.strip().replace("**", "")
    m = _SENTENCE_END_RE.search(s)
    if m is not None:
        s = s[:m.start()]
    return s.strip().strip("$").strip()


def last_number(text: str) -> str | None:
    """The last number in ``text`` (``1,234``, ``-3.5``, ``3/4``), or None."""
    last = None
    for m in _NUMBER_RE.finditer(text):
        last = m
    if last is None:
        return None
    s = last.group(0)
    if s.startswith("-") and last.start() > 0 and text[last.start() - 1].isalnum():
        s = s[1:]  # "5-3": a minus between terms, not a sign
    return s.replace(",", "")


def extract_answer(text: str, last_number_fallback: bool = True) -> str | None:
    """The final answer of a completion, by the first rule that finds one:

    1. the last complete ``\\boxed{...}`` / ``\\fbox{...}``;
    2. the text after the last GSM8K-style ``####``;
    3. the rest of the sentence after the last "the answer is" / "final answer:";
    4. the last line of the form ``A: ...``;
    5. (when ``last_number_fallback``) the last number in the text.

    Returns None when no rule applies.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer needs a str, got {type(text).__name__}")
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = _after_hashes(text)
    if hashes is not None:
        return hashes
    found = None
    for m in _ANSWER_IS_RE.finditer(text):
        found = m
    if found is not None:
        answer = _clean_sentence(found.group(1))
        inner = last_boxed(answer)
        if answer:
            return inner if inner is not None else answer
    found = None
    for m in _A_LINE_RE.finditer(text):
        found = m
    if found is not None:
        return _clean_sentence(found.group(1)) or None
    if last_number_fallback:
        return last_number(text)
    return None


def extract_gold(answer: str) -> str:
    """The gold final answer of a dataset answer field: the last ``\\boxed{}`` of a
    MATH solution, the text after GSM8K's ``####``, or the whole (stripped) string."""
    if not isinstance(answer, str):
        raise TypeError(f"extract_gold needs a str, got {type(answer).__name__}")
    boxed = last_boxed(answer) if "boxed" in answer or "fbox" in answer else None
    if boxed is not None:
        return boxed
    hashes = _after_hashes(answer)
    if hashes is not None:
        return hashes.replace(",", "") if re.fullmatch(r"-?[\d,]+(\.\d+)?", hashes) else hashes
    return answer.strip()


def judge(pred: str, gold: str, rel_tol: float = 1e-4) -> bool:
    """Is the extracted answer ``pred`` equivalent to the gold answer ``gold``?

    An unparseable ``pred`` is not equivalent (False). An unparseable ``gold`` raises
    :class:`GoldAnswerError` unless the two texts are the same words (the dataset,
    not the model, is at fault: the caller should count it, not score it 0).
    """
    try:
        g = parse_answer(gold)
    except ParseError as exc:
        if normalize_text(pred) == normalize_text(gold) and normalize_text(gold):
            return True
        raise GoldAnswerError(f"gold answer {gold[:200]!r} cannot be parsed: {exc}") from exc
    try:
        p = parse_answer(pred)
    except ParseError as exc:  # an unreadable answer is a wrong answer
        log.debug("prediction %r not parsed: %s", pred[:200], exc)
        return False
    return equivalent(p, g, rel_tol)


def judge_item(item: tuple[str, str, float]) -> bool:
    """``judge(*item)``: the picklable one-argument form the sandbox workers run."""
    pred, gold, rel_tol = item
    return judge(pred, gold, rel_tol)


def is_equivalent(pred: str, gold: str, rel_tol: float = 1e-4) -> bool:
    """In-process equivalence of two final answers (no time bound: for trusted input).
    An unparseable gold answer falls back to comparing the texts' words."""
    if len(pred) > MAX_CHARS:
        return False
    try:
        return judge(pred, gold, rel_tol)
    except GoldAnswerError:
        return False


def is_correct(completion: str, gold_answer: str, rel_tol: float = 1e-4,
               last_number_fallback: bool = True) -> bool:
    """Does the completion's final answer equal the gold answer field's (in-process)?"""
    pred = extract_answer(completion, last_number_fallback)
    if pred is None:
        return False
    return is_equivalent(pred, extract_gold(gold_answer), rel_tol)
