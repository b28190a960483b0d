"""A safe parser for final answers written in LaTeX or plain math.

``parse_answer(text)`` turns an answer string into a :class:`Parsed` value built
directly with sympy constructors (``Integer``, ``Rational``, ``Float``, ``Add``, ``Mul``,
``Pow``, ``Interval``, ``FiniteSet``, ``ImmutableMatrix``, ``Eq`` ...) by a tokenizer and a
recursive-descent (Pratt) parser. No string ever reaches ``eval``, ``exec``,
``sympify`` or ``parse_expr``: model output is untrusted.

What it reads: integers (``10,080``, ``10,\\!080``), decimals, ``a/b``, ``\\frac``
(``\\dfrac``, ``\\tfrac``, ``\\frac12``), mixed numbers (``2\\frac{1}{2}``, ``2 1/2``),
percentages (read by the policy's percent mode), currency, units (left out of the value,
recorded in ``Parsed.units``), scientific notation (``1.5e3``, ``1.5\\times10^{3}``),
``^``/``**``, ``\\sqrt{}``, ``\\sqrt[n]{}``, constants, functions, implicit
multiplication, ``\\infty``, degrees (radians inside trigonometric functions), equations,
inequalities and ``\\approx``, ratios ``a:b``, tuples, intervals (open/closed ends) and
unions, sets ``\\{...\\}``, lists (``1, 2``, ``x=1 \\text{ and } x=2``), ``\\pm``, matrices
(``pmatrix``/``bmatrix``/...), numbers in a base (``204_5``), multiple-choice letters
``(B)``, numbers in words (``twenty-one``) and word answers (``\\text{east}``). Whether a
value was written as a number or computed is kept in ``Parsed.numeral``.

Guards: the input length, nesting depth, digits of a literal and the size of any power
are capped before anything is built. A power whose value would have more than
``MAX_POW_DIGITS`` digits (``9^{9^{9^{9}}}``) is kept unevaluated and the result is
marked ``huge``: such values are only ever compared structurally.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import sympy
from sympy.core.sympify import SympifyError

from verirl.grading.extract import balanced_group
from verirl.grading.policy import MAX_CHARS, PERCENT_MODES

MAX_DEPTH = 100  # deepest nesting (each bracket level counts about 3: group, item, operand)
MAX_LITERAL_DIGITS = 1000  # digits in one number literal
MAX_POW_DIGITS = 5000  # a numeric power with more digits than this stays unevaluated
MAX_SYMBOLIC_EXPONENT = 200  # x^n with |n| above this stays unevaluated (expansion risk)
MAX_FACTORIAL = 1000
MAX_ALTERNATIVES = 16  # values one \pm-expression may expand to


class ParseError(ValueError):
    """The text is not an answer this parser can read; the message says where and why."""


# ---------------------------------------------------------------------------------------
# value types that are not sympy objects
@dataclass(frozen=True)
class AnswerList:
    """Several answers given at the top level (``1, 2``; ``x=1 \\text{ and } x=2``;
    a ``\\pm`` expression): compared as an unordered collection (roots)."""

    items: tuple


@dataclass(frozen=True)
class Text:
    """A word answer (``\\text{east}``), lower-cased with spaces collapsed."""

    words: str


@dataclass(frozen=True)
class Choice:
    """A multiple-choice letter, upper-case (``(B)`` -> ``Choice("B")``)."""

    letter: str


@dataclass(frozen=True)
class Ratio:
    """A ratio ``a : b (: c ...)`` of numbers or expressions (rule R)."""

    terms: tuple


@dataclass(frozen=True)
class Parsed:
    """A parsed answer.

    ``value`` is a sympy object (Expr, Relational, Tuple, Interval, Union, FiniteSet,
    ImmutableMatrix), an :class:`AnswerList`, a :class:`Text` or a :class:`Choice`.
    ``alternatives`` are other readings of the same text (``50\\%`` is 1/2 or 50 when
    percentages are read both ways; ``204_5`` is 54 or the digits 204). ``huge`` marks
    values that hold an unevaluated giant power: compare those structurally only.
    ``units`` are the units the answer names, canonical (``"cm"``, ``"degree"``).
    ``numeral``: every value is written as a number (``18``, ``\\frac{7}{2}``,
    ``x = 1.5``), none is computed (``3 \\cdot 6``, ``2^{10}``, ``\\binom{16}{5}``) (rule E).
    """

    value: Any
    alternatives: tuple = ()
    huge: bool = False
    source: str = ""
    units: frozenset = frozenset()
    numeral: bool = False

    @property
    def readings(self) -> tuple:
        return (self.value, *self.alternatives)


# ---------------------------------------------------------------------------------------
# tokenizer
@dataclass(frozen=True)
class Tok:
    kind: str  # num, id, cmd, op, text, begin, end, eof
    val: str
    pos: int
    space: bool = False  # whitespace right before the token


# thousands groups ("10,080", "10{,}080", "10,\!080", "1\,000") follow a first group of
# one to three digits that does not start with 0 ("0,111" is two numbers)
_NUM_RE = re.compile(
    r"(?:(?:[1-9]\d{0,2}(?:(?:,\\!\s*|\{,\}|,|\\,)\d{3}(?!\d))+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:[eE][+-]?\d+(?![A-Za-z]))?", re.ASCII
)
# inside brackets a bare comma separates elements: "(12,102)" is a pair, while
# "(10,\!080)" still holds one number
_NUM_IN_BRACKETS_RE = re.compile(
    r"(?:(?:[1-9]\d{0,2}(?:(?:,\\!\s*|\{,\}|\\,)\d{3}(?!\d))+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:[eE][+-]?\d+(?![A-Za-z]))?", re.ASCII
)
_LETTERS_RE = re.compile(r"[A-Za-z]+")
_DIGITS = frozenset("0123456789")  # str.isdigit() also accepts '¹' and other scripts' digits
_SPACE_CMDS = frozenset({",", "!", ";", ":", " ", ">", "quad", "qquad", "enspace", "thinspace",
                         "negthinspace", "medspace", "hfill"})
_SKIP_CMDS = frozenset({
    "left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr", "biggl",
    "biggr", "Biggl", "Biggr", "middle", "displaystyle", "textstyle", "scriptstyle", "limits",
    "nolimits", "mathstrut", "strut", "notag", "nonumber",
})
_SKIP_WITH_ARG = frozenset({"hspace", "vspace", "phantom", "hphantom", "vphantom", "label",
                            "color"})
_TEXT_CMDS = frozenset({"text", "textbf", "textit", "textrm", "textsf", "texttt", "textnormal",
                        "textup", "mbox", "hbox", "mathrm", "operatorname", "emph", "mathsf",
                        "mathtt"})
# commands whose braced argument is plain math
_TRANSPARENT_CMDS = frozenset({"boxed", "fbox", "mathbf", "boldsymbol", "bm", "mathit",
                               "mathnormal", "underline", "mathbb", "mathcal"})
_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": r"\times ", "\u22c5": r"\cdot ",
    "\u00b7": r"\cdot ", "\u00f7": "/", "\u03c0": r"\pi ", "\u221a": r"\sqrt ",
    "\u221e": r"\infty ", "\u2264": r"\le ", "\u2265": r"\ge ", "\u2260": r"\ne ",
    "\u00b0": r"^\circ ", "\u00b2": "^2", "\u00b3": "^3", "\u00bd": "(1/2)", "\u00bc": "(1/4)",
    "\u00be": "(3/4)", "\u222a": r"\cup ", "\u2229": r"\cap ", "\u2208": r"\in ",
    "\u00b1": r"\pm ", "\u2248": r"\approx ", "\u00a0": " ", "\u2009": " ", "\u202f": " ",
    "\u2019": "'", "\u2032": "'", "\u03b8": r"\theta ", "\u03b1": r"\alpha ",
    "\u03b2": r"\beta ", "\u20ac": "", "\u00a3": "",
}
_OPS2 = ("**", "<=", ">=", "!=", "\\\\")
_OPS1 = set("+-*/^_()[]{},;=<>|!&:'%.")


def _read_group(text: str, i: int) -> tuple[str, int]:
    """``text[i]`` is ``{``: return the balanced content and the index after ``}``."""
    found = balanced_group(text, i)
    if found is None:
        raise ParseError(f"unbalanced '{{' at position {i}")
    return found


def tokenize(text: str) -> list[Tok]:
    """Split ``text`` into tokens. Unknown characters are a :class:`ParseError`."""
    toks: list[Tok] = []
    i, n = 0, len(text)
    space = False
    brackets = 0  # open ( [ \{ \langle: commas inside separate elements
    while i < n:
        c = text[i]
        if c.isspace() or c in "$~" or ord(c) < 32:
            space = True
            i += 1
            continue
        if c in _DIGITS or (c == "." and i + 1 < n and text[i + 1] in _DIGITS):
            m = (_NUM_IN_BRACKETS_RE if brackets > 0 else _NUM_RE).match(text, i)
            assert m is not None  # a digit or ".digit" always matches
            raw = m.group(0)
            digits = re.sub(r"[,\s!\\{}]", "", raw)
            if sum(ch.isdigit() for ch in digits) > MAX_LITERAL_DIGITS:
                raise ParseError(
                    f"number literal at position {i} has more than {MAX_LITERAL_DIGITS} digits")
            toks.append(Tok("num", digits, i, space))
            i = m.end()
        elif c.isascii() and c.isalpha():
            m = _LETTERS_RE.match(text, i)
            assert m is not None
            toks.append(Tok("id", m.group(0), i, space))
            i = m.end()
        elif c == "\\":
            if i + 1 >= n:
                raise ParseError("the text ends with a lone backslash")
            m = _LETTERS_RE.match(text, i + 1)
            if m is None:
                nxt = text[i + 1]
                i += 2
                if nxt in " ,!;:>":
                    space = True
                    continue
                if nxt in "{}":
                    toks.append(Tok("op", "\\" + nxt, i - 2, space))
                    brackets += 1 if nxt == "{" else -1
                elif nxt == "\\":
                    toks.append(Tok("op", "\\\\", i - 2, space))
                elif nxt == "%":
                    toks.append(Tok("op", "%", i - 2, space))
                elif nxt in "$()[]":  # currency sign, or math-mode delimiters \( \) \[ \]
                    space = True
                    continue
                elif nxt == "|":
                    toks.append(Tok("op", "|", i - 2, space))
                else:
                    raise ParseError(f"unknown LaTeX escape '\\{nxt}' at position {i - 2}")
                space = False
                continue
            name = m.group(0)
            start = i
            i = m.end()
            if name in _SPACE_CMDS:
                space = True
                continue
            if name in _SKIP_CMDS:
                if name in ("left", "right", "middle") and i < n and text[i] == ".":
                    i += 1  # \left. is an invisible delimiter
                continue
            if name in _SKIP_WITH_ARG or name in _TEXT_CMDS or name in ("begin", "end"):
                while i < n and text[i] == " ":
                    i += 1
                if i >= n or text[i] != "{":
                    raise ParseError(f"\\{name} at position {start} needs a {{...}} argument")
                content, i = _read_group(text, i)
                if name in _TEXT_CMDS:
                    toks.append(Tok("text", content, start, space))
                elif name in ("begin", "end"):
                    toks.append(Tok(name, content.strip(), start, space))
                    if name == "begin" and content.strip() == "array" and i < n and text[i] == "{":
                        _, i = _read_group(text, i)  # column spec {cc}
                space = name in _SKIP_WITH_ARG or space
                if name not in _SKIP_WITH_ARG:
                    space = False
                continue
            toks.append(Tok("cmd", name, start, space))
            if name == "langle":
                brackets += 1
            elif name == "rangle":
                brackets -= 1
        else:
            two = text[i:i + 2]
            if two in _OPS2:
                toks.append(Tok("op", two, i, space))
                i += 2
            elif c in _OPS1:
                toks.append(Tok("op", c, i, space))
                i += 1
                if c in "([":
                    brackets += 1
                elif c in ")]":
                    brackets -= 1
            else:
                raise ParseError(f"unexpected character {c!r} (U+{ord(c):04X}) at position {i}")
        space = False
    toks.append(Tok("eof", "", n, space))
    return toks


# ---------------------------------------------------------------------------------------
# parser values
class V:
    """A value during parsing: its alternatives (more than one only after ``\\pm``),
    whether it holds an unevaluated giant power, and how it was written when that matters
    (``literal``: the digits of a bare integer; ``plain``: another reading; ``numeral``:
    written as a number, not computed: ``18``, ``-3.5``, ``\\frac{7}{2}``, ``2\\frac12``,
    ``1.5\\times10^{3}``; ``power_of_ten``: ``10^{n}``, the second half of the last)."""

    __slots__ = ("alts", "huge", "literal", "plain", "numeral", "power_of_ten")

    def __init__(self, alts: Sequence[Any], huge: bool = False, literal: str | None = None,
                 plain: Any = None, numeral: bool = False) -> None:
        self.alts = tuple(alts)
        self.huge = huge
        self.literal = literal
        self.plain = plain
        self.numeral = numeral
        self.power_of_ten = False

    @property
    def one(self) -> Any:
        if len(self.alts) != 1:
            raise ParseError("'\\pm' cannot be used here")
        return self.alts[0]


_FUNCS: dict[str, Callable[..., Any]] = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec,
    "csc": sympy.csc, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
    "arccot": sympy.acot, "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh,
    "ln": sympy.log, "log": sympy.log, "exp": sympy.exp, "lg": lambda x: sympy.log(x, 10),
}
_TRIG_FUNCS = frozenset({"sin", "cos", "tan", "cot", "sec", "csc"})
_MULTI_ARG_FUNCS: dict[str, Callable[..., Any]] = {
    "gcd": sympy.gcd, "lcm": sympy.lcm, "max": sympy.Max, "min": sympy.Min,
}
_GREEK = frozenset({
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
    "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon",
    "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma",
    "Phi", "Psi", "Omega",
})
_FRAC_CMDS = frozenset({"frac", "dfrac", "tfrac", "cfrac"})
_BINOM_CMDS = frozenset({"binom", "dbinom", "tbinom"})
_REL_CMDS = {"le": "<=", "leq": "<=", "leqslant": "<=", "ge": ">=", "geq": ">=",
             "geqslant": ">=", "ne": "!=", "neq": "!=", "lt": "<", "gt": ">", "approx": "approx",
             "in": "in", "equiv": "="}
_REL_OPS = {"=": "=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "!=": "!="}
_MUL_CMDS = frozenset({"cdot", "times", "ast"})
_MATRIX_ENVS = frozenset({"matrix", "pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix",
                          "smallmatrix", "array"})
# words dropped after a value: units, currencies and the like
UNIT_WORDS = frozenset("""
dollar dollars cent cents usd euro euros pound pounds yen rupees
meter meters metre metres m cm mm km inch inches in ft foot feet yard yards yd mile miles mi
gram grams g gm kg mg ton tons tonnes ounce ounces oz lb lbs liter liters litre litres l ml
gallon gallons quart quarts cup cups pint pints
second seconds sec s minute minutes min hour hours hr hrs h day days week weeks month months
year years yr decade decades century centuries
degree degrees deg radian radians rad sq square cubic units unit
mph kph km/h kmh per of the each
""".split())
PERCENT_WORDS = frozenset({"percent", "pct", "percentage", "percents"})
# unit spellings that name the same unit, and words that name none (rule U)
_UNIT_ALIASES = {
    **dict.fromkeys(("centimeter", "centimeters", "centimetre", "centimetres"), "cm"),
    **dict.fromkeys(("millimeter", "millimeters", "millimetre", "millimetres"), "mm"),
    **dict.fromkeys(("kilometer", "kilometers", "kilometre", "kilometres"), "km"),
    **dict.fromkeys(("meter", "meters", "metre", "metres"), "m"),
    **dict.fromkeys(("inch", "inches"), "in"), **dict.fromkeys(("foot", "feet"), "ft"),
    **dict.fromkeys(("yard", "yards"), "yd"), **dict.fromkeys(("mile", "miles"), "mi"),
    **dict.fromkeys(("gram", "grams", "gm"), "g"), **dict.fromkeys(("kilogram", "kilograms"), "kg"),
    **dict.fromkeys(("pound", "pounds", "lbs"), "lb"), **dict.fromkeys(("ounce", "ounces"), "oz"),
    **dict.fromkeys(("liter", "liters", "litre", "litres"), "l"),
    **dict.fromkeys(("milliliter", "milliliters", "millilitre", "millilitres"), "ml"),
    **dict.fromkeys(("sec", "second", "seconds"), "s"), **dict.fromkeys(("minute", "minutes"), "min"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "hour"), "yr": "year",
    **dict.fromkeys(("usd", "dollars"), "dollar"), **dict.fromkeys(("deg", "degrees", "circ"), "degree"),
    **dict.fromkeys(("radian", "radians"), "rad"), **dict.fromkeys(("kph", "kmh"), "km/h"),
}
_UNIT_FILLERS = frozenset({"per", "of", "the", "each", "sq", "square", "cubic", "units", "unit", "a", "an"})


def canonical_unit(word: str) -> str | None:
    """The canonical name of a unit word (``"Centimeters"`` -> ``"cm"``), None for words
    that name no unit (``per``, ``square``, ``units``)."""
    w = word.lower().strip(".")
    if not w or w in _UNIT_FILLERS:
        return None
    if w in _UNIT_ALIASES:
        return _UNIT_ALIASES[w]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w
_SEPARATOR_WORDS = frozenset({"and", "or"})
_CONST_WORDS = {"pi": sympy.pi, "inf": sympy.oo, "infty": sympy.oo, "infinity": sympy.oo,
                "oo": sympy.oo}
_WORD_FUNCS = frozenset(_FUNCS) | frozenset(_MULTI_ARG_FUNCS) | {"sqrt", "abs"}
MATH_WORDS = _WORD_FUNCS | frozenset(_CONST_WORDS)

_SYMPY_ERRORS = (TypeError, ValueError, ArithmeticError, SympifyError, NotImplementedError,
                 AttributeError, IndexError)

# binding powers
_BP_UNION = 3
_BP_ADD = 10
_BP_MUL = 20
_BP_UNARY = 25
_BP_POW = 30
_BP_POSTFIX = 40


def _guarded(what: str, build: Callable[[], Any]) -> Any:
    """Run a sympy constructor; its type errors (``2 + (1, 2)``) become ParseErrors."""
    try:
        return build()
    except ParseError:
        raise
    except RecursionError as exc:
        raise ParseError(f"{what}: expression too deep") from exc
    except _SYMPY_ERRORS as exc:
        raise ParseError(f"cannot build {what}: {type(exc).__name__}: {exc}") from exc


def _is_number(x: Any) -> bool:
    return isinstance(x, sympy.Expr) and not x.free_symbols and x.is_number


def _has_symbols(x: Any) -> bool:
    return bool(getattr(x, "free_symbols", None))


def is_name(x: Any, products_only: bool = False) -> bool:
    """Does ``x`` name a quantity rather than give a value: a variable, a product or
    quotient of variables (``AB``, ``NO/BO``, ``f(x)`` read as f·x), their absolute value,
    or a tuple of names (``(p, q)``)? ``products_only``: variables and their products."""
    if isinstance(x, sympy.Symbol):
        return True
    if isinstance(x, sympy.Mul):
        return all(isinstance(f, sympy.Symbol) or isinstance(f, sympy.Pow) and isinstance(f.base, sympy.Symbol)
                   and f.exp in (1, -1) and not products_only for f in x.args)
    if products_only:
        return False
    if isinstance(x, sympy.Abs):
        return is_name(x.args[0], products_only=True)
    if isinstance(x, sympy.Tuple):
        return len(x) > 0 and all(is_name(e) for e in x)
    return False


def _approx_abs(x: sympy.Expr) -> float | None:
    """|x| as a float, or None where it cannot be evaluated cheaply."""
    try:
        v = complex(sympy.N(x, 15))
    except _SYMPY_ERRORS:
        return None
    a = abs(v)
    return a if math.isfinite(a) else None


def _pow_is_huge(base: Any, exp: Any) -> bool:
    """Would ``base**exp`` be too big to build? (decided before building it)"""
    if not isinstance(exp, sympy.Expr) or exp.free_symbols or not exp.is_number:
        return False  # symbolic exponent: sympy keeps it unevaluated
    e = _approx_abs(exp)
    if e is None:
        return True
    if isinstance(base, sympy.Expr) and base.free_symbols:
        return e > MAX_SYMBOLIC_EXPONENT
    if not isinstance(base, sympy.Expr):
        return False
    b = _approx_abs(base)
    if b is None:
        return True
    if b in (0.0, 1.0):
        return e > 10**6  # 1**huge is cheap, but (1+tiny)**huge is not: stay careful
    return e * abs(math.log10(b)) > MAX_POW_DIGITS or e > 10**6


class Parser:
    """Pratt parser over :func:`tokenize`'s tokens. ``parse()`` returns a :class:`Parsed`."""

    def __init__(self, text: str, depth: int = 0, percent: str = "either") -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.depth = depth
        self.huge = False
        self.percent_mode = percent  # what "x\%" is: number | fraction | either (rule P)
        self.units: list[str] = []  # unit words met, in order (rule U)
        self.degree_marks = 0  # degree signs met (inside a trig function: radians)

    # ---- token helpers ---------------------------------------------------------------
    def peek(self, k: int = 0) -> Tok:
        j = min(self.i + k, len(self.toks) - 1)
        return self.toks[j]

    def advance(self) -> Tok:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def at(self, kind: str, val: str | None = None, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind == kind and (val is None or tok.val == val)

    def expect(self, kind: str, val: str) -> Tok:
        tok = self.advance()
        if tok.kind != kind or tok.val != val:
            got = tok.val or tok.kind
            raise ParseError(f"expected {val!r} at position {tok.pos}, got {got!r}")
        return tok

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError(f"nesting deeper than {MAX_DEPTH} levels")

    def leave(self) -> None:
        self.depth -= 1

    def split_token(self, n: int) -> Tok:
        """Take the first ``n`` characters of the current id token, or of the current num
        token when it is all digits (``\\frac12``); other tokens are taken whole."""
        tok = self.toks[self.i]
        if len(tok.val) <= n or (tok.kind == "num" and not tok.val.isdigit()):
            return self.advance()
        self.toks[self.i] = Tok(tok.kind, tok.val[n:], tok.pos + n, False)
        return Tok(tok.kind, tok.val[:n], tok.pos, tok.space)

    # ---- building --------------------------------------------------------------------
    def combine(self, what: str, fn: Callable[..., Any], *vals: V, huge: bool = False,
                exprs_only: bool = True) -> V:
        """Apply ``fn`` to every combination of the operands' alternatives. Arithmetic
        (``exprs_only``) takes numbers and expressions, not sets, tuples or matrices."""
        if exprs_only:
            for v in vals:
                for x in v.alts:
                    if not isinstance(x, sympy.Expr) or isinstance(x, sympy.MatrixBase):
                        raise ParseError(f"cannot use {type(x).__name__} {str(x)[:40]} in {what}")
        combos: list[tuple] = [()]
        for v in vals:
            combos = [c + (a,) for c in combos for a in v.alts]
            if len(combos) > MAX_ALTERNATIVES:
                raise ParseError(f"more than {MAX_ALTERNATIVES} alternatives from '\\pm'")
        huge = huge or any(v.huge for v in vals)
        out = [_guarded(what, lambda c=c: fn(*c, huge)) for c in combos]
        return V(out, huge)

    @staticmethod
    def integer_numeral(v: V) -> bool:
        return v.numeral and all(isinstance(x, sympy.Integer) for x in v.alts)

    def add(self, a: V, b: V) -> V:
        return self.combine("a sum", lambda x, y, h: sympy.Add(x, y, evaluate=not h), a, b)

    def sub(self, a: V, b: V) -> V:
        return self.combine(
            "a difference",
            lambda x, y, h: sympy.Add(x, sympy.Mul(sympy.S.NegativeOne, y, evaluate=not h),
                                      evaluate=not h), a, b)

    def mul(self, a: V, b: V) -> V:
        out = self.combine("a product", lambda x, y, h: sympy.Mul(x, y, evaluate=not h), a, b)
        out.numeral = a.numeral and b.power_of_ten  # 1.5 \times 10^{3}
        return out

    def div(self, a: V, b: V) -> V:
        for y in b.alts:
            if not b.huge and isinstance(y, sympy.Expr) and y.is_zero:
                raise ParseError("division by zero")
        out = self.combine(
            "a quotient",
            lambda x, y, h: sympy.Mul(x, sympy.Pow(y, sympy.S.NegativeOne, evaluate=not h),
                                      evaluate=not h), a, b)
        out.numeral = self.integer_numeral(a) and self.integer_numeral(b)  # \frac{7}{2}
        return out

    def neg(self, a: V) -> V:
        out = self.combine("a negation",
                           lambda x, h: sympy.Mul(sympy.S.NegativeOne, x, evaluate=not h), a)
        out.numeral = a.numeral
        return out

    def power(self, a: V, b: V) -> V:
        huge = any(_pow_is_huge(x, y) for x in a.alts for y in b.alts) if not (a.huge or b.huge) \
            else True
        if huge:
            self.huge = True
        out = self.combine("a power", lambda x, y, h: sympy.Pow(x, y, evaluate=not h), a, b,
                           huge=huge)
        out.power_of_ten = a.literal == "10" and self.integer_numeral(b)
        return out

    def apply(self, name: str, fn: Callable[..., Any], *args: V) -> V:
        def build(*xs: Any) -> Any:
            h = xs[-1]
            xs = xs[:-1]
            return fn(*xs, evaluate=False) if h else fn(*xs)
        return self.combine(name, build, *args)

    # ---- grammar ---------------------------------------------------------------------
    def parse(self) -> Parsed:
        items = self.items(frozenset({"eof"}))
        if not self.at("eof"):
            tok = self.peek()
            raise ParseError(f"unexpected {tok.val or tok.kind!r} at position {tok.pos}")
        values: list[Any] = []
        for v in items:
            values.extend(v.alts)
        if not values:
            raise ParseError("empty answer")
        alternatives: tuple = ()
        if len(values) == 1:
            value = values[0]
            if items[0].plain is not None:
                alternatives = (items[0].plain,)
        else:
            value = AnswerList(tuple(values))
        units = frozenset(u for u in map(canonical_unit, self.units) if u)
        return Parsed(value, alternatives, self.huge, self.text, units, all(v.numeral for v in items))

    def is_separator(self) -> bool:
        tok = self.peek()
        if tok.kind == "op" and tok.val in (",", ";"):
            return True
        if tok.kind == "id" and tok.val.lower() in _SEPARATOR_WORDS:
            return True
        return tok.kind == "text" and tok.val.strip().lower() in _SEPARATOR_WORDS | {",", ""}

    def items(self, closers: frozenset[str]) -> list[V]:
        """Comma/``and``-separated items up to (not including) a closer token."""
        out: list[V] = []
        while True:
            if self.is_closer(closers):
                break
            out.append(self.relation())
            if not self.is_separator():
                break
            while self.is_separator():
                self.advance()
        return out

    def is_closer(self, closers: frozenset[str]) -> bool:
        tok = self.peek()
        return tok.kind == "eof" or (tok.kind in ("op", "cmd", "end") and tok.val in closers) \
            or (tok.kind == "end" and "end" in closers)

    def relop(self) -> str | None:
        tok = self.peek()
        if tok.kind == "op" and tok.val in _REL_OPS:
            return _REL_OPS[tok.val]
        if tok.kind == "cmd" and tok.val in _REL_CMDS:
            return _REL_CMDS[tok.val]
        return None

    def relation(self) -> V:
        """``expr (relop expr)*``: ``x = 3``, ``a < x <= b``, ``x \\in [1, 2]``, ratios
        ``a : b``; a chain is cut at its first ``\\approx`` (``x = 1/3 \\approx 0.33`` is
        ``x = 1/3``), and a leading ``\\approx 3.14`` is the value 3.14."""
        self.enter()
        if self.at("cmd", "approx"):
            self.advance()
        first = self.ratio()
        parts: list[tuple[str, V]] = []
        while (op := self.relop()) is not None:
            self.advance()
            parts.append((op, self.ratio()))
        self.leave()
        ops = [p[0] for p in parts]
        if "approx" in ops:
            cut = ops.index("approx")
            if cut == 0 and not is_name(first.alts[0]):
                return first  # "1/3 \approx 0.33": the exact value is the answer
            parts = parts[:max(cut, 1)]
            if cut == 0:
                parts = [("=", parts[0][1])]  # "x \approx 3.14": the approximation
        if not parts:
            return first
        if len(parts) == 1:
            op, rhs = parts[0]
            return self.build_relation(first, op, rhs)
        ops = [p[0] for p in parts]
        if all(o == "=" for o in ops):  # x = 2 + 3 = 5: the last value is the answer
            return self.build_relation(first, "=", parts[-1][1])
        if len(parts) == 2 and {ops[0], ops[1]} <= {"<", "<="} or \
                len(parts) == 2 and {ops[0], ops[1]} <= {">", ">="}:
            return self.chain_interval(first, parts)
        raise ParseError(f"cannot read the chain of relations {' '.join(ops)}")

    def ratio(self) -> V:
        """``a : b (: c ...)`` as a :class:`Ratio`, or one expression."""
        first = self.expr(0)
        if not self.at("op", ":"):
            return first
        terms = [first]
        while self.at("op", ":"):
            self.advance()
            terms.append(self.expr(0))
        values = [t.one for t in terms]
        if not all(isinstance(x, sympy.Expr) and not isinstance(x, sympy.MatrixBase) for x in values):
            raise ParseError("the terms of a ratio must be numbers or expressions")
        return V([Ratio(tuple(values))], any(t.huge for t in terms), numeral=all(t.numeral for t in terms))

    def build_relation(self, lhs: V, op: str, rhs: V) -> V:
        if op == "in":
            return rhs
        if any(isinstance(x, Ratio) for x in lhs.alts + rhs.alts):
            # "S_1 : S_2 = 7 : 32", "A:B = 1": the value given for the named ratio
            if op == "=" and all(isinstance(x, Ratio) and all(is_name(t) for t in x.terms)
                                 for x in lhs.alts) and not any(_has_symbols(x) for x in rhs.alts):
                return rhs
            raise ParseError("a ratio can only be given as 'names = value'")
        cls = {"=": sympy.Eq, "<": sympy.Lt, ">": sympy.Gt, "<=": sympy.Le, ">=": sympy.Ge,
               "!=": sympy.Ne}[op]
        out = self.combine("a relation", lambda x, y, h: cls(x, y, evaluate=False), lhs, rhs,
                           exprs_only=op in ("<", ">", "<=", ">="))
        # "x = 18", "2 + 3 = 5": the value given is written as a number
        out.numeral = op == "=" and rhs.numeral and all(is_name(x) or not _has_symbols(x) for x in lhs.alts)
        return out

    def chain_interval(self, first: V, parts: list[tuple[str, V]]) -> V:
        """``a < x <= b`` -> Interval(a, b, left_open, right_open) (``>`` chains reversed)."""
        (op1, mid), (op2, last) = parts
        lo, hi = first.one, last.one
        lo_open, hi_open = op1 in ("<", ">"), op2 in ("<", ">")
        if op1 in (">", ">="):
            lo, hi, lo_open, hi_open = hi, lo, hi_open, lo_open
        if not is_name(mid.one, products_only=True):
            raise ParseError("a chain a < x < b needs a variable in the middle")
        return V([self.interval(lo, hi, lo_open, hi_open)])

    def interval(self, lo: Any, hi: Any, lo_open: bool, hi_open: bool) -> Any:
        for end in (lo, hi):
            if not isinstance(end, sympy.Expr):
                raise ParseError("interval endpoints must be numbers or expressions")
        if _is_number(lo) and _is_number(hi) and not self.huge:
            cmp = _guarded("an interval", lambda: sympy.Lt(hi, lo))
            if cmp is sympy.true:
                raise ParseError(f"interval endpoints are reversed: {lo} > {hi}")
        return _guarded("an interval", lambda: sympy.Interval(lo, hi, lo_open, hi_open))

    def can_start_operand(self) -> bool:
        """Can the next token start a factor of an implicit product (``2x``, ``3\\pi``)?"""
        tok = self.peek()
        if tok.kind == "num":
            return False  # "2 3" is not a product we want to guess
        if tok.kind == "id":
            word = tok.val.lower()
            return word not in _SEPARATOR_WORDS and not self.is_unit_word(tok.val)
        if tok.kind == "op":
            return tok.val in ("(", "{", "\\{")
        if tok.kind == "cmd":
            name = tok.val
            return (name in _FRAC_CMDS or name in _BINOM_CMDS or name in _FUNCS
                    or name in _MULTI_ARG_FUNCS or name in _GREEK or name in _TRANSPARENT_CMDS
                    or name in ("sqrt", "pi", "infty", "lfloor", "lceil", "e", "exp"))
        if tok.kind == "begin":
            return True
        return False

    def is_unit_word(self, word: str) -> bool:
        w = word.lower()
        if w in MATH_WORDS or w in _SEPARATOR_WORDS or w in PERCENT_WORDS:
            return False
        return w in UNIT_WORDS and len(w) > 1 or len(w) >= 4

    def expr(self, rbp: int) -> V:
        """Pratt loop: a prefix operand, then infix/postfix operators binding tighter than ``rbp``."""
        self.enter()
        left = self.nud()
        while True:
            tok = self.peek()
            if tok.kind == "op" and tok.val in ("+", "-") or tok.kind == "cmd" and tok.val in ("pm", "mp"):
                if _BP_ADD <= rbp:
                    break
                self.advance()
                right = self.expr(_BP_ADD)
                if tok.val == "+":
                    left = self.add(left, right)
                elif tok.val == "-":
                    left = self.sub(left, right)
                else:  # a \pm b: both values, in the order +, -
                    plus, minus = self.add(left, right), self.sub(left, right)
                    if tok.val == "mp":
                        plus, minus = minus, plus
                    left = V(plus.alts + minus.alts, plus.huge or minus.huge)
            elif tok.kind == "op" and tok.val in ("*", "/") or tok.kind == "cmd" and (
                    tok.val in _MUL_CMDS or tok.val == "div"):
                if _BP_MUL <= rbp:
                    break
                self.advance()
                right = self.expr(_BP_MUL)
                left = self.div(left, right) if tok.val in ("/", "div") else self.mul(left, right)
            elif tok.kind == "op" and tok.val in ("^", "**"):
                if _BP_POW < rbp:
                    break
                self.advance()
                if self.degree_mark():
                    continue
                right = self.superscript()
                left = self.power(left, right)
            elif tok.kind == "cmd" and tok.val in ("circ", "degree"):
                self.advance()  # 30\circ, 30\degree: degrees are a unit
                self.mark_degrees()
            elif tok.kind == "op" and tok.val == "!" and _BP_POSTFIX > rbp:
                self.advance()
                left = self.factorial(left)
            elif (tok.kind == "op" and tok.val == "%" or self.at_percent_word()) and _BP_POSTFIX > rbp:
                self.advance()
                left = self.percent(left)
            elif tok.kind == "op" and tok.val == "_" and _BP_POSTFIX > rbp:
                self.advance()
                left = self.subscript(left)
            elif tok.kind == "cmd" and tok.val in ("cup", "cap", "setminus"):
                if _BP_UNION <= rbp:
                    break
                self.advance()
                right = self.expr(_BP_UNION)
                left = self.set_op(tok.val, left, right)
            elif self.at_unit():
                self.skip_unit()
            elif self.can_start_operand() and _BP_MUL > rbp:
                right = self.expr(_BP_MUL)
                left = self.mul(left, right)
            else:
                break
        self.leave()
        return left

    def at_percent_word(self) -> bool:
        tok = self.peek()
        return tok.kind in ("id", "text") and tok.val.strip().lower() in PERCENT_WORDS

    def percent(self, v: V) -> V:
        """``x\\%`` by the percent mode: x, x/100, or x/100 with x as another reading."""
        if self.percent_mode == "number":
            return v
        frac = self.div(v, V([sympy.Integer(100)], numeral=True))
        frac.numeral = v.numeral
        if self.percent_mode == "either":
            frac.plain = v.one
        return frac

    def mark_degrees(self) -> None:
        self.degree_marks += 1
        self.units.append("degree")

    def at_unit(self) -> bool:
        tok = self.peek()
        if tok.kind == "id":
            return self.is_unit_word(tok.val)
        if tok.kind == "text":
            content = tok.val.strip().lower()
            if tok.val[:1].isspace() and content.isalpha() and content not in _SEPARATOR_WORDS:
                return True  # "5\text{ m}": a unit, even of one letter
            return content not in _SEPARATOR_WORDS and bool(content) and not _looks_like_math(content)
        return False

    def skip_unit(self) -> None:
        tok = self.advance()
        self.units.extend(re.findall(r"[A-Za-z][A-Za-z/]*", tok.val))
        # "cm^2", "\text{ cm}^2": the exponent belongs to the unit
        if self.at("op", "^") and (self.at("num", k=1) or self.at("op", "{", k=1)):
            self.advance()
            self.superscript()

    def degree_mark(self) -> bool:
        """After ``^``: ``\\circ`` or ``{\\circ}`` marks degrees (dropped)."""
        if self.at("cmd", "circ"):
            self.advance()
        elif self.at("op", "{") and self.at("cmd", "circ", k=1) and self.at("op", "}", k=2):
            self.i += 3
        else:
            return False
        self.mark_degrees()
        if self.at("id") and self.peek().val in ("C", "F"):
            self.advance()  # 30^\circ C
        return True

    def superscript(self) -> V:
        tok = self.peek()
        if tok.kind == "op" and tok.val == "{":
            return self.group()
        if tok.kind == "id":
            return self.symbol_from(self.split_token(1))
        return self.expr(_BP_POW - 1)

    def factorial(self, v: V) -> V:
        def fact(x: Any, h: bool) -> Any:
            # any number, not only an Integer: 1e5! reads as Float(100000)!, as costly
            if h or (getattr(x, "is_Number", False) and abs(x) > MAX_FACTORIAL):
                self.huge = True
                return sympy.factorial(x, evaluate=False)
            return sympy.factorial(x)
        out = self.combine("a factorial", fact, v)
        out.huge = out.huge or self.huge
        return out

    def subscript(self, left: V) -> V:
        """``x_1`` / ``a_{n}`` -> Symbol('x_1'); ``204_5`` / ``4210_{5}`` -> a number in base 5."""
        tok = self.peek()
        if tok.kind == "op" and tok.val == "{":
            start = self.i
            self.advance()
            depth = 1
            parts = []
            while depth and not self.at("eof"):
                t = self.advance()
                if t.kind == "op" and t.val == "{":
                    depth += 1
                elif t.kind == "op" and t.val == "}":
                    depth -= 1
                    if depth == 0:
                        break
                parts.append(t.val)
            if depth:
                raise ParseError(f"unbalanced '{{' in subscript at position {self.toks[start].pos}")
            sub = "".join(parts)
        elif tok.kind in ("num", "id"):
            sub = self.split_token(1 if tok.kind == "id" else len(tok.val)).val
        elif tok.kind == "cmd":
            sub = self.advance().val
        else:
            raise ParseError(f"expected a subscript at position {tok.pos}")
        if left.literal is not None and sub.isdigit():
            base = int(sub)
            if not 2 <= base <= 36:
                raise ParseError(f"base {base} is not between 2 and 36")
            try:
                value = int(left.literal, base)
            except ValueError as exc:
                raise ParseError(f"{left.literal} is not a number in base {base}") from exc
            return V([sympy.Integer(value)], plain=sympy.Integer(left.literal))
        x = left.one
        if isinstance(x, sympy.Symbol):
            return V([sympy.Symbol(f"{x.name}_{sub}")])
        raise ParseError(f"cannot put subscript {sub!r} on {x}")

    def set_op(self, op: str, a: V, b: V) -> V:
        def to_set(x: Any) -> Any:
            if isinstance(x, sympy.Tuple) and len(x) == 2:  # (a, b) next to \cup is an interval
                return self.interval(x[0], x[1], True, True)
            if isinstance(x, sympy.Set):
                return x
            raise ParseError(f"\\{op} needs sets or intervals on both sides, got {x}")
        fn = {"cup": sympy.Union, "cap": sympy.Intersection, "setminus": sympy.Complement}[op]
        return self.combine(f"a set {op}",
                            lambda x, y, h: fn(to_set(x), to_set(y), evaluate=not h), a, b,
                            exprs_only=False)

    # ---- operands ------------------------------------------------------------------------
    def nud(self) -> V:
        tok = self.peek()
        if tok.kind == "num":
            return self.number()
        if tok.kind == "id":
            return self.word()
        if tok.kind == "cmd":
            return self.command()
        if tok.kind == "text":
            self.advance()
            content = tok.val.strip()
            if _looks_like_math(content):
                return self.subparse(content)
            raise ParseError(f"unexpected text {content!r} at position {tok.pos}")
        if tok.kind == "begin":
            return self.environment()
        if tok.kind == "op":
            if tok.val == "-":
                self.advance()
                return self.neg(self.expr(_BP_UNARY))
            if tok.val == "+":
                self.advance()
                return self.expr(_BP_UNARY)
            if tok.val in ("(", "["):
                return self.bracketed()
            if tok.val == "{":
                return self.group()
            if tok.val == "\\{":
                return self.set_literal()
            if tok.val == "|":
                self.advance()
                inner = self.expr(0)
                self.expect("op", "|")
                return self.apply("an absolute value", sympy.Abs, inner)
        got = tok.val or tok.kind
        raise ParseError(f"expected a value at position {tok.pos}, got {got!r}")

    def subparse(self, content: str) -> V:
        sub = Parser(content, self.depth + 1, self.percent_mode)
        v = sub.relation()
        if not sub.at("eof"):
            raise ParseError(f"cannot read {content!r}")
        self.huge = self.huge or sub.huge
        self.units += sub.units
        self.degree_marks += sub.degree_marks
        return v

    def number(self) -> V:
        tok = self.advance()
        if self.at("cmd", "overline") or (self.at("op", ".") and self.at("cmd", "overline", k=1)):
            return self.repeating_decimal(tok)
        v = self.literal(tok.val)
        if v.literal is not None:
            mixed = self.mixed_fraction(tok)
            if mixed is not None:
                return mixed
        return v

    def repeating_decimal(self, tok: Tok) -> V:
        """``0.\\overline{3}`` = 1/3, ``0.1\\overline{6}`` = 1/6 (exact)."""
        if self.at("op", "."):
            self.advance()
        self.advance()  # \overline
        self.expect("op", "{")
        rep = self.advance()
        self.expect("op", "}")
        whole, _, fixed = tok.val.partition(".")
        if not (whole.isdigit() and (fixed.isdigit() or not fixed) and rep.kind == "num"
                and rep.val.isdigit()):
            raise ParseError(f"cannot read the repeating decimal at position {tok.pos}")
        # x = whole.fixed(rep)(rep)...: (whole.fixed rep - whole.fixed) / (10^len(rep) - 1), scaled
        a = int(whole + fixed + rep.val) - int(whole + fixed or "0")
        b = (10 ** len(rep.val) - 1) * 10 ** len(fixed)
        return V([sympy.Rational(a, b)], numeral=True)

    def literal(self, digits: str) -> V:
        if re.fullmatch(r"\d+", digits):
            return V([sympy.Integer(int(digits))], literal=digits, numeral=True)
        m = re.fullmatch(r"(\d*\.?\d+|\d+\.)(?:[eE]([+-]?\d+))?", digits)
        if m is None:
            raise ParseError(f"malformed number {digits!r}")
        if m.group(2) and abs(int(m.group(2))) > MAX_POW_DIGITS:
            raise ParseError(f"exponent of {digits!r} is too large")
        sig = len(m.group(1).replace(".", "").lstrip("0")) or 1
        return V([sympy.Float(digits, max(15, sig + 2))], numeral=True)

    def mixed_fraction(self, whole: Tok) -> V | None:
        """``2\\frac{1}{2}`` / ``2 1/2`` after the integer ``whole`` -> 5/2, else None."""
        t = self.peek()
        if t.kind == "cmd" and t.val in _FRAC_CMDS:
            j = self.i + 1
            nums = []
            for _ in range(2):
                if self.toks[j].kind == "num" and self.toks[j].val.isdigit():
                    # \frac12 style: the argument is one digit
                    nums.append(self.toks[j].val[0])
                    if len(self.toks[j].val) > 1 and len(nums) == 1:
                        nums.append(self.toks[j].val[1:2])
                        if len(self.toks[j].val) != 2:
                            return None
                        j += 1
                        break
                    j += 1
                elif (self.toks[j].kind == "op" and self.toks[j].val == "{"
                      and self.toks[j + 1].kind == "num" and self.toks[j + 1].val.isdigit()
                      and self.toks[j + 2].kind == "op" and self.toks[j + 2].val == "}"):
                    nums.append(self.toks[j + 1].val)
                    j += 3
                else:
                    return None
            if len(nums) != 2 or int(nums[1]) == 0:
                return None
            self.i = j
        elif (t.kind == "num" and t.space and t.val.isdigit() and self.at("op", "/", k=1)
              and self.peek(2).kind == "num" and self.peek(2).val.isdigit()
              and not self.peek(1).space and not self.peek(2).space):
            nums = [t.val, self.peek(2).val]
            if int(nums[1]) == 0:
                return None
            self.i += 3
        else:
            return None
        value = sympy.Integer(int(whole.val)) + sympy.Rational(int(nums[0]), int(nums[1]))
        return V([value], numeral=True)

    def word(self) -> V:
        tok = self.peek()
        word = tok.val
        low = word.lower()
        if low in _CONST_WORDS:
            self.advance()
            return V([_CONST_WORDS[low]])
        if low == "sqrt":
            self.advance()
            return self.apply("a square root", sympy.sqrt, self.argument())
        if low in ("abs",):
            self.advance()
            return self.apply("an absolute value", sympy.Abs, self.argument())
        if low in _FUNCS or low in _MULTI_ARG_FUNCS:
            self.advance()
            return self.function(low)
        if len(word) >= 4 or low in _SEPARATOR_WORDS:
            raise ParseError(f"unexpected word {word!r} at position {tok.pos}")
        # a run of letters in math is a product of one-letter symbols: "xy" = x*y
        return self.symbol_from(self.split_token(1))

    def symbol_from(self, tok: Tok) -> V:
        name = tok.val
        if name == "e":
            return V([sympy.E])
        if name == "i":
            return V([sympy.I])
        return V([sympy.Symbol(name)])

    def argument(self) -> V:
        """A LaTeX argument: ``{group}``, or one token (``\\frac12``: one digit)."""
        tok = self.peek()
        if tok.kind == "op" and tok.val == "{":
            return self.group()
        if tok.kind == "num":
            return self.literal(self.split_token(1).val)
        if tok.kind == "id":
            return self.symbol_from(self.split_token(1))
        if tok.kind == "op" and tok.val in ("(", "["):
            return self.bracketed()
        if tok.kind == "cmd":
            return self.command()
        raise ParseError(f"expected an argument at position {tok.pos}, got {tok.val or tok.kind!r}")

    def group(self) -> V:
        """``{ ... }``: LaTeX grouping (several comma-separated items: a set)."""
        self.enter()
        self.expect("op", "{")
        items = self.items(frozenset({"}"}))
        self.expect("op", "}")
        self.leave()
        if len(items) == 1:
            return items[0]
        if not items:
            raise ParseError("empty group {}")
        return V([_guarded("a set", lambda: sympy.FiniteSet(*[a for v in items for a in v.alts]))],
                 any(v.huge for v in items))

    def set_literal(self) -> V:
        self.enter()
        self.expect("op", "\\{")
        items = self.items(frozenset({"\\}"}))
        self.expect("op", "\\}")
        self.leave()
        elems = [a for v in items for a in v.alts]
        return V([_guarded("a set", lambda: sympy.FiniteSet(*elems))], any(v.huge for v in items))

    def bracketed(self) -> V:
        """``(a)`` grouping, ``(a, b)`` tuple, ``[a, b]`` / ``(a, b]`` / ``[a, b)`` intervals."""
        self.enter()
        opener = self.advance().val
        items = self.items(frozenset({")", "]"}))
        closer = self.advance()
        self.leave()
        if closer.kind != "op" or closer.val not in (")", "]"):
            raise ParseError(f"expected ')' or ']' at position {closer.pos} to close {opener!r}")
        if not items:
            raise ParseError(f"empty brackets at position {closer.pos}")
        huge = any(v.huge for v in items)
        if len(items) == 1:
            if opener + closer.val in ("()", "[]"):
                return items[0]
            raise ParseError(f"an interval needs two endpoints, got {opener}...{closer.val}")
        if len(items) == 2 and (opener, closer.val) != ("(", ")"):
            lo, hi = items[0].one, items[1].one
            return V([self.interval(lo, hi, opener == "(", closer.val == ")")], huge)
        if opener + closer.val not in ("()", "[]"):
            raise ParseError(f"an interval has two endpoints, got {len(items)}")
        elems = [v.one for v in items]
        return V([_guarded("a tuple", lambda: sympy.Tuple(*elems))], huge)

    def command(self) -> V:
        tok = self.advance()
        name = tok.val
        if name == "pi":
            return V([sympy.pi])
        if name == "infty":
            return V([sympy.oo])
        if name in ("emptyset", "varnothing"):
            return V([sympy.S.EmptySet])
        if name in _GREEK:
            return V([sympy.Symbol(name.replace("var", ""))])
        if name in _FRAC_CMDS:
            num = self.argument()
            den = self.argument()
            return self.div(num, den)
        if name in _BINOM_CMDS:
            n, k = self.argument(), self.argument()
            def binom(a: Any, b: Any, h: bool) -> Any:
                if h or not (isinstance(a, sympy.Integer) and a <= 10**4):
                    if isinstance(a, sympy.Integer):
                        self.huge = True
                    return sympy.binomial(a, b, evaluate=False)
                return sympy.binomial(a, b)
            return self.combine("a binomial", binom, n, k)
        if name == "sqrt":
            index = None
            if self.at("op", "["):
                self.advance()
                index = self.expr(0)
                self.expect("op", "]")
            radicand = self.argument()
            if index is None:
                return self.apply("a square root", sympy.sqrt, radicand)
            return self.power(radicand, self.div(V([sympy.Integer(1)]), index))
        if name in _FUNCS or name in _MULTI_ARG_FUNCS:
            return self.function(name)
        if name in _TRANSPARENT_CMDS:
            return self.argument()
        if name in ("lfloor", "lceil"):
            inner = self.expr(0)
            self.expect("cmd", "rfloor" if name == "lfloor" else "rceil")
            fn = sympy.floor if name == "lfloor" else sympy.ceiling
            return self.apply(name[1:], fn, inner)
        if name in ("lvert", "vert", "lVert", "Vert"):
            inner = self.expr(0)
            closer = self.advance()
            if closer.kind != "cmd" or closer.val not in ("rvert", "vert", "rVert", "Vert"):
                raise ParseError(f"expected \\rvert at position {closer.pos}")
            return self.apply("an absolute value", sympy.Abs, inner)
        if name == "langle":
            self.enter()
            items = self.items(frozenset({"rangle"}))
            self.expect("cmd", "rangle")
            self.leave()
            elems = [v.one for v in items]
            return V([_guarded("a tuple", lambda: sympy.Tuple(*elems))], any(v.huge for v in items))
        if name in ("pm", "mp"):
            v = self.expr(_BP_UNARY)
            return V(v.alts + self.neg(v).alts, v.huge)
        raise ParseError(f"unknown or misplaced LaTeX command \\{name} at position {tok.pos}")

    def function(self, name: str) -> V:
        """``\\sin x``, ``\\sin^2 x``, ``\\log_2 8``, ``\\gcd(a, b)``."""
        power = None
        base = None
        if self.at("op", "_") and name == "log":
            self.advance()
            base = self.argument()
        if self.at("op", "^"):
            self.advance()
            power = self.superscript()
        if name in _MULTI_ARG_FUNCS:
            if not (self.at("op", "(") or self.at("op", "{")):
                raise ParseError(f"\\{name} needs its arguments in parentheses")
            opener = self.advance().val
            self.enter()
            args = self.items(frozenset({")" if opener == "(" else "}"}))
            self.advance()
            self.leave()
            if not args:
                raise ParseError(f"\\{name} needs arguments")
            out = self.combine(name, lambda *xs: _MULTI_ARG_FUNCS[name](*xs[:-1]), *args)
        else:
            marks, units = self.degree_marks, len(self.units)
            if self.at("op", "(") or self.at("op", "{"):
                arg = self.bracketed() if self.at("op", "(") else self.group()
            else:  # \sin 2x: the argument runs over the implicit product
                arg = self.expr(_BP_MUL - 1)
            if self.degree_marks > marks:
                # \sin 60^\circ: an angle in degrees, converted; not a unit of the answer
                del self.units[units:]
                if name in _TRIG_FUNCS:
                    arg = self.mul(arg, V([sympy.pi / 180]))
            if base is not None:
                out = self.combine("a logarithm", lambda x, b, h: sympy.log(x, b), arg, base)
            else:
                out = self.apply(name, _FUNCS[name], arg)
        if power is not None:
            out = self.power(out, power)
        return out

    def environment(self) -> V:
        tok = self.advance()
        env = tok.val
        if env not in _MATRIX_ENVS:
            raise ParseError(f"unsupported environment {env!r} (matrices only)")
        self.enter()
        rows: list[list[Any]] = []
        row: list[Any] = []
        huge = False
        while True:
            if self.at("end"):
                end = self.advance()
                if end.val != env:
                    raise ParseError(f"\\begin{{{env}}} closed by \\end{{{end.val}}}")
                break
            if self.at("eof"):
                raise ParseError(f"\\begin{{{env}}} is never closed")
            v = self.relation()
            huge = huge or v.huge
            if not isinstance(v.one, sympy.Expr):
                raise ParseError(f"a matrix entry must be a number or expression, got {v.one}")
            row.append(v.one)
            if self.at("op", "&"):
                self.advance()
            elif self.at("op", "\\\\"):
                self.advance()
                rows.append(row)
                row = []
        if row:
            rows.append(row)
        self.leave()
        if not rows or any(len(r) != len(rows[0]) for r in rows):
            raise ParseError(f"matrix rows have different lengths: {[len(r) for r in rows]}")
        return V([_guarded("a matrix", lambda: sympy.ImmutableMatrix(rows))], huge)


# ---------------------------------------------------------------------------------------
# whole answers
_MATH_CHARS_RE = re.compile(r"[\d=+\-*/^()\[\]\\<>|]")
_CHOICE_RE = re.compile(r"^\(?\s*([A-J])\s*\)?$")
_CHOICE_PREFIX_RE = re.compile(
    r"^(?:\\(?:text|textbf|mathrm|mathbf)\s*\{\s*)?\(([A-Ja-j])\)\s*\}?(?:\s|$)")
# after "(B) ...": another letter or a connective makes it several choices ("(B) or (C)")
_OTHER_CHOICE_RE = re.compile(r"\(\s*[A-Ja-j]\s*\)|(?<![A-Za-z])(?:or|and)(?![A-Za-z])", re.IGNORECASE)
_WRAPPER_RE = re.compile(r"^\\(?:text|textbf|textit|textrm|mathrm|mbox|mathbf|boxed|fbox)\s*\{(.*)\}$",
                         re.S)
_WORDS_RE = re.compile(r"^[A-Za-z][A-Za-z\s\-']*$")


def _looks_like_math(content: str) -> bool:
    """Is the inside of ``\\text{...}`` math (``5``, ``x``, ``(B)``) rather than words?"""
    s = content.strip()
    if not s:
        return False
    if _MATH_CHARS_RE.search(s):
        return True
    return len(s) <= 1


def _unwrap(text: str) -> str:
    """Strip wrappers around the whole answer: $...$, \\text{...}, \\boxed{...}, a final period."""
    s = text.strip()
    for _ in range(10):
        before = s
        s = s.strip().strip("$").strip()
        if s.startswith("\\(") and s.endswith("\\)") or s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2].strip()
        if s.endswith(".") and not re.search(r"\d\.$", s[-2:]):
            s = s[:-1].rstrip()
        m = _WRAPPER_RE.match(s)
        if m is not None:
            try:
                inner, end = _read_group(s, s.index("{"))
            except ParseError:
                break
            if end == len(s):
                s = inner
        if s == before:
            break
    return s


