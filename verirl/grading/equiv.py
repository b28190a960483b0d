"""Equivalence of two parsed answers (:mod:`verirl.grading.parse`).

``equivalent(pred, gold, rel_tol)`` decides, by the kind of the gold answer:

- numbers and expressions: equal when ``pred - gold`` is exactly 0. Exact values
  (integers, fractions, radicals, pi) are compared exactly: the difference is evaluated
  to 50 digits and must vanish to 30 of them (``simplify`` is the fallback where it
  cannot be evaluated). When either side holds a decimal (an inexact number), a relative
  tolerance applies: ``|p - g| <= rel_tol * max(|p|, |g|)``. Expressions with variables
  are compared at five fixed sample points (a random-point identity test) under the
  same rules, and with ``simplify`` where the points cannot be evaluated;
- equations: ``x = 3`` matches ``3``; two equations match when ``lhs - rhs`` of one is a
  non-zero constant multiple of the other's;
- inequalities in one variable are read as intervals (``x > 5`` is ``(5, oo)``);
- tuples/points and vectors: same length, element by element, in order;
- intervals: equal endpoints and equal open/closed ends; unions: the same intervals in
  any order; a 2-tuple ``(a, b)`` matches the open interval ``(a, b)``;
- sets, lists of answers (roots) and ``\\pm`` answers: the same elements in any order;
- matrices: same shape, element by element;
- multiple-choice letters and word answers: the same letter / the same words.

Values marked ``huge`` (an unevaluated giant power) are compared structurally only.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import sympy

from verirl.grading.parse import AnswerList, Choice, Parsed, Text

log = logging.getLogger(__name__)

_EXACT_DIGITS = 50
_EXACT_REL = 1e-30  # exact values must agree to 30 digits of their 50
_SIMPLIFY_MAX_OPS = 300  # larger differences are not handed to simplify (time)
# sample points for identity tests: irrational-looking, both signs, away from 0 and 1
_POINTS = (0.5377, 1.8339, -2.2588, 0.8622, 0.3188, -1.3077, 2.7694, -0.4336, 3.5784, 2.6840)
_SAMPLES = 5
_ERRORS = (TypeError, ValueError, ArithmeticError, AttributeError, NotImplementedError,
           RecursionError, sympy.SympifyError)


def equivalent(pred: Parsed, gold: Parsed, rel_tol: float = 1e-4) -> bool:
    """Is ``pred`` the same answer as ``gold``? (any reading of each; see module doc)"""
    huge = pred.huge or gold.huge
    return any(_equal(p, g, rel_tol, huge) for g in gold.readings for p in pred.readings)


# ---------------------------------------------------------------------------------------
def _equal(p: Any, g: Any, tol: float, huge: bool) -> bool:
    if p == g:  # structurally identical (also the only test for giant or infinite values)
        return True
    if isinstance(p, Choice) or isinstance(g, Choice):
        lp, lg = _letter(p), _letter(g)
        return lp is not None and lp == lg
    if isinstance(p, Text) or isinstance(g, Text):
        return isinstance(p, Text) and isinstance(g, Text) and p.words == g.words
    ep, eg = _unordered(p), _unordered(g)
    if ep is not None or eg is not None:
        return _collections_equal(p, g, ep, eg, tol, huge)
    if isinstance(p, sympy.Eq) or isinstance(g, sympy.Eq):
        if isinstance(p, sympy.Eq) and isinstance(g, sympy.Eq) and _equations_equal(p, g, tol, huge):
            return True
        up, ug = _unwrap_eq(p), _unwrap_eq(g)
        if up is p and ug is g:
            return False
        return _equal(up, ug, tol, huge)
    p, g = _as_set(p), _as_set(g)
    if isinstance(p, sympy.Set) or isinstance(g, sympy.Set):
        return _sets_equal(p, g, tol, huge)
    if isinstance(p, (sympy.Tuple, sympy.MatrixBase)) or isinstance(g, (sympy.Tuple, sympy.MatrixBase)):
        sp, sg = _sequence(p), _sequence(g)
        if sp is None or sg is None or len(sp) != len(sg):
            return False
        if isinstance(p, sympy.MatrixBase) and isinstance(g, sympy.MatrixBase) and p.shape != g.shape:
            return False
        return all(_equal(a, b, tol, huge) for a, b in zip(sp, sg))
    if isinstance(p, sympy.Rel) or isinstance(g, sympy.Rel):
        return p == g
    if isinstance(p, sympy.Expr) and isinstance(g, sympy.Expr):
        return _exprs_equal(p, g, tol, huge)
    return p == g


def _letter(v: Any) -> str | None:
    if isinstance(v, Choice):
        return v.letter
    if isinstance(v, sympy.Symbol) and len(v.name) == 1 and v.name.isupper():
        return v.name
    if isinstance(v, Text) and len(v.words) == 1:
        return v.words.upper()
    return None


def _unordered(v: Any) -> list | None:
    if isinstance(v, AnswerList):
        return list(v.items)
    if isinstance(v, sympy.FiniteSet):
        return list(v.args)
    return None


def _collections_equal(p: Any, g: Any, ep: list | None, eg: list | None, tol: float,
                       huge: bool) -> bool:
    if ep is None or eg is None:  # a collection against one value
        coll, other, other_is_p = (eg, p, True) if ep is None else (ep, g, False)
        seq = _sequence(other)
        if seq is not None and (isinstance(p, AnswerList) or isinstance(g, AnswerList)):
            # "1, 2, 3" against (1, 2, 3): a list written without brackets, in order
            return len(seq) == len(coll) and all(
                _equal(a, b, tol, huge) for a, b in (zip(seq, coll) if other_is_p else zip(coll, seq)))
        if seq is not None:  # a set against a tuple: same elements in any order
            return _match_unordered(seq, coll, tol, huge) if other_is_p else \
                _match_unordered(coll, seq, tol, huge)
        coll = _dedupe(coll, tol, huge)  # "x = 2 or x = 2" is the one answer 2
        if len(coll) != 1:
            return False
        return _equal(other, coll[0], tol, huge) if other_is_p else _equal(coll[0], other, tol, huge)
    return _match_unordered(ep, eg, tol, huge)


def _match_unordered(ps: list, gs: list, tol: float, huge: bool) -> bool:
    """Every element pairs with exactly one equivalent element of the other side."""
    ps, gs = _dedupe(ps, tol, huge), _dedupe(gs, tol, huge)
    if len(ps) != len(gs):
        return False
    used = [False] * len(gs)
    for a in ps:
        for j, b in enumerate(gs):
            if not used[j] and _equal(a, b, tol, huge):
                used[j] = True
                break
        else:
            return False
    return True


def _dedupe(items: list, tol: float, huge: bool) -> list:
    out: list = []
    for x in items:
        if not any(_equal(x, y, tol, huge) for y in out):
            out.append(x)
    return out


def _unwrap_eq(v: Any) -> Any:
    """``x = 3`` -> 3 (the side that is not a lone variable); other values unchanged."""
    if isinstance(v, sympy.Eq):
        lhs, rhs = v.lhs, v.rhs
        if isinstance(lhs, sympy.Symbol) and not isinstance(rhs, sympy.Symbol):
            return rhs
        if isinstance(rhs, sympy.Symbol) and not isinstance(lhs, sympy.Symbol):
            return lhs
    return v


def _equations_equal(p: sympy.Eq, g: sympy.Eq, tol: float, huge: bool) -> bool:
    """``l1 = r1`` and ``l2 = r2`` are the same equation when ``l1 - r1 = c (l2 - r2)``
    for a constant ``c != 0`` (checked at sample points)."""
    if not all(isinstance(s, sympy.Expr) for s in (p.lhs, p.rhs, g.lhs, g.rhs)):
        return p == g
    if huge:
        return p == g
    dp, dg = p.lhs - p.rhs, g.lhs - g.rhs
    symbols = sorted(dp.free_symbols | dg.free_symbols, key=lambda s: s.name)
    if not symbols:
        return _exprs_equal(p.lhs, g.lhs, tol, huge) and _exprs_equal(p.rhs, g.rhs, tol, huge)
    ratios = []
    for k in range(_SAMPLES):
        point = _point(symbols, k)
        a, b = _evaluate(dp, point), _evaluate(dg, point)
        if a is None or b is None or abs(b) < 1e-12:
            continue
        ratios.append(a / b)
    if len(ratios) < 3 or abs(ratios[0]) < 1e-12:
        return False
    return all(abs(r - ratios[0]) <= 1e-9 * abs(ratios[0]) for r in ratios)


def _as_set(v: Any) -> Any:
    """An inequality in one variable as an interval (``x > 5`` -> ``(5, oo)``)."""
    if isinstance(v, (sympy.Lt, sympy.Le, sympy.Gt, sympy.Ge)):
        lhs, rhs = v.lhs, v.rhs
        if isinstance(rhs, sympy.Symbol) and not isinstance(lhs, sympy.Symbol):
            v = v.reversed
            lhs, rhs = v.lhs, v.rhs
        if isinstance(lhs, sympy.Symbol) and isinstance(rhs, sympy.Expr) and not rhs.free_symbols:
            strict = isinstance(v, (sympy.Lt, sympy.Gt))
            try:
                if isinstance(v, (sympy.Lt, sympy.Le)):
                    return sympy.Interval(-sympy.oo, rhs, True, strict)
                return sympy.Interval(rhs, sympy.oo, strict, True)
            except _ERRORS as exc:  # x < i: not an interval; compared as a relation
                log.debug("inequality %s is not an interval: %s", v, exc)
    return v


def _intervals(v: Any) -> list | None:
    if isinstance(v, sympy.Union):
        parts = [_intervals(a) for a in v.args]
        if any(p is None for p in parts):
            return None
        return [x for p in parts for x in p]
    if isinstance(v, sympy.Interval):
        return [v]
    if isinstance(v, sympy.Tuple) and len(v) == 2:  # (a, b): an open interval
        return [("open", v[0], v[1])]
    return None


def _sets_equal(p: Any, g: Any, tol: float, huge: bool) -> bool:
    if p is sympy.S.EmptySet or g is sympy.S.EmptySet:
        return p is g
    ip, ig = _intervals(p), _intervals(g)
    if ip is None or ig is None or len(ip) != len(ig):
        return p == g
    used = [False] * len(ig)
    for a in ip:
        for j, b in enumerate(ig):
            if not used[j] and _intervals_equal(a, b, tol, huge):
                used[j] = True
                break
        else:
            return False
    return True


def _ends(iv: Any) -> tuple:
    if isinstance(iv, tuple):
        return iv[1], iv[2], True, True
    return iv.start, iv.end, bool(iv.left_open), bool(iv.right_open)


def _intervals_equal(a: Any, b: Any, tol: float, huge: bool) -> bool:
    lo1, hi1, lo1_open, hi1_open = _ends(a)
    lo2, hi2, lo2_open, hi2_open = _ends(b)
    if (lo1_open, hi1_open) != (lo2_open, hi2_open):  # sympy keeps infinite ends open
        return False
    return _equal(lo1, lo2, tol, huge) and _equal(hi1, hi2, tol, huge)


def _sequence(v: Any) -> list | None:
    if isinstance(v, sympy.Tuple):
        return list(v.args)
    if isinstance(v, sympy.MatrixBase):
        if v.rows == 1 or v.cols == 1:
            return list(v)
        return list(v)  # shapes are checked by the caller
    if isinstance(v, AnswerList):
        return list(v.items)
    return None


# ---------------------------------------------------------------------------------------
def _exprs_equal(p: sympy.Expr, g: sympy.Expr, tol: float, huge: bool) -> bool:
    if huge:
        return p == g  # never evaluate a giant power
    if p == g:
        return True
    if p.is_Rational and g.is_Rational:
        return False
    if _not_finite(p) or _not_finite(g):
        return False  # oo == oo was caught above; oo vs anything else differs
    inexact = p.has(sympy.Float) or g.has(sympy.Float)
    rel = tol if inexact else _EXACT_REL
    symbols = sorted(p.free_symbols | g.free_symbols, key=lambda s: s.name)
    if not symbols:
        verdict = _close_at(p, g, {}, rel)
        if verdict is not None:
            return verdict
        return not inexact and _simplifies_to_zero(p - g)
    agree = 0
    for k in range(_SAMPLES):
        verdict = _close_at(p, g, _point(symbols, k), rel)
        if verdict is False:
            return False
        agree += verdict is True
    if agree >= 3:
        return True
    return not inexact and _simplifies_to_zero(p - g)


def _not_finite(x: sympy.Expr) -> bool:
    return x.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)


def _point(symbols: list, k: int) -> dict:
    return {s: sympy.Float(_POINTS[(k + 3 * j) % len(_POINTS)] + 0.0731 * j, 30)
            for j, s in enumerate(symbols)}


def _evaluate(x: sympy.Expr, point: dict) -> complex | None:
    try:
        v = complex(x.evalf(_EXACT_DIGITS, subs=point) if point else x.evalf(_EXACT_DIGITS))
    except _ERRORS as exc:  # the caller treats "cannot evaluate" as no evidence
        log.debug("cannot evaluate %s: %s: %s", x, type(exc).__name__, exc)
        return None
    if not (math.isfinite(v.real) and math.isfinite(v.imag)):
        return None
    return v


def _close_at(p: sympy.Expr, g: sympy.Expr, point: dict, rel: float) -> bool | None:
    """Do ``p`` and ``g`` agree at ``point`` within relative tolerance ``rel``?
    None when either cannot be evaluated there."""
    if rel <= _EXACT_REL:
        # exact: evaluate the difference itself, so that cancellation is done by
        # sympy's adaptive precision rather than lost in two rounded values
        try:
            d = p - g
        except _ERRORS as exc:
            log.debug("cannot subtract %s - %s: %s", p, g, exc)
            return None
        if d == 0:
            return True
        if not point and d.is_Rational:
            return False
        dv = _evaluate(d, point)
        gv = _evaluate(g, point)
        if dv is None or gv is None:
            return None
        return abs(dv) <= rel * max(1.0, abs(gv))
    pv, gv = _evaluate(p, point), _evaluate(g, point)
    if pv is None or gv is None:
        return None
    return abs(pv - gv) <= rel * max(abs(pv), abs(gv)) + 1e-12


def _simplifies_to_zero(d: Any) -> bool:
    """``simplify(d) == 0``, only for small expressions (simplify can take very long)."""
    try:
        if sympy.count_ops(d) > _SIMPLIFY_MAX_OPS:
            return False
        return sympy.simplify(d) == 0
    except _ERRORS as exc:  # not proven equal
        log.debug("simplify failed on %s: %s: %s", d, type(exc).__name__, exc)
        return False
