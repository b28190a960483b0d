"""Equivalence of two parsed answers (:mod:`verirl.grading.parse`) under a grading policy.

``equivalent(pred, gold, policy)`` decides, by the kind of the answers (the rules are
those of ``verirl/grading/README.md``):

- numbers and expressions: equal when ``pred - gold`` is exactly 0, a decimal being the
  exact value it writes (``0.5`` is 1/2). The difference is evaluated to 50 digits and
  must vanish to 30 of them (``simplify`` is the fallback where it cannot be evaluated).
  Otherwise a decimal may still stand for an exact value by ``policy.numeric`` (rule N):
  ``"digits"``: a single decimal that agrees with an exact non-integer value at every
  digit it gives and gives at least ``policy.min_digits`` significant digits;
  ``"rel_tol"``: ``|p - g| <= rel_tol * max(|p|, |g|)``; ``"exact"``: never.
  Expressions with variables are compared at five fixed sample points (a random-point
  identity test), and with ``simplify`` where the points cannot be evaluated;
- equations: ``x = 3`` matches ``3``, and so does ``(p, q) = (3, 2)`` / ``AB = 4``
  (names on one side, a value on the other); ``2 + 3 = 5`` is its last value; two
  equations match when ``lhs - rhs`` of one is a non-zero constant multiple of the other's;
- linear inequalities in one variable are read as intervals (``x > 5``, ``-x < -5`` and
  ``5 < x`` are ``(5, oo)``);
- tuples/points and vectors: same length, element by element, in order; never a set;
- intervals: equal endpoints and equal open/closed ends; unions: the same intervals in
  any order; a 2-tuple ``(a, b)`` matches the open interval ``(a, b)``;
- sets, lists of answers (roots) and ``\\pm`` answers: the same elements in any order;
- matrices: same shape, element by element;
- ratios: proportional (``2:4`` is ``1:2``); a two-term ratio ``a:b`` also matches ``a/b``;
- multiple-choice letters and word answers: the same letter / the same words;
- units (rule U): with ``policy.units == "match"``, answers that both name units must
  name the same ones;
- the form of a number (rule E): with ``policy.unevaluated == "refuse"``, a gold answer
  written as a number needs a prediction written as one.

Values marked ``huge`` (an unevaluated giant power) are compared structurally only.
"""

from __future__ import annotations

import logging
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import sympy

from verirl.grading.parse import AnswerList, Choice, Parsed, Ratio, Text, is_name
from verirl.grading.policy import Policy

log = logging.getLogger(__name__)

_EXACT_DIGITS = 50
_EXACT_REL = 1e-30  # exact values must agree to 30 digits of their 50
_SIMPLIFY_MAX_OPS = 300  # larger differences are not handed to simplify (time)
# sample points for identity tests: irrational-looking, both signs, away from 0 and 1
_POINTS = (0.5377, 1.8339, -2.2588, 0.8622, 0.3188, -1.3077, 2.7694, -0.4336, 3.5784, 2.6840)
_SAMPLES = 5
_ERRORS = (TypeError, ValueError, ArithmeticError, AttributeError, NotImplementedError,
           RecursionError, sympy.SympifyError)


def equivalent(pred: Parsed, gold: Parsed, policy: Policy) -> bool:
    """Is ``pred`` the same answer as ``gold`` under ``policy``? (any reading of each;
    see the module doc)"""
    if policy.units == "match" and pred.units and gold.units and pred.units != gold.units:
        return False
    if policy.unevaluated == "refuse" and gold.numeral and not pred.numeral \
            and all(isinstance(g, sympy.Number) for g in gold.readings):
        return False  # rule E: a computation where a number is asked for
    huge = pred.huge or gold.huge
    return any(_equal(p, g, policy, huge) for g in gold.readings for p in pred.readings)


