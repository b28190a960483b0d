"""Built-in verifier ``arith_steps``: checks every arithmetic claim in each step, exactly.

A process verifier that needs no model. The completion is cut into steps
(:func:`verirl.grading.steps.split_steps`); in each step every arithmetic claim is found and
checked with exact rational arithmetic (:class:`fractions.Fraction`, through the small
parser below: text is never handed to ``eval`` or ``sympify``). Step reward:

- every claim in the step holds -> ``correct`` (+1 by default);
- any claim is false -> ``wrong`` (-1);
- the step makes no checkable claim -> ``neutral`` (0).

What counts as a claim
----------------------
- A GSM8K calculator annotation ``<<48/2=24>>``: its content is checked as a chain
  (below). The annotation is then blanked out, so ``48/2 = <<48/2=24>>24`` also yields
  the visible claim ``48/2 = 24``.
- A chain ``e0 = e1 = e2 ...`` of expressions made of numbers (``1,234.5``, ``.5``,
  ``$3``, ``20%``, mixed numbers ``1 1/2`` and ``1 and 1/2``), ``+ - * / × ÷ · ^ **``,
  ``x``/``X`` between two operands (``0.2 x 50``; ``2x + 3`` is algebra, not a
  product), the LaTeX ``\\times \\cdot \\div``, parentheses, a unary minus written
  against its operand (``-3``), multiplication written ``2(3+4)`` with no space, and
  ``20% of 50`` (= 0.2 * 50). ``≈`` and ``\\approx`` may stand for ``=`` (see
  precision). Words and any other character end a chain, so ``1 hour = 60 minutes``
  is read as ``= 60`` and is no claim.
- The first expression of a chain is the longest tail of the text before ``=`` that
  parses (``Total: 5 + 3 = 8`` -> ``5 + 3``); the last is the longest head after it
  that parses (``= 8 apples`` -> ``8``). A side that is visibly a fragment of a longer
  expression makes no claim: a left side whose text starts with an operator
  (``60 students x 2/3 = 40``, ``S + 143 = 200``), or one glued to a word before it
  (``x-5 = 16``); a right side glued to a word after it (``= 3x``, ``= 5A/5``) or
  followed by an operator that does not parse on (``= 10 + x``). Only a list bullet
  (``- 3 + 5 = 8`` at the start of a line) or a bare ``(`` may be dropped in front. A
  bare number right after a word is a label, not a left side (``Week 2 = 35 + 35``).
- ``a / b/c`` is ambiguous in prose (``25 / 1/3 = 75``, yet ``500/ 1/10 = 50``): a
  claim false in the usual left-to-right reading holds if it holds with an unspaced
  ``b/c`` after a spaced ``/`` read as one fraction.
- Each ``=`` makes one claim ``left = right``. It is checked only if at least one side
  computes something (has an operator): ``50 = 10`` is usually two quantities whose
  units the words around them carried.
- Run-on chains, as people write them: ``3 * 4 = 12 + 2 = 14`` means ``3*4 = 12`` and
  then ``12 + 2 = 14``. A claim ``left = right`` that is false as written is accepted
  when another ``=`` follows and ``right`` starts with the number ``left`` equals.

Precision rule
--------------
A side that is a single number written with ``d`` decimals claims only ``d`` decimals:
with ``v`` the other side's exact value, ``u = 10**-d`` (``10**-d / 100`` for a
percentage) and ``w`` the written number, the claim holds when ``|v - w| <= u/2`` (``w``
is ``v`` rounded, half up or down) or ``w == trunc(v / u) * u`` (``w`` is ``v``
truncated toward zero). So ``10/3 = 3.33``, ``10/3 = 3.3``, ``2/3 = 0.67`` and
``2/3 = 0.66`` hold, ``10/3 = 3.34`` does not. Integers (``d = 0``) are exact:
``10/3 = 3`` is false, but ``10/3 ≈ 3`` holds (``≈`` applies the same rule at
``d = 0``). Everything else is exact equality of rationals.

A percentage ``p%`` is ``p/100``; since people also write percentage points
(``20/100 * 100 = 20%``, ``100% - 20% = 80``), a claim with a ``%`` in it also holds
if it holds with every ``p%`` read as ``p``.

Size guards
-----------
A number with more than ``max_digits`` digits, a power whose exponent is not an
integer of at most 1000 or whose result would pass 10,000 bits, any intermediate
value past 20,000 bits, or an expression of more than 200 tokens makes that claim
unchecked: it counts as no claim. A step longer than ``max_step_chars`` characters is
not scanned (neutral). Scanning is linear in the text; evaluation is bounded by
these caps, so no input hangs it. A claim that divides by zero is false.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Sequence

from verirl import ConfigError, Sample, Step, hookimpl, verifier
from verirl.grading.steps import check_split_mode, split_steps

_MAX_SEGMENT_TOKENS = 200
_MAX_POWER_EXPONENT = 1000
_MAX_POWER_BITS = 10_000
_MAX_VALUE_BITS = 20_000
_MAX_NESTING = 30
_HUNDREDTH = Fraction(1, 100)
_ONE = Fraction(1)

_ANNOTATION = re.compile(r"<<([^<>\n]{0,500})>>")
_TOKEN = re.compile(
    r"""
    (?P<time>\d{1,2}:\d\d(?::\d\d)?(?!\d))
    | (?P<num>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\d/])(?:\.\d+)?
              |\d+(?:\.\d+)?|\.\d+)(?P<pct>\s?%)?
    | (?P<latex>\\[A-Za-z]+)
    | (?P<word>[^\W\d]\w*)
    | (?P<op>\*\*|[-+*/^×÷·⋅−–])
    | (?P<rel>[=≈])
    | (?P<lpar>\()
    | (?P<rpar>\))
    | (?P<space>\s+)
    | (?P<dollar>\$)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# "–" (en dash) is the minus sign of much GSM8K text: "120 – 80 - 15".
