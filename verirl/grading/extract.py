"""Which text is the final answer: of a model's completion, and of a dataset's gold field.

- :func:`extract_answer` finds the final answer of a completion (rules A0–A5 of the
  grading policy, ``verirl/grading/README.md``);
- :func:`extract_gold` finds the gold answer in a dataset's answer field (a bare answer,
  a MATH solution with ``\\boxed{}``, a GSM8K solution with ``#### N``);
- :func:`last_boxed` is the content of the last complete ``\\boxed{}``.

Pure string work, linear in the text and bounded by the caps below: it runs in the
caller's process (no sandbox, no sympy). Comparing answers is :mod:`verirl.grading.judge`.
"""

from __future__ import annotations

import re
from collections import deque
from typing import NamedTuple

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_MAX_BOX_SCAN = 20_000  # characters scanned for one box's closing brace
_MAX_BOXES_TRIED = 20  # the last boxes looked at
_MAX_GAP = 200  # the longest text between two boxes of one answer
_QUOTE_WINDOW = 2000  # characters around a box searched for quotation marks
_MAX_SPAN = 2000  # the longest math span taken as an answer
_BARE_MAX = 200  # the longest completion taken whole as a bare answer
_MIN_COPY = 24  # the shortest line of the problem blanked out where the completion copies it
_FALLBACK_WINDOW = 20_000  # the fallback looks at the completion's last characters only
_COPY_BUDGET = 20_000_000  # characters searched for copies of the problem (pieces x text length)

_ANSWER_MARK_RE = re.compile(r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?[ \t]*", re.IGNORECASE)
_A_LINE_RE = re.compile(r"^[ \t]*A[ \t]*:[ \t]*(\S[^\n]*)$", re.MULTILINE)
# a number not glued to a preceding letter or digit ("AZYUK2A" holds none)
_NUMBER_RE = re.compile(
    r"(?<![A-Za-z0-9.])(?:-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+)")
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")
# what may stand between two boxes that make one answer ("\boxed{1}, \boxed{2}",
# "\boxed{5} or \boxed{6}", "$\boxed{a}$ \quad \text{and} \quad $\boxed{b}$")
_CONNECTIVE_RE = re.compile(
    r"(?:\s|[$,;&]|\\[,;:! ]|\\q?quad(?![A-Za-z])|\\\\|\\[()\[\]]"
    r"|\\text\s*\{\s*(?:and|or|,|;)?\s*\}|(?<![A-Za-z])(?:and|or)(?![A-Za-z]))*")
# end-of-turn and start-of-turn markers of chat templates: text after one is not the answer
_TURN_MARKERS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
                 "<|end_of_text|>")
_MATH_DELIMS_RE = re.compile(r"\\\$|\$\$|\$|\\\(|\\\)|\\\[|\\\]|\n")
_CLOSER = {"$": "$", "$$": "$$", "\\(": "\\)", "\\[": "\\]"}
_COMMAND_OR_TEXT_RE = re.compile(
    r"\\(?:text\w*|mbox|mathrm|operatorname|begin|end)\s*\{[^{}]*\}|\\[A-Za-z]+")
_WORD_RE = re.compile(r"[A-Za-z]{4,}")
_LETTERS_RE = re.compile(r"[A-Za-z]+")
# letter runs a bare answer may hold besides one-letter variables: function names, units
_MATH_RUNS = frozenset("sin cos tan cot sec csc log ln exp sqrt pi inf max min gcd lcm mod "
                       "cm mm km m ft in yd mi kg g mg lb lbs oz ml l s h hr min".split())


class Box(NamedTuple):
    start: int  # index of the backslash of \boxed
    end: int  # index after the closing brace
    content: str


def balanced_group(text: str, i: int, limit: int | None = None) -> tuple[str, int] | None:
    """``text[i]`` is ``{``: the content up to its matching ``}`` and the index after it,
    or None when it does not close (within ``limit`` characters)."""
    depth = 0
    end = len(text) if limit is None else min(len(text), i + limit)
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
                return text[i + 1:j], j + 1
        j += 1
    return None


def boxes(text: str) -> list[Box]:
    """The complete ``\\boxed{...}`` / ``\\fbox{...}`` among the last ones in ``text``, in
    order (``\\boxed 5``: one token)."""
    starts: deque = deque(_BOX_RE.finditer(text), maxlen=_MAX_BOXES_TRIED)
    out = []
    for m in starts:
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            found = balanced_group(text, j, _MAX_BOX_SCAN)
            if found is not None:
                out.append(Box(m.start(), found[1], found[0].strip()))
        elif j > m.end():
            token = re.match(r"[^\s$]+", text[j:j + 200])
            if token:
                out.append(Box(m.start(), j + token.end(), token.group(0)))
    return out