def normalize_text(text: str) -> str:
    """Lower-case words with single spaces, the form :class:`Text` answers are kept in."""
    return " ".join(re.sub(r"[^a-z0-9\s]", " ", text.lower()).split())


def _word_answer(s: str) -> Text | None:
    """A word answer (``east``, ``Evelyn``, ``no solution``), or None if it reads as math."""
    if not _WORDS_RE.match(s):
        return None
    words = [w for w in re.split(r"[\s\-']+", s) if w]
    if any(len(w) >= 3 and w.lower() not in MATH_WORDS for w in words):
        return Text(normalize_text(s))
    return None


_SMALL_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}


def number_from_words(s: str) -> int | None:
    """An English number written in words (``five``, ``twenty-one``, ``one hundred and
    five``, ``minus three``, ``a thousand``), or None (rule W)."""
    words = [w for w in re.split(r"[\s\-]+", s.lower().strip()) if w and w != "and"]
    if not words:
        return None
    sign = 1
    if words[0] in ("minus", "negative"):
        sign, words = -1, words[1:]
    if words and words[0] in ("a", "an"):
        words = words[1:]
    if not words:
        return None
    total = current = 0
    prev = ""  # kind of the previous word: small, tens, hundred, scale
    for w in words:
        if w in _SMALL_NUMBERS:
            if prev in ("small",) or prev == "tens" and _SMALL_NUMBERS[w] >= 10:
                return None  # "five six", "twenty twelve": not one number
            current += _SMALL_NUMBERS[w]
            prev = "small"
        elif w in _TENS:
            if prev in ("small", "tens"):
                return None
            current += _TENS[w]
            prev = "tens"
        elif w == "hundred" and prev in ("", "small") and current < 10:
            current = (current or 1) * 100
            prev = "hundred"
        elif w in _SCALES and prev != "scale":
            total += (current or 1) * _SCALES[w]
            current = 0
            prev = "scale"
        else:
            return None
    return sign * (total + current)