_OP_ALIASES = {"×": "*", "·": "*", "⋅": "*", "÷": "/", "−": "-", "–": "-", "**": "^"}
_LATEX_OPS = {"\\times": "*", "\\cdot": "*", "\\div": "/"}
_LATEX_RELS = {"\\approx": "≈"}
_BULLETS = ("-", "+", "*")


class _TooLarge(Exception):
    """The claim is past a size guard: it is left unchecked."""


class _Undefined(Exception):
    """The expression divides by zero."""


@dataclass(frozen=True)
class _Tok:
    kind: str  # "num", "op", "(", ")", "=", "≈", "brk" (anything that ends a chain)
    text: str
    start: int
    end: int
    glued: bool  # no whitespace between the previous token and this one ("$" is ignored)
    line_start: bool  # the first token of its line
    value: Fraction | None = None  # a number as written (20% -> 20); None past max_digits
    decimals: int = 0
    percent: bool = False
    word: bool = False  # a "brk" made of letters/digits (a word, a variable)


@dataclass(frozen=True)
class Claim:
    """One claim found in a text: ``text[start:end]`` and its verdict.

    ``verdict`` is ``"right"``, ``"wrong"`` or ``"unchecked"`` (past a size guard);
    ``source`` is ``"annotation"`` or ``"inline"``.
    """

    start: int
    end: int
    verdict: str
    source: str


# --- lexing -----------------------------------------------------------------------


