"""Plain numbers compared without the parser: the fast path of the judge.

Most final answers of arithmetic datasets are plain numbers (``18``, ``-3.5``,
``1,234``, ``\\$18.90``, ``10{,}000``). :func:`plain_verdict` decides such a pair with
exact integer arithmetic, giving the verdict the full engine (parser + sympy) gives under
the same policy, and returns None for anything else. It is one anchored regular
expression with no nested repetition, over at most ``MAX_CHARS`` characters, then integer
arithmetic on numbers of at most that many digits: its time is bounded by its input, so
it may run in the caller's process, before any sandbox is needed.
"""

from __future__ import annotations

import re
from fractions import Fraction

from verirl.grading.policy import MAX_CHARS, Policy

# optional currency sign, sign, digits (thousands groups: "1,234", "10{,}000", "10,\!080"),
# optional decimal part; nothing else
_PLAIN_RE = re.compile(
    r"\s*(?:\\?\$\s*)?([+-]?)\s*(?:\\?\$\s*)?([1-9]\d{0,2}(?:(?:,|\{,\}|,\\!)\d{3})+|\d+)(?:\.(\d+))?\s*",
    re.ASCII)
_SEPARATORS_RE = re.compile(r"[^\d]")


def plain_number(text: str) -> tuple[Fraction, bool] | None:
    """``(value, is_decimal)`` of a plain number, or None if ``text`` is anything else."""
    if len(text) > MAX_CHARS:
        return None
    m = _PLAIN_RE.fullmatch(text)
    if m is None:
        return None
    sign, whole, frac = m.groups()
    digits = _SEPARATORS_RE.sub("", whole)
    value = Fraction(int(digits + (frac or "")), 10 ** len(frac or ""))
    return (-value if sign == "-" else value), frac is not None


def plain_verdict(pred: str, gold: str, policy: Policy) -> bool | None:
    """The verdict on two plain numbers under ``policy``, or None if either is not one.

    Equal values are equivalent under every policy. Otherwise: under ``numeric="exact"``
    and ``"digits"`` they differ (a plain number is an integer or a decimal, and a
    decimal stands only for a non-integer exact value, which a plain number never is);
    under ``"rel_tol"``, two integers differ and a decimal matches within
    ``|p - g| <= rel_tol * max(|p|, |g|) + 1e-12``, as the engine computes it.
    """
    p, g = plain_number(pred), plain_number(gold)
    if p is None or g is None:
        return None
    (pv, p_dec), (gv, g_dec) = p, g
    if pv == gv:
        return True
    if policy.numeric != "rel_tol" or not (p_dec or g_dec):
        return False
    try:
        pf, gf = float(pv), float(gv)
    except OverflowError:
        return None  # beyond floats: the engine decides
    return abs(pf - gf) <= policy.rel_tol * max(abs(pf), abs(gf)) + 1e-12
