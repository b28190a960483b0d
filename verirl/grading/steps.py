"""Split a completion into reasoning steps, as character spans.

Process verifiers (rule-based or neural) score a completion step by step; they must
agree on what a step is, so the splitter lives here, in the core, where any verifier
plugin can import it (``from verirl.grading.steps import split_steps``) without the core ever
importing a verifier.

A step is a ``(char_start, char_end)`` span with ``text[char_start:char_end]`` equal to
the step's text stripped of surrounding whitespace. Steps are in order, never overlap,
and never contain a newline except in ``"paragraphs"`` mode. Blank text has no steps.

Modes:

- ``"lines"``: every non-blank line is one step;
- ``"sentences"``: every non-blank line, further cut after a sentence end: one of
  ``. ! ?`` followed by whitespace and then a character that is not a lower-case
  letter (so ``"e.g. the"`` stays whole, and a decimal point such as ``3.5`` never cuts
  because no whitespace follows it);
- ``"paragraphs"``: text between blank lines (the ``"\\n\\n"`` steps many process
  reward models are trained with).
"""

from __future__ import annotations

import re

from verirl.verifier import ConfigError

SPLIT_MODES: tuple[str, ...] = ("lines", "sentences", "paragraphs")

_LINE = re.compile(r"[^\n]+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# A sentence ends at . ! or ? (runs such as "?!" stay together), closing quotes or
# brackets may follow, then whitespace, then the next sentence's first character.
# The lookbehind starts a match only at the first mark of a run, keeping this linear.
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]+[\"')\]]*(?=\s+[^\sa-z])")


def check_split_mode(mode: str, verifier_name: str = "") -> None:
    """Raise :class:`ConfigError` unless ``mode`` is one of :data:`SPLIT_MODES`."""
    if mode not in SPLIT_MODES:
        owner = f"verifier {verifier_name!r} param 'split'" if verifier_name else "split mode"
        raise ConfigError(f"{owner} must be one of {', '.join(SPLIT_MODES)}; got {mode!r}")


def _stripped(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span ``[start, end)`` with surrounding whitespace removed; None if blank."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = []
    cut = start
    for m in _SENTENCE_END.finditer(text, start, end):
        span = _stripped(text, cut, m.end())
        if span:
            spans.append(span)
        cut = m.end()
    span = _stripped(text, cut, end)
    if span:
        spans.append(span)
    return spans


def split_steps(text: str, mode: str = "lines") -> list[tuple[int, int]]:
    """The steps of ``text`` as ``(char_start, char_end)`` spans (see the module doc).

    Runs in time linear in ``len(text)``.
    """
    check_split_mode(mode)
    if mode == "paragraphs":
        spans = []
        cut = 0
        for m in _PARAGRAPH_BREAK.finditer(text):
            span = _stripped(text, cut, m.start())
            if span:
                spans.append(span)
            cut = m.end()
        span = _stripped(text, cut, len(text))
        if span:
            spans.append(span)
        return spans
    spans = []
    for m in _LINE.finditer(text):
        if mode == "sentences":
            spans.extend(_sentences(text, m.start(), m.end()))
        else:
            span = _stripped(text, m.start(), m.end())
            if span:
                spans.append(span)
    return spans