def _lex(text: str, offset: int, max_digits: int) -> list[_Tok]:
    toks: list[_Tok] = []
    glued = False  # the first token of a text follows nothing
    line_start = True
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "space":
            glued = False
            line_start = line_start or "\n" in m.group()
            continue
        if kind == "dollar":  # "$40", "= $ 40" and LaTeX "$...$" delimiters alike
            continue
        s, e, word = m.start() + offset, m.end() + offset, m.group()
        common = dict(glued=glued and bool(toks), line_start=line_start)
        if kind in ("num", "pct"):
            digits = re.sub(r"[, \u00a0\u202f]", "", m.group("num"))
            decimals = len(digits.split(".")[1]) if "." in digits else 0
            ndigits = sum(c.isdigit() for c in digits)
            value = Fraction(digits) if ndigits <= max_digits else None
            tok = _Tok("num", word, s, e, value=value, decimals=decimals,
                       percent=m.group("pct") is not None, **common)
        elif kind == "time":  # "6:00 + 48": clock arithmetic is not arithmetic on numbers
            tok = _Tok("brk", word, s, e, word=True, **common)
        elif kind == "latex":
            if word in _LATEX_OPS:
                tok = _Tok("op", _LATEX_OPS[word], s, e, **common)
            elif word in _LATEX_RELS:
                tok = _Tok(_LATEX_RELS[word], word, s, e, **common)
            else:
                tok = _Tok("brk", word, s, e, word=True, **common)
        elif kind == "word":
            if word in ("x", "X"):
                tok = _Tok("op", "x", s, e, **common)  # decided below, by its neighbours
            elif word == "of" and toks and toks[-1].kind == "num" and toks[-1].percent:
                tok = _Tok("op", "*", s, e, **common)
            else:
                tok = _Tok("brk", word, s, e, word=True, **common)
        elif kind == "op":
            tok = _Tok("op", _OP_ALIASES.get(word, word), s, e, **common)
        elif kind == "rel":
            tok = _Tok(word, word, s, e, **common)
        elif kind == "lpar":
            tok = _Tok("(", word, s, e, **common)
        elif kind == "rpar":
            tok = _Tok(")", word, s, e, **common)
        else:
            tok = _Tok("brk", word, s, e, **common)
        toks.append(tok)
        glued = True
        line_start = False
    return _times_signs(_mixed_numbers(toks))


def _is_int(tok: _Tok) -> bool:
    return tok.kind == "num" and tok.value is not None and tok.decimals == 0 and not tok.percent


def _mixed_numbers(toks: list[_Tok]) -> list[_Tok]:
    """Merge ``a b/c`` and ``a and b/c`` (integers, ``b < c``, ``/`` unspaced) into one number."""
    out: list[_Tok] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        j = i + 2 if i + 1 < len(toks) and toks[i + 1].text == "and" else i + 1
        if (
            _is_int(t)
            and j + 2 < len(toks)
            and _is_int(toks[j]) and not toks[j].glued
            and toks[j + 1].kind == "op" and toks[j + 1].text == "/" and toks[j + 1].glued
            and _is_int(toks[j + 2]) and toks[j + 2].glued
            and 0 < toks[j].value < toks[j + 2].value
        ):
            value = t.value + toks[j].value / toks[j + 2].value
            out.append(replace(t, text=f"{t.text} {toks[j].text}/{toks[j + 2].text}",
                               end=toks[j + 2].end, value=value))
            i = j + 3
        else:
            out.append(t)
            i += 1
    return out


def _times_signs(toks: list[_Tok]) -> list[_Tok]:
    """``x`` multiplies only when a number or ``(`` follows it (``0.2 x 50``); in
    ``2x + 3`` or ``x = 5`` it is a variable, which ends the chain."""
    out = []
    for i, t in enumerate(toks):
        if t.kind == "op" and t.text == "x":
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            if nxt is not None and nxt.kind in ("num", "("):
                t = replace(t, text="*")
            else:
                t = replace(t, kind="brk", word=True)
        out.append(t)
    return out


# --- parsing: tokens -> a tree: ("num", tok) | ("neg", node) | (op, left, right) -------