# ---------------------------------------------------------------------------------------
def _equal(p: Any, g: Any, pol: Policy, huge: bool) -> bool:
    if p == g:  # structurally identical (also the only test for giant or infinite values)
        return True
    if isinstance(p, Choice) or isinstance(g, Choice):
        lp, lg = _letter(p), _letter(g)
        return lp is not None and lp == lg
    if isinstance(p, Text) or isinstance(g, Text):
        return isinstance(p, Text) and isinstance(g, Text) and p.words == g.words
    if isinstance(p, Ratio) or isinstance(g, Ratio):
        return _ratios_equal(p, g, pol, huge)
    ep, eg = _unordered(p), _unordered(g)
    if ep is not None or eg is not None:
        return _collections_equal(p, g, ep, eg, pol, huge)
    if isinstance(p, sympy.Eq) or isinstance(g, sympy.Eq):
        if isinstance(p, sympy.Eq) and isinstance(g, sympy.Eq) and _equations_equal(p, g, pol, huge):
            return True
        up, ug = _unwrap_eq(p), _unwrap_eq(g)
        if up is p and ug is g:
            return False
        return _equal(up, ug, pol, huge)
    p, g = _as_set(p), _as_set(g)
    if isinstance(p, sympy.Set) or isinstance(g, sympy.Set):
        return _sets_equal(p, g, pol, huge)
    if isinstance(p, (sympy.Tuple, sympy.MatrixBase)) or isinstance(g, (sympy.Tuple, sympy.MatrixBase)):
        sp, sg = _sequence(p), _sequence(g)
        if sp is None or sg is None or len(sp) != len(sg):
            return False
        if isinstance(p, sympy.MatrixBase) and isinstance(g, sympy.MatrixBase) and p.shape != g.shape:
            return False
        return all(_equal(a, b, pol, huge) for a, b in zip(sp, sg))
    if isinstance(p, sympy.Rel) or isinstance(g, sympy.Rel):
        return p == g
    if isinstance(p, sympy.Expr) and isinstance(g, sympy.Expr):
        return _exprs_equal(p, g, pol, huge)
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


def _collections_equal(p: Any, g: Any, ep: list | None, eg: list | None, pol: Policy,
                       huge: bool) -> bool:
    if ep is None or eg is None:  # a collection against one value
        coll, other, other_is_p = (eg, p, True) if ep is None else (ep, g, False)
        seq = _sequence(other)
        if seq is not None and (isinstance(p, AnswerList) or isinstance(g, AnswerList)):
            # "1, 2, 3" against (1, 2, 3): a list written without brackets, in order
            return len(seq) == len(coll) and all(
                _equal(a, b, pol, huge) for a, b in (zip(seq, coll) if other_is_p else zip(coll, seq)))
        if seq is not None:  # a set against a tuple: the tuple's order is not given
            return False
        coll = _dedupe(coll, pol, huge)  # "x = 2 or x = 2" is the one answer 2
        if len(coll) != 1:
            return False
        return _equal(other, coll[0], pol, huge) if other_is_p else _equal(coll[0], other, pol, huge)
    return _match_unordered(ep, eg, pol, huge)


def _match_unordered(ps: list, gs: list, pol: Policy, huge: bool) -> bool:
    """Every element pairs with exactly one equivalent element of the other side."""
    ps, gs = _dedupe(ps, pol, huge), _dedupe(gs, pol, huge)
    if len(ps) != len(gs):
        return False
    used = [False] * len(gs)
    for a in ps:
        for j, b in enumerate(gs):
            if not used[j] and _equal(a, b, pol, huge):
                used[j] = True
                break
        else:
            return False
    return True


def _dedupe(items: list, pol: Policy, huge: bool) -> list:
    out: list = []
    for x in items:
        if not any(_equal(x, y, pol, huge) for y in out):
            out.append(x)
    return out


def _unwrap_eq(v: Any) -> Any:
    """The value an equation gives: ``x = 3`` -> 3 (the side that is not a lone
    variable), ``(p, q) = (3, 2)`` / ``AB = 4`` -> the value beside the names,
    ``2 + 3 = 5`` -> 5 (the last value); other values unchanged."""
    if isinstance(v, sympy.Eq):
        lhs, rhs = v.lhs, v.rhs
        if isinstance(lhs, sympy.Symbol) and not isinstance(rhs, sympy.Symbol):
            return rhs
        if isinstance(rhs, sympy.Symbol) and not isinstance(lhs, sympy.Symbol):
            return lhs
        lc, rc = not _free(lhs), not _free(rhs)
        if rc and (lc or is_name(lhs)):
            return rhs
        if lc and is_name(rhs):
            return lhs
    return v


def _free(v: Any) -> bool:
    return bool(getattr(v, "free_symbols", True))