def last_boxed(text: str) -> str | None:
    """The content of the last complete, non-empty box, or None."""
    found = [b for b in boxes(text) if b.content]
    return found[-1].content if found else None


def _quoted(text: str, pos: int) -> bool:
    """Is ``pos`` inside a quotation on its line ("...", “...”, ``...'')?"""
    lo = max(text.rfind("\n", 0, pos) + 1, pos - _QUOTE_WINDOW)
    hi = text.find("\n", pos, pos + _QUOTE_WINDOW)
    hi = min(len(text), pos + _QUOTE_WINDOW) if hi < 0 else hi
    before, after = text[lo:pos], text[pos:hi]
    return (before.count('"') % 2 == 1 and '"' in after
            or before.count("\u201c") > before.count("\u201d") and "\u201d" in after
            or before.count("``") > before.count("''") and "''" in after)


def answer_box(text: str) -> str | None:
    """The final answer given in boxes (rule A1): the last complete, non-empty box that
    is not inside a quotation, joined with the boxes right before it when only
    connectives stand between them (``\\boxed{1}, \\boxed{2}`` is the answer ``1, 2``;
    ``\\boxed{5} or \\boxed{6}`` is ``5, 6``). None without such a box."""
    found = [b for b in boxes(text) if b.content and not _quoted(text, b.start)]
    if not found:
        return None
    parts = [found[-1].content]
    cur = found[-1]
    for prev in reversed(found[:-1]):
        gap = text[prev.end:cur.start]
        if prev.end > cur.start or len(gap) > _MAX_GAP or not _CONNECTIVE_RE.fullmatch(gap):
            break
        parts.append(prev.content)
        cur = prev
    return ", ".join(reversed(parts))


def _after_hashes(text: str) -> str | None:
    k = text.rfind("####")
    if k < 0:
        return None
    rest = text[k + 4:].lstrip(" \t#")
    line = rest.split("\n", 1)[0].strip()
    return line or None


def _sentence(s: str) -> str:
    """The answer part of "... is 42. Because ...": up to the end of the sentence."""
    s = s.strip().replace("**", "")
    m = _SENTENCE_END_RE.search(s)
    return (s[:m.start()] if m is not None else s).strip()


def _clean_sentence(s: str) -> str:
    return _sentence(s).strip("$").strip()