class _Parser:
    """Recursive descent over one segment (the tokens between two ``=``).

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor | <unspaced> "(" expr ")")*
    factor := "-" factor | "+" factor | power      (not "+" first; "-" first only unspaced)
    power  := atom ("^" factor)?
    atom   := NUM | "(" expr ")"
    """

    def __init__(self, toks: Sequence[_Tok], tight: bool):
        self.toks = toks
        self.tight = tight  # read "25 / 1/3" as 25 / (1/3)
        self.i = 0
        self.depth = 0  # nesting of parentheses, signs and powers: bounds the recursion

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def expr(self):
        node = self.term()
        while (t := self.peek()) is not None and t.kind == "op" and t.text in "+-":
            self.i += 1
            node = (t.text, node, self.term())
        return node

    def term(self):
        node = self.factor()
        while (t := self.peek()) is not None:
            if t.kind == "op" and t.text in "*/":
                self.i += 1
                if t.text == "/" and self.tight and (frac := self.unspaced_fraction(t)) is not None:
                    node = ("/", node, frac)
                else:
                    node = (t.text, node, self.factor())
            elif t.kind == "(" and t.glued and self.toks[self.i - 1].kind in ("num", ")"):
                # "2(3+4)": an implicit product only when unspaced, so that in
                # "= 20 (5 x 4)" the parenthesis stays a remark.
                node = ("*", node, self.atom())
            else:
                break
        return node

    def unspaced_fraction(self, slash: _Tok):
        """In the tight reading, ``25 / 1/3`` and ``3/ 1/4`` divide by the fraction: a
        ``b/c`` written without spaces, after a ``/`` with a space on either side, binds
        tighter than that ``/``."""
        toks, i = self.toks, self.i
        if i + 2 < len(toks) and (not slash.glued or not toks[i].glued):
            b, bar, c = toks[i], toks[i + 1], toks[i + 2]
            if (_is_int(b) and bar.kind == "op" and bar.text == "/" and bar.glued
                    and _is_int(c) and c.glued):
                nxt = toks[i + 3] if i + 3 < len(toks) else None
                if nxt is None or not (nxt.glued and nxt.kind in ("op", "(")):
                    self.i += 3
                    return ("/", ("num", b), ("num", c))
        return None

    def factor(self):
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise SyntaxError("nested too deeply")
        try:
            return self._factor()
        finally:
            self.depth -= 1

    def _factor(self):
        t = self.peek()
        if t is not None and t.kind == "op" and t.text in "+-":
            if self.i == 0:
                nxt = self.toks[1] if len(self.toks) > 1 else None
                # A segment opening with "+" or a spaced "-" is a fragment or a bullet.
                if t.text == "+" or nxt is None or not nxt.glued:
                    raise SyntaxError("sign opening a segment")
            self.i += 1
            inner = self.factor()
            return ("neg", inner) if t.text == "-" else inner
        return self.power()

    def power(self):
        node = self.atom()
        t = self.peek()
        if t is not None and t.kind == "op" and t.text == "^":
            self.i += 1
            node = ("^", node, self.factor())
        return node

    def atom(self):
        t = self.peek()
        if t is None:
            raise SyntaxError("expression ends early")
        if t.kind == "num":
            self.i += 1
            return ("num", t)
        if t.kind == "(":
            self.i += 1
            self.depth += 1
            if self.depth > _MAX_NESTING:
                raise SyntaxError("nested too deeply")
            node = self.expr()
            self.depth -= 1
            close = self.peek()
            if close is None or close.kind != ")":
                raise SyntaxError("unclosed parenthesis")
            self.i += 1
            return node
        raise SyntaxError(f"unexpected {t.text!r}")


def _parse_full(toks: Sequence[_Tok], tight: bool = False):
    if not toks or len(toks) > _MAX_SEGMENT_TOKENS:
        return None
    p = _Parser(toks, tight)
    try:
        node = p.expr()
    except SyntaxError:
        return None
    return node if p.i == len(toks) else None


def _parse_prefix(toks: Sequence[_Tok], tight: bool):
    """The longest head of ``toks`` that is an expression, as ``(node, length)``."""
    for n in range(min(len(toks), _MAX_SEGMENT_TOKENS), 0, -1):
        node = _parse_full(toks[:n], tight)
        if node is not None:
            return node, n
    return None, 0