def _ratios_equal(p: Any, g: Any, pol: Policy, huge: bool) -> bool:
    """Ratios in the same proportion (all terms non-zero), or with equal terms; a
    two-term ratio against a number is its quotient."""
    if not (isinstance(p, Ratio) and isinstance(g, Ratio)):
        r, other = (p, g) if isinstance(p, Ratio) else (g, p)
        if len(r.terms) != 2 or not isinstance(other, sympy.Expr) or r.terms[1].is_zero is not False:
            return False
        quotient = r.terms[0] / r.terms[1]
        return _equal(quotient, other, pol, huge) if r is p else _equal(other, quotient, pol, huge)
    if len(p.terms) != len(g.terms):
        return False
    if all(t.is_zero is False for t in p.terms + g.terms):
        return all(_equal(a / p.terms[0], b / g.terms[0], pol, huge) for a, b in zip(p.terms, g.terms))
    return all(_equal(a, b, pol, huge) for a, b in zip(p.terms, g.terms))


def _equations_equal(p: sympy.Eq, g: sympy.Eq, pol: Policy, huge: bool) -> bool:
    """``l1 = r1`` and ``l2 = r2`` are the same equation when ``l1 - r1 = c (l2 - r2)``
    for a constant ``c != 0`` (checked at sample points)."""
    if not all(isinstance(s, sympy.Expr) for s in (p.lhs, p.rhs, g.lhs, g.rhs)):
        return p == g
    if huge:
        return p == g
    dp, dg = p.lhs - p.rhs, g.lhs - g.rhs
    symbols = sorted(dp.free_symbols | dg.free_symbols, key=lambda s: s.name)
    if not symbols:
        return _exprs_equal(p.lhs, g.lhs, pol, huge) and _exprs_equal(p.rhs, g.rhs, pol, huge)
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


def _solved(v: Any) -> Any:
    """A linear inequality in one variable with the variable alone on the left:
    ``-x > -1`` -> ``x < 1``, ``5 >= x`` -> ``x <= 5``; other values unchanged."""
    if not (isinstance(v.lhs, sympy.Expr) and isinstance(v.rhs, sympy.Expr)):
        return v
    try:
        d = sympy.expand(v.lhs - v.rhs)
        symbols = d.free_symbols
        if len(symbols) != 1:
            return v
        (x,) = symbols
        a = d.coeff(x, 1)
        c = d - a * x
        if a.free_symbols or c.free_symbols or not a.is_nonzero or not a.is_real:
            return v
        flip = bool(a.is_negative)
    except _ERRORS as exc:  # not a linear inequality
        log.debug("inequality %s not solved: %s", v, exc)
        return v
    rel = type(v)
    if flip:
        rel = {sympy.Lt: sympy.Gt, sympy.Gt: sympy.Lt, sympy.Le: sympy.Ge, sympy.Ge: sympy.Le}[rel]
    return rel(x, -c / a, evaluate=False)


def _as_set(v: Any) -> Any:
    """An inequality in one variable as an interval (``x > 5`` -> ``(5, oo)``)."""
    if isinstance(v, (sympy.Lt, sympy.Le, sympy.Gt, sympy.Ge)):
        lhs, rhs = v.lhs, v.rhs
        if isinstance(rhs, sympy.Symbol) and not isinstance(lhs, sympy.Symbol):
            v = v.reversed
            lhs, rhs = v.lhs, v.rhs
        if not isinstance(lhs, sympy.Symbol):
            v = _solved(v)
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


def _sets_equal(p: Any, g: Any, pol: Policy, huge: bool) -> bool:
    if p is sympy.S.EmptySet or g is sympy.S.EmptySet:
        return p is g
    ip, ig = _intervals(p), _intervals(g)
    if ip is None or ig is None or len(ip) != len(ig):
        return p == g
    used = [False] * len(ig)
    for a in ip:
        for j, b in enumerate(ig):
            if not used[j] and _intervals_equal(a, b, pol, huge):
                used[j] = True
                break
        else:
            return False
    return True


def _ends(iv: Any) -> tuple:
    if isinstance(iv, tuple):
        return iv[1], iv[2], True, True
    return iv.start, iv.end, bool(iv.left_open), bool(iv.right_open)