def math_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, content)`` of the math spans ``$...$``, ``$$...$$``, ``\\(...\\)``,
    ``\\[...\\]`` (``$`` and ``\\(`` end at a newline unclosed; ``\\$`` is a dollar sign).
    One linear scan over the delimiters."""
    spans = []
    opener: tuple[str, int, int] | None = None  # (delimiter, its start, content start)
    for m in _MATH_DELIMS_RE.finditer(text):
        d = m.group(0)
        if d == "\\$":
            continue
        if opener is None:
            if d in _CLOSER:
                opener = (d, m.start(), m.end())
            continue
        kind, start, body = opener
        if d == "\n":
            if kind in ("$", "\\("):
                opener = None
            continue
        if d == _CLOSER[kind]:
            content = text[body:m.start()].strip()
            if content and len(content) <= _MAX_SPAN:
                spans.append((start, m.end(), content))
            opener = None
    return spans


def _looks_like_prose(s: str) -> bool:
    """Is ``s`` (outside LaTeX commands and \\text{}) a sentence rather than math: a word
    of four letters or more beside another word or a number ("$18 and spends $")?"""
    plain = _COMMAND_OR_TEXT_RE.sub(" ", s)
    words = _WORD_RE.findall(plain)
    return bool(words) and (len(_LETTERS_RE.findall(plain)) > 1 or any(c.isdigit() for c in plain))


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


def _last_math_or_number(text: str) -> str | None:
    """The last math span that is not prose, unless a number comes after it (rule A5)."""
    span = None
    for s in math_spans(text):
        if not _looks_like_prose(s[2]):
            span = s
    number = None
    for m in _NUMBER_RE.finditer(text, span[1] if span else 0):
        number = m
    if number is None:
        return span[2] if span else None
    return last_number(text[span[1] if span else 0:])


def _bare_answer(text: str) -> str | None:
    """The completion itself when it is just an answer: one short line that is one word,
    or math whose letter runs (outside LaTeX commands) are one-letter variables, function
    names or unit abbreviations."""
    s = text.strip()
    if not s or "\n" in s or len(s) > _BARE_MAX:
        return None
    runs = _LETTERS_RE.findall(_COMMAND_OR_TEXT_RE.sub(" ", s))
    if len(runs) == 1 and runs[0] == s.strip("$ ."):
        return s  # "Even", "east"
    if all(len(r) == 1 or r.lower() in _MATH_RUNS for r in runs):
        return s
    return None


def _answer_statement(text: str) -> str | None:
    """The answer of the last "the answer is ..." / "Final Answer: ..." (rule A3)."""
    marks: deque = deque(_ANSWER_MARK_RE.finditer(text), maxlen=_MAX_BOXES_TRIED)
    last = next((m for m in reversed(marks) if not _quoted(text, m.start())), None)
    if last is None:
        return None
    rest = text[last.end():last.end() + _MAX_BOX_SCAN]
    line, _, after = rest.partition("\n")
    if not line.strip():  # "Final Answer:\n\n42": the answer is on the next line
        line = next((ln for ln in after.split("\n")[:3] if ln.strip()), "")
    sentence = _sentence(line)
    inner = answer_box(sentence)
    if inner is not None:
        return inner
    spans = math_spans(sentence)
    if spans:
        outside = "".join(sentence[a:b] for a, b in zip([0] + [s[1] for s in spans],
                                                          [s[0] for s in spans] + [len(sentence)]))
        if _looks_like_prose(outside):  # "The largest $n$ is 34": the math, not the prose
            return _last_math_or_number(sentence)
    return sentence.strip("$").strip() or None


def _before_turn_marker(text: str) -> str:
    cut = min((k for k in (text.find(m) for m in _TURN_MARKERS) if k >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def _without_copies(text: str, problem: str) -> str:
    """``text`` with every verbatim copy of a line or sentence of ``problem`` (of at
    least ``_MIN_COPY`` characters) blanked out (rule A0). The problem's last pieces (its
    question and instructions) come first; searching stops after ``_COPY_BUDGET``
    characters, so that a huge completion against a long prompt stays cheap."""
    pieces: dict[str, None] = {}  # in order, last line first
    for line in reversed(problem.split("\n")):
        for piece in (line, *re.split(r"(?<=[.?!])\s+", line)):
            piece = piece.strip()
            if len(piece) >= _MIN_COPY:
                pieces.setdefault(piece)
    budget = _COPY_BUDGET
    for piece in pieces:
        budget -= len(text)
        if budget < 0:
            break
        if piece in text:
            text = text.replace(piece, " ")
    return text


def extract_answer(text: str, fallback: str = "last_math", problem: str = "") -> str | None:
    """The final answer of a completion, by the first rule that finds one:

    0. (preparation) text after a chat end-of-turn marker is dropped, and every verbatim
       copy of a line or sentence of ``problem`` is blanked out;
    1. the last complete non-empty ``\\boxed{...}`` / ``\\fbox{...}`` outside quotations,
       with the boxes joined to it by connectives (:func:`answer_box`);
    2. the text after the last GSM8K-style ``####``;
    3. the rest of the sentence after the last "the answer is" / "final answer:";
    4. the last line of the form ``A: ...``;
    5. by ``fallback``: ``"last_math"``: the whole completion when it is a bare answer
       (one short line, no prose), else its last math span or last number, whichever
       comes last; ``"last_number"``: the last number; ``"none"``: nothing (both looked
       for in the last ``_FALLBACK_WINDOW`` characters).

    Returns None when no rule applies.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer needs a str, got {type(text).__name__}")
    text = _before_turn_marker(text)
    if problem:
        text = _without_copies(text, problem)
    found = answer_box(text)
    if found is None:
        found = _after_hashes(text)
    if found is None:
        found = _answer_statement(text)
    if found is None:
        line = None
        for m in _A_LINE_RE.finditer(text):
            line = m
        if line is not None:
            found = _clean_sentence(line.group(1)) or None
    if found is not None or fallback == "none":
        return found
    tail = _tail(text)
    if fallback == "last_number":
        return last_number(tail)
    return _bare_answer(text) or _last_math_or_number(tail)


def _tail(text: str) -> str:
    """The last ``_FALLBACK_WINDOW`` characters, cut after a whitespace (not in a number)."""
    if len(text) <= _FALLBACK_WINDOW:
        return text
    cut = len(text) - _FALLBACK_WINDOW
    m = re.compile(r"\s").search(text, cut)
    return text[m.end():] if m else ""


def extract_gold(answer: str) -> str:
    """The gold final answer of a dataset answer field: the boxed answer of a MATH
    solution (:func:`answer_box`), the text after GSM8K's ``####``, the answer of a
    "final answer is" sentence of a worked solution, or the whole (stripped) string."""
    if not isinstance(answer, str):
        raise TypeError(f"extract_gold needs a str, got {type(answer).__name__}")
    boxed = answer_box(answer) if "boxed" in answer or "fbox" in answer else None
    if boxed is not None:
        return boxed
    hashes = _after_hashes(answer)
    if hashes is not None:
        return hashes.replace(",", "") if re.fullmatch(r"-?[\d,]+(\.\d+)?", hashes) else hashes
    if "\n" in answer.strip() or len(answer) > _BARE_MAX:
        said = _answer_statement(answer)
        if said is not None:
            return said
    return answer.strip()