def _parse_suffix(toks: Sequence[_Tok], tight: bool):
    """The longest tail of ``toks`` that is an expression, as ``(node, start index)``."""
    for i in range(max(0, len(toks) - _MAX_SEGMENT_TOKENS), len(toks)):
        node = _parse_full(toks[i:], tight)
        if node is not None:
            return node, i
    return None, len(toks)


# --- evaluation ---------------------------------------------------------------------


def _check_size(v: Fraction) -> Fraction:
    if v.numerator.bit_length() > _MAX_VALUE_BITS or v.denominator.bit_length() > _MAX_VALUE_BITS:
        raise _TooLarge("intermediate value too large")
    return v


def _eval(node, pct: Fraction) -> Fraction:
    """The exact value of a tree; a percentage ``p%`` is worth ``p * pct``."""
    tag = node[0]
    if tag == "num":
        tok = node[1]
        if tok.value is None:
            raise _TooLarge(f"number {tok.text!r} has too many digits")
        return tok.value * pct if tok.percent else tok.value
    if tag == "neg":
        return -_eval(node[1], pct)
    a, b = _eval(node[1], pct), _eval(node[2], pct)
    if tag == "+":
        return _check_size(a + b)
    if tag == "-":
        return _check_size(a - b)
    if tag == "*":
        return _check_size(a * b)
    if tag == "/":
        if b == 0:
            raise _Undefined("division by zero")
        return _check_size(a / b)
    # "^": only integer exponents keep the result rational; the size is bounded first.
    if b.denominator != 1 or abs(b.numerator) > _MAX_POWER_EXPONENT:
        raise _TooLarge("exponent not a small integer")
    bits = max(a.numerator.bit_length(), a.denominator.bit_length())
    if bits * abs(b.numerator) > _MAX_POWER_BITS:
        raise _TooLarge("power too large")
    if a == 0 and b < 0:
        raise _Undefined("zero to a negative power")
    return a ** int(b)


def _has_op(node) -> bool:
    return node[0] not in ("num", "neg") or (node[0] == "neg" and _has_op(node[1]))


def _has_percent(node) -> bool:
    if node[0] == "num":
        return node[1].percent
    return any(_has_percent(child) for child in node[1:])


def _literal(node) -> _Tok | None:
    """The number token if ``node`` is a single (possibly negated) number."""
    while node[0] == "neg":
        node = node[1]
    return node[1] if node[0] == "num" else None


def _first_literal(node) -> _Tok:
    """The left-most number of an expression (the ``12`` of ``12 + 2``)."""
    while node[0] != "num":
        node = node[1]
    return node[1]


def _percent_readings(*nodes) -> tuple[Fraction, ...]:
    # "p%" means p/100 ("50% * 40 = 20"), but people also write percentage points
    # ("20/100 * 100 = 20%", "100% - 20% = 80"): a claim holds under either reading.
    return (_HUNDREDTH, _ONE) if any(_has_percent(n) for n in nodes) else (_HUNDREDTH,)


def _matches(value: Fraction, written: Fraction, tok: _Tok | None, approx: bool, pct: Fraction) -> bool:
    """Does the number ``written`` (token ``tok``, if that side is a single number)
    state ``value``? Exactly, unless ``tok`` has ``d`` decimals (or the relation is
    ``≈``): then ``value`` rounded (half up or down) or truncated to ``d`` decimals."""
    if value == written:
        return True
    if tok is None or (tok.decimals == 0 and not approx):
        return False
    unit = Fraction(1, 10**tok.decimals) * (pct if tok.percent else 1)
    if abs(value - written) * 2 <= unit:
        return True
    return Fraction(int(value / unit)) * unit == written  # int() truncates toward zero