def _intervals_equal(a: Any, b: Any, pol: Policy, huge: bool) -> bool:
    lo1, hi1, lo1_open, hi1_open = _ends(a)
    lo2, hi2, lo2_open, hi2_open = _ends(b)
    if (lo1_open, hi1_open) != (lo2_open, hi2_open):  # sympy keeps infinite ends open
        return False
    return _equal(lo1, lo2, pol, huge) and _equal(hi1, hi2, pol, huge)


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
def _exprs_equal(p: sympy.Expr, g: sympy.Expr, pol: Policy, huge: bool) -> bool:
    if huge:
        return p == g  # never evaluate a giant power
    if p == g:
        return True
    if _not_finite(p) or _not_finite(g):
        return False  # oo == oo was caught above; oo vs anything else differs
    decimal = p.has(sympy.Float) or g.has(sympy.Float)
    pe, ge = (_exact(p), _exact(g)) if decimal else (p, g)
    if _same_value(pe, ge, _EXACT_REL):
        return True
    if not decimal or pol.numeric == "exact":
        return False
    if pol.numeric == "digits":  # rule N: a decimal standing for an exact value
        return _digits_agree(p, g, ge, pol.min_digits) or _digits_agree(g, p, pe, pol.min_digits)
    return _same_value(p, g, pol.rel_tol)


def _same_value(p: sympy.Expr, g: sympy.Expr, rel: float) -> bool:
    """Equal values: exactly (``rel = _EXACT_REL``: the difference vanishes to 30 of 50
    digits, then ``simplify``) or within a relative tolerance ``rel``; with variables,
    at sample points."""
    if p == g:
        return True
    exact = rel <= _EXACT_REL
    if exact and p.is_Rational and g.is_Rational:
        return False
    symbols = sorted(p.free_symbols | g.free_symbols, key=lambda s: s.name)
    if not symbols:
        verdict = _close_at(p, g, {}, rel)
        if verdict is not None:
            return verdict
        return exact and _simplifies_to_zero(p - g)
    agree = 0
    for k in range(_SAMPLES):
        verdict = _close_at(p, g, _point(symbols, k), rel)
        if verdict is False:
            return False
        agree += verdict is True
    if agree >= 3:
        return True
    return exact and _simplifies_to_zero(p - g)


def _decimal(f: sympy.Float) -> Decimal:
    """The decimal a Float was written as (its printed digits, trailing zeros dropped)."""
    return Decimal(str(f)).normalize()


def _exact(v: sympy.Expr) -> sympy.Expr:
    """``v`` with every decimal replaced by the exact rational it writes (0.1 -> 1/10)."""
    swaps = {}
    for f in v.atoms(sympy.Float):
        try:
            fr = Fraction(_decimal(f))
        except (ArithmeticError, ValueError) as exc:  # not a finite decimal: keep it
            log.debug("float %s has no exact decimal: %s", f, exc)
            continue
        swaps[f] = sympy.Rational(fr.numerator, fr.denominator)
    return v.xreplace(swaps) if swaps else v


def _digits_agree(d: sympy.Expr, other: sympy.Expr, other_exact: sympy.Expr, min_digits: int) -> bool:
    """Rule N (``numeric="digits"``): is ``d`` one decimal that stands for the exact
    non-integer number ``other``: at least ``min_digits`` significant digits, each of
    them ``other``'s (its last one truncated or rounded), or, from 15 digits on, exactly
    the shortest printed form of the double nearest ``other``?"""
    if not d.is_Float or other.has(sympy.Float) or other.free_symbols:
        return False
    x = other_exact
    if x.is_integer or x.is_real is False or not x.is_number:
        return False  # a decimal never stands for an integer (6.0000001 is not 6)
    try:
        dec = _decimal(d)
        sign, digits, exp = dec.as_tuple()
        if not isinstance(exp, int) or exp >= 0 or len(digits) < min_digits:
            return False
        k = -exp
        written = int("".join(map(str, digits)))
        approx = complex(sympy.N(x, 30))
        if approx.imag != 0 or approx.real == 0 or (approx.real < 0) != bool(sign):
            return False
        if x.is_Rational:
            num, den = abs(x.p) * 10**k, x.q
            truncated, rounded = num // den, (2 * num + den) // (2 * den)
        else:
            scaled = sympy.N(abs(x) * sympy.Integer(10) ** k,
                             k + max(0, int(math.log10(abs(approx.real)) + 1)) + 20)
            truncated = int(scaled)
            rounded = int(scaled + sympy.Rational(1, 2))
        if written in (truncated, rounded):
            return True
        # a printed double (Python's shortest repr): agrees with the value to 15-17 digits
        return len(digits) >= 15 and dec == Decimal(repr(float(approx.real))).normalize()
    except _ERRORS + (ArithmeticError, OverflowError) as exc:
        log.debug("digits of %s against %s not compared: %s", d, other, exc)
        return False


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