def _prepare(text: str) -> str:
    if not isinstance(text, str):
        raise ParseError(f"an answer must be a str, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ParseError(f"answer is {len(text)} characters long; at most {MAX_CHARS} are parsed")
    for ch in text:
        if "\ud800" <= ch <= "\udfff":
            raise ParseError(f"answer holds a lone surrogate U+{ord(ch):04X}")
    for src, dst in _UNICODE.items():
        if src in text:
            text = text.replace(src, dst)
    return text


@lru_cache(maxsize=4096)
def parse_answer(text: str, percent: str = "either") -> Parsed:
    """Parse one final answer (the inside of ``\\boxed{}``, the text after ``####``, ...).

    ``percent`` is what ``x\\%`` (or ``x percent``) is: ``"number"`` x, ``"fraction"``
    x/100, ``"either"`` x/100 with x as another reading (rule P).

    Returns a :class:`Parsed`; raises :class:`ParseError` (with where and why) for text
    it cannot read, for input longer than ``MAX_CHARS`` or nested deeper than
    ``MAX_DEPTH``. Never evaluates text as code; giant powers stay unevaluated.
    """
    if percent not in PERCENT_MODES:
        raise ValueError(f"percent must be one of {PERCENT_MODES}, got {percent!r}")
    s = _unwrap(_prepare(text))
    if not s:
        raise ParseError("empty answer")
    m = _CHOICE_RE.match(s) or _CHOICE_PREFIX_RE.match(s)
    if m is not None and not _OTHER_CHOICE_RE.search(s, m.end()):
        return Parsed(Choice(m.group(1).upper()), source=text)
    if _WORDS_RE.match(s):
        n = number_from_words(s)
        if n is not None:
            return Parsed(sympy.Integer(n), source=text, numeral=True)
    words = _word_answer(s)
    if words is not None:
        return Parsed(words, source=text)
    try:
        return Parser(s, percent=percent).parse()
    except RecursionError as exc:  # the depth cap should prevent this; keep it an answer error
        raise ParseError("expression nested too deeply") from exc