def _pair_verdict(left, right, approx: bool) -> str:
    """``"right"``/``"wrong"``/``"skip"`` (no operator)/``"unchecked"`` (too large)."""
    if not (_has_op(left) or _has_op(right)):
        return "skip"
    lit_l, lit_r = _literal(left), _literal(right)
    for pct in _percent_readings(left, right):
        try:
            a, b = _eval(left, pct), _eval(right, pct)
        except _TooLarge:
            return "unchecked"
        except _Undefined:
            return "wrong"
        # The single number, if one side is one, is the side that may be rounded.
        if lit_r is None and lit_l is not None:
            a, b, lit = b, a, lit_l
        else:
            lit = lit_r
        if _matches(a, b, lit, approx, pct):
            return "right"
    return "wrong"


def _run_on(left, right) -> bool:
    """``left = right = ...`` read as a run-on: ``right`` starts with ``left``'s value."""
    first = _first_literal(right)
    if first.value is None:
        return False
    for pct in _percent_readings(left, ("num", first)):
        try:
            a = _eval(left, pct)
        except (_TooLarge, _Undefined):
            return False
        if _matches(a, _eval(("num", first), pct), first, False, pct):
            return True
    return False


# --- finding claims ------------------------------------------------------------------


def _left_side(seg: list[_Tok], before: _Tok | None, tight: bool):
    """The expression before an ``=``: ``(node, tokens)``, or ``(None, [])`` when the
    text there is a fragment of something longer."""
    node, i = _parse_suffix(seg, tight)
    if node is None:
        return None, []
    cut, toks = seg[:i], seg[i:]
    bullet = len(cut) == 1 and cut[0].text in _BULLETS and cut[0].line_start
    if cut and not (bullet or all(t.kind == "(" for t in cut)):
        # "students x 2/3 =", "$100+($100*(10/100) =": the tail of a longer expression;
        # "1/2 (68) + 10 =": an implicit product we do not read.
        return None, []
    first = seg[0]
    if before is not None and before.word and first.glued:
        return None, []  # "x-5", "because1+1": the expression goes on into the word
    if before is not None and before.word and not _has_op(node):
        return None, []  # "Week 2 = 35 + 35", "Remaining 10 = ...": a label, not a value
    return node, toks


def _right_side(seg: list[_Tok], after: _Tok | None, whole, tight: bool):
    """The expression after an ``=``: ``(node, tokens)`` or ``(None, [])``."""
    if whole is not None:
        if after is not None and after.word and after.glued:
            return None, []  # "= 5A/5", "= 40x": a coefficient, not a value
        return whole, seg
    node, n = _parse_prefix(seg, tight)
    if node is None or seg[n].kind == "op":
        return None, []  # "= 10 + x ...": the expression goes on past what we can read
    return node, seg[:n]


def _chain_claims(run: list[_Tok], before: _Tok | None, after: _Tok | None, source: str) -> list[Claim]:
    """Claims of one run of tokens with no break between them.

    ``a / b/c`` is ambiguous in prose (``25 / 1/3 = 75`` but also ``500/ 1/10 = 50``):
    a claim false in the usual reading is tried again in the tight one (``a / (b/c)``)
    and holds if it holds there.
    """
    usual = _read_chain(run, before, after, source, tight=False)
    if not any(c.verdict == "wrong" for c in usual):
        return usual
    holds = {
        (c.start, c.end)
        for c in _read_chain(run, before, after, source, tight=True)
        if c.verdict == "right"
    }
    return [
        replace(c, verdict="right") if c.verdict == "wrong" and (c.start, c.end) in holds else c
        for c in usual
    ]


def _read_chain(
    run: list[_Tok], before: _Tok | None, after: _Tok | None, source: str, tight: bool
) -> list[Claim]:
    """The claims of a run in one reading (``tight``: see :meth:`_Parser.unspaced_fraction`)."""
    segs: list[list[_Tok]] = [[]]
    rels: list[str] = []
    for t in run:
        if t.kind in ("=", "≈"):
            rels.append(t.kind)
            segs.append([])
        else:
            segs[-1].append(t)
    claims: list[Claim] = []
    left, left_toks = _left_side(segs[0], before, tight)
    for k in range(1, len(segs)):
        seg = segs[k]
        last = k == len(segs) - 1
        whole = _parse_full(seg, tight)
        right, right_toks = _right_side(seg, after if last else None, whole, tight) if seg else (None, [])
        if left is not None and right is not None:
            verdict = _pair_verdict(left, right, rels[k - 1] == "≈")
            if verdict == "wrong" and whole is not None and not last and _run_on(left, right):
                verdict = "right"
            if verdict != "skip":
                claims.append(Claim(left_toks[0].start, right_toks[-1].end, verdict, source))
        if whole is not None:
            left, left_toks = whole, seg
        else:
            # "= (1/2) 278 + 11 =": what follows the right side is an implicit product
            # or a remark, not the start of a claim.
            left, left_toks = None, []
    return claims


def _claims_in(toks: list[_Tok], source: str) -> list[Claim]:
    claims: list[Claim] = []
    start = 0
    for i in range(len(toks) + 1):
        if i == len(toks) or toks[i].kind == "brk":
            run = toks[start:i]
            if any(t.kind in ("=", "≈") for t in run):
                before = toks[start - 1] if start > 0 else None
                after = toks[i] if i < len(toks) else None
                claims.extend(_chain_claims(run, before, after, source))
            start = i + 1
    return claims


def find_claims(text: str, *, max_digits: int = 30) -> list[Claim]:
    """Every arithmetic claim in ``text`` (annotations first, then inline), checked.

    Spans index into ``text``. See the module doc for what counts as a claim and when
    one holds.
    """
    claims: list[Claim] = []
    blanked = list(text)
    for m in _ANNOTATION.finditer(text):
        claims.extend(_claims_in(_lex(m.group(1), m.start(1), max_digits), "annotation"))
        blanked[m.start():m.end()] = " " * (m.end() - m.start())
    claims.extend(_claims_in(_lex("".join(blanked), 0, max_digits), "inline"))
    return claims


def step_verdicts(
    text: str, *, split: str = "lines", max_digits: int = 30, max_step_chars: int = 5000
) -> list[tuple[int, int, str]]:
    """Per step of ``text``: ``(char_start, char_end, verdict)`` with verdict
    ``"correct"`` (all claims right), ``"wrong"`` (any claim wrong) or ``"neutral"``
    (no checkable claim, or a step longer than ``max_step_chars``)."""
    out = []
    for start, end in split_steps(text, split):
        verdict = "neutral"
        if end - start <= max_step_chars:
            verdicts = {c.verdict for c in find_claims(text[start:end], max_digits=max_digits)}
            if "wrong" in verdicts:
                verdict = "wrong"
            elif "right" in verdicts:
                verdict = "correct"
        out.append((start, end, verdict))
    return out


@verifier("arith_steps", kind="process")
class ArithSteps:
    """Per step: +1 if every arithmetic claim checks out exactly, -1 if one is false, 0 if none."""

    def __init__(
        self,
        *,
        split: str = "lines",
        correct: float = 1.0,
        wrong: float = -1.0,
        neutral: float = 0.0,
        max_digits: int = 30,
        max_step_chars: int = 5000,
    ):
        check_split_mode(split, "arith_steps")
        for name, value in (("max_digits", max_digits), ("max_step_chars", max_step_chars)):
            if value < 1:
                raise ConfigError(
                    f"verifier 'arith_steps' param {name!r} must be a positive int, got {value}"
                )
        self.split = split
        self.rewards = {"correct": correct, "wrong": wrong, "neutral": neutral}
        self.max_digits = max_digits
        self.max_step_chars = max_step_chars

    def __call__(self, samples: Sequence[Sample]) -> list[list[Step]]:
        return [
            [
                Step(s, e, self.rewards[v])
                for s, e, v in step_verdicts(
                    sample.completion,
                    split=self.split,
                    max_digits=self.max_digits,
                    max_step_chars=self.max_step_chars,
                )
            ]
            for sample in samples
        ]


@hookimpl
def verirl_register_verifiers():
    return [ArithSteps]
