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
  ``$3``, ``20%``, ``20 percent``, ``8.333...%``, mixed numbers ``1 1/2``, ``1 and 1/2``
  and ``37\\frac{1}{2}``), ``+ - * / × ÷ · ^ **``, ``x``/``X`` between two operands
  (``0.2 x 50``, ``10x6``; ``2x + 3`` is algebra, not a product), parentheses, a unary
  minus written against its operand (``-3``), multiplication written ``2(3+4)`` with no
  space, ``20% of 50`` and ``3/4 of 120`` (products), and LaTeX: ``\\times \\cdot
  \\div``, ``\\frac{a}{b}`` (also ``\\dfrac``, ``\\tfrac``), braces ``2^{10}``, ``\\$``,
  ``\\%``, ``10{,}000``, ``729,\\!000``, ``\\left( \\right)``. ``≈`` and ``\\approx`` may
  stand for ``=`` (see precision).
- Words as operators and relations, between operands: ``83 plus 91 equals 174``, ``3
  times 4``, ``14 divided by 2 is 7``, ``multiplied by``, ``minus``, ``is equal to``. A
  relation in words claims less than ``=``: a computation on its left, one number on
  its right, no word after that number, and a left side that is the sentence's subject
  (``the units digit of 2 \\times 3 is 6``, ``greater than 49/16 is 4``, ``is 62 with a
  remainder``, ``is 1 followed by 5 zeros`` make no claim), not a lone proper fraction
  (``4/7 is equal to $24`` is a share).
- Units: a number's unit (up to five words, and ``/word`` rates) is dropped where an
  operator or a relation follows it: ``8 pizzas + 6 pizzas = 14 pizzas``, ``$18/bag * 17
  bags = $306``, ``$0.35 per pound * 4 pounds``, ``= $13/day``, ``15kg``. Pronouns,
  articles, connectives and number words (``dozen``, ``thousand``) are never units, nor
  do units start with a preposition. Sums of different measures (``4 pounds - 6 ounces
  = 58 ounces``, ``1 hour + 30 minutes``) and sides in different measures (``6 inches *
  3 feet = .5 feet * 3 feet``) make no claim; counts of different things add up
  (``25 bugs + 50 ants = 75``). A bare number with a unit before ``=`` is a label
  (``8 batches = 5.5 * 8``). Other words and characters end a chain, so ``1 hour = 60
  minutes`` is read as ``= 60`` and is no claim.
- The first expression of a chain is the longest tail of the text before ``=`` that
  parses (``Total: 5 + 3 = 8`` -> ``5 + 3``); the last is the longest head after it
  that parses (``= 8 apples`` -> ``8``). A side that is visibly a fragment of a longer
  expression makes no claim: a left side whose text starts with an operator
  (``students x 2/3 = 40``, ``S + 143 = 200``), one glued to a word before it (``x-5 =
  16``), one after a LaTeX command (``\\sqrt {9+16} = 5``, ``\\sin 30 + 1``), a subscript,
  a radicand or an unknown operator (``a_1 + 2``, ``629_{10}=``, ``\\sqrt[3]{8}=``,
  ``3 \\& 5 =``), or a function's argument (``f \\left( \\frac{1}{2} \\right) =``); a right
  side glued to a word after it (``= 3x``, ``= 5A/5``), followed by a variable or a LaTeX
  command (``= \\frac{3}{5} m``, ``= 2 \\pi``, ``= 0.142857 \\dots``), by an operator that does
  not parse on (``= 10 + x``) or by a product we do not read (``= \\frac{1}{4}\\left(``,
  ``= 2^{3}5^{3}``). Only a list bullet heading a computation (``- 3 + 5 = 8`` at the start
  of a line) or a bare ``(`` may be dropped in front. A bare number right after a word is
  a label, not a left side (``Week 2 = 35 + 35``). Repeating decimals (``0.\\overline{3}``,
  ``0.ababab``) are not read, and a text in modular arithmetic (``\\pmod``, ``\\equiv``,
  ``mod``) makes no claim: ``50^{-1}=24`` is a congruence.
- ``a / b/c`` is ambiguous in prose (``25 / 1/3 = 75``, yet ``500/ 1/10 = 50``): a
  claim false in the usual left-to-right reading holds if it holds with an unspaced
  ``b/c`` after a spaced ``/`` read as one fraction.
- Each ``=`` makes one claim ``left = right``. It is checked only if at least one side
  computes something (has an operator): ``50 = 10`` is usually two quantities whose
  units the words around them carried.
- Run-on chains, as people write them: ``3 * 4 = 12 + 2 = 14`` means ``3*4 = 12`` and
  then ``12 + 2 = 14``. A claim ``left = right`` that is false as written is accepted
  when another ``=`` follows and ``right`` starts with the number ``left`` equals, unless
  ``right`` opens with a parenthesis: in ``(-5 + 7 + 2) = (4 + 2) = 6`` the ``(4 + 2)``
  is an expression of its own, and the claim is false.

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
_MODULAR = re.compile(r"\\[pb]?mod\b|\\equiv\b|\bmod(?:ulo)?\b")
_TOKEN = re.compile(
    r"""
    (?P<time>\d{1,2}:\d\d(?::\d\d)?(?!\d))
    | (?P<repeating>\d*(?:\.\d*)?\\overline|\d+\.[a-z]+)
    | (?P<num>\d{1,3}(?:(?:,|\{,\}|,\\!)\d{3})+(?!\d)(?:\.\d+)?|\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\d/])(?:\.\d+)?
              |\d*\.\d+(?:\.\.\.|…)?|\d+)(?P<pct>\s?\\?%|\s?percent\b)?
    | (?P<latex>\\[A-Za-z]+)
    | (?P<dollar>\\?\$)
    | (?P<skip>\\[,;:! ])
    | (?P<times>[xX](?=[\d.]))
    | (?P<word>[^\W\d]\w*)
    | (?P<op>\*\*|[-+*/^×÷·⋅−–])
    | (?P<rel>[=≈])
    | (?P<lpar>\()
    | (?P<rpar>\))
    | (?P<lbrace>\{)
    | (?P<rbrace>\})
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# "–" (en dash) is the minus sign of much GSM8K text: "120 – 80 - 15".
_OP_ALIASES = {"×": "*", "·": "*", "⋅": "*", "÷": "/", "−": "-", "–": "-", "**": "^"}
_LATEX_OPS = {"\\times": "*", "\\cdot": "*", "\\div": "/"}
_LATEX_RELS = {"\\approx": "≈"}
_LATEX_FRACS = ("\\frac", "\\dfrac", "\\tfrac")
_LATEX_SKIP = ("\\left", "\\right")
# LaTeX commands that may follow a result without changing it: "= 24 \text{ cm}^2".
_LATEX_TEXT = ("\\text", "\\textrm", "\\mbox", "\\quad", "\\qquad", "\\end", "\\hspace")
_BULLETS = ("-", "+", "*")
_RELATIONS = ("=", "≈", "is")
_CLOSING = {"(": ")", "{": "}"}
_GLUE_SYMBOLS = ("_", "'", "’", "@", "#", "&", "|", "~", "]", ".", "\\")
_WORD_OPS = {"plus": "+", "minus": "-", "times": "*"}
_WORD_OPS_BY = {"divided": "/", "multiplied": "*"}  # "divided by", "multiplied by"
# Words that make the expression after them an object, not the subject of an "is".
_BEFORE_OBJECTS = frozenset(
    "of for to in on at with from as into about over than under between among after before by".split()
)
# Words that are never (part of) a unit: connectives, pronouns, verbs of prose ("100/75
# gives the total amount = ..."), and number words that change the value ("5 thousand *
# 2", "2 dozen * 3").
_NOT_UNITS = frozenset(
    "a an the this that these those his her their its my your our he she it they we you "
    "him them us me himself herself itself themselves myself yourself ourselves "
    "and or but so then than because since if when which who while where is are was were "
    "be been has have had will would can could do does did gives give makes make get gets "
    "equals equal to plus minus times divided multiplied by already also all hundred "
    "thousand million billion trillion dozen dozens half halves quarter quarters third "
    "thirds percent".split()
)
# Nor does a unit start with a preposition: "1/3 of Solomon = 66/3" ("per" may: "$3 per pound").
_NOT_FIRST_UNIT_WORDS = frozenset("of for to in on at with from as into about over out".split())
# Units that may be written against their number ("155kg", "68Mb"); "3ab" and "0.25G"
# are algebra, "5m" and "2k" may be millions and thousands.
_UNIT_ABBREVIATIONS = frozenset(
    "kg mg lb lbs oz km cm mm mi ft yd ml gb mb kb tb hr hrs min mins sec secs mph kph am pm".split()
)
_MAX_UNIT_WORDS = 5
_IRREGULAR_PLURALS = {"feet": "foot", "people": "person", "men": "man", "women": "woman",
                      "children": "child", "teeth": "tooth", "mice": "mouse", "geese": "goose"}
# Units of measure (singular): adding two different ones is a conversion, not a sum.
_MEASURES = frozenset(
    "second sec minute min hour hr day week month year decade century ounce oz pound lb "
    "lbs ton gram kilogram kg mg inch foot ft yard yd mile mi meter metre centimeter cm "
    "millimeter mm kilometer km cup gallon quart pint liter litre ml milliliter tablespoon "
    "teaspoon dollar cent penny nickel dime".split()
)


class _TooLarge(Exception):
    """The claim is past a size guard: it is left unchecked."""


class _Undefined(Exception):
    """The expression divides by zero."""


@dataclass(frozen=True)
class _Tok:
    kind: str  # "num", "op", "(", ")", "{", "}", "frac", "=", "≈", "is", "brk" (anything that ends a chain)
    text: str
    start: int
    end: int
    glued: bool  # no whitespace between the previous token and this one ("$" is ignored)
    line_start: bool  # the first token of its line
    value: Fraction | None = None  # a number as written (20% -> 20); None past max_digits
    decimals: int = 0
    percent: bool = False
    word: bool = False  # a "brk" made of letters/digits (a word, a variable)
    unit: frozenset[str] = frozenset()  # a number's dropped unit, singular words ("8 pizzas")


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
        if kind in ("dollar", "skip") or m.group() in _LATEX_SKIP:
            # "$40", "= $ 40", LaTeX "$...$" delimiters, "\$40", "\left(", "\!" alike
            continue
        s, e, word = m.start() + offset, m.end() + offset, m.group()
        common = dict(glued=glued and bool(toks), line_start=line_start)
        if kind in ("num", "pct"):
            digits = re.sub(r"\.\.\.|[…, \u00a0\u202f{}\\!]", "", m.group("num"))
            decimals = len(digits.split(".")[1]) if "." in digits else 0
            ndigits = sum(c.isdigit() for c in digits)
            value = Fraction(digits) if ndigits <= max_digits else None
            tok = _Tok("num", word, s, e, value=value, decimals=decimals,
                       percent=m.group("pct") is not None, **common)
        elif kind in ("time", "repeating"):
            # "6:00 + 48": clock arithmetic is not arithmetic on numbers; "0.\overline{3}"
            # and "0.ababab" are repeating decimals, which we do not read
            tok = _Tok("brk", word, s, e, word=True, **common)
        elif kind == "latex":
            if word in _LATEX_OPS:
                tok = _Tok("op", _LATEX_OPS[word], s, e, **common)
            elif word in _LATEX_RELS:
                tok = _Tok(_LATEX_RELS[word], word, s, e, **common)
            elif word in _LATEX_FRACS:
                tok = _Tok("frac", word, s, e, **common)
            else:
                tok = _Tok("brk", word, s, e, word=True, **common)
        elif kind == "word" or kind == "times":
            if word in ("x", "X"):
                tok = _Tok("op", "x", s, e, **common)  # decided below, by its neighbours
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
        elif kind in ("lbrace", "rbrace"):
            tok = _Tok(word, word, s, e, **common)
        else:
            tok = _Tok("brk", word, s, e, **common)
        toks.append(tok)
        glued = True
        line_start = False
    return _drop_units(_word_signs(_mixed_numbers(toks)))


def _is_int(tok: _Tok) -> bool:
    return tok.kind == "num" and tok.value is not None and tok.decimals == 0 and not tok.percent


def _proper_fraction(toks: list[_Tok], j: int) -> tuple[_Tok, _Tok, int] | None:
    """A fraction of integers ``b < c`` at ``toks[j]``, written ``b/c`` (unspaced, after a
    space) or ``\\frac{b}{c}``: ``(b, c, index after it)``."""
    if (j + 2 < len(toks) and _is_int(toks[j]) and not toks[j].glued
            and toks[j + 1].kind == "op" and toks[j + 1].text == "/" and toks[j + 1].glued
            and _is_int(toks[j + 2]) and toks[j + 2].glued):
        b, c, end = toks[j], toks[j + 2], j + 3
    elif ([t.kind for t in toks[j:j + 7]] == ["frac", "{", "num", "}", "{", "num", "}"]
          and _is_int(toks[j + 2]) and _is_int(toks[j + 5])):
        b, c, end = toks[j + 2], toks[j + 5], j + 7
    else:
        return None
    return (b, c, end) if 0 < b.value < c.value else None


def _mixed_numbers(toks: list[_Tok]) -> list[_Tok]:
    """Merge ``a b/c``, ``a and b/c`` and ``a\\frac{b}{c}`` (integers, ``b < c``, ``/``
    unspaced) into one number."""
    out: list[_Tok] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        j = i + 2 if i + 1 < len(toks) and toks[i + 1].text == "and" else i + 1
        frac = _proper_fraction(toks, j) if _is_int(t) else None
        if frac is not None:
            b, c, i = frac
            out.append(replace(t, text=f"{t.text} {b.text}/{c.text}", end=toks[i - 1].end,
                               value=t.value + b.value / c.value))
        else:
            out.append(t)
            i += 1
    return out


def _operand_end(tok: _Tok | None) -> bool:
    return tok is not None and tok.kind in ("num", ")", "}")


def _operand_start(tok: _Tok | None) -> bool:
    return tok is not None and tok.kind in ("num", "(", "{", "frac")


def _is_word(tok: _Tok | None, *words: str) -> bool:
    return tok is not None and tok.word and tok.text.lower() in words


def _after_fraction_or_percent(out: list[_Tok]) -> bool:
    """Does ``out`` end with ``p%``, or with an unspaced fraction ``a/b`` that no relation
    comes right before (``= 1/3 of $150 left`` states a share, not a product)?"""
    if out and out[-1].kind == "num" and out[-1].percent:
        return True
    return (len(out) >= 3 and _is_int(out[-1]) and out[-1].glued and out[-2].text == "/"
            and out[-2].glued and _is_int(out[-3])
            and not (len(out) >= 4 and out[-4].kind in _RELATIONS))


_EXPRESSION_KINDS = ("num", "op", "(", ")", "{", "}", "frac")


def _is_subject(out: list[_Tok], k: int) -> bool:
    """Is the expression that ``out`` ends with, after ``out[k]``, what an ``is`` after it
    speaks of? Not when a preposition or a list comes shortly before it: ``the units
    digit of 2\\times3 is 6``, ``the smallest integer greater than 49/16 is 4``, ``in the
    sum 6+16+26 is 26``, ``3^2 and 2^2 is 36``."""
    words = 0
    while k >= 0 and out[k].word and words < 3:
        w = out[k].text.lower()
        if w in _BEFORE_OBJECTS or w in ("and", "or") and k > 0 and _operand_end(out[k - 1]):
            return False  # "in the sum 6+16 is", "3^2 and 2^2 is"; not "Yes, and 210 + 91 is"
        k, words = k - 1, words + 1
    return True


def _word_signs(toks: list[_Tok]) -> list[_Tok]:
    """Operators and relations written as words, each decided by its neighbours.

    - ``x`` multiplies only when a number or ``(`` follows it (``0.2 x 50``, ``10x6``); in
      ``2x + 3`` or ``x = 5`` it is a variable, which ends the chain;
    - ``of`` multiplies after a percentage or a fraction, before a number (``20% of 50``,
      ``3/4 of 120``); ``plus``, ``minus``, ``times``, ``divided by``, ``multiplied by``
      between two operands (``83 plus 91``; not ``3 times as many``);
    - ``equals`` and ``is equal to`` are the relation ``is``; so is ``is`` between an
      expression that is the sentence's subject (:func:`_is_subject`) and a number no word
      follows (``210 + 91 is 301``; not ``is 2 more than``, ``is 1 followed by 5 zeros``).
      What ``is`` claims is narrower than ``=``: see :func:`_word_claim`.
    """
    out: list[_Tok] = []
    before = -1  # out[before]: the token before the expression that out ends with
    i = 0
    while i < len(toks):
        t = toks[i]
        prev = out[-1] if out else None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        nxt2 = toks[i + 2] if i + 2 < len(toks) else None
        width = 1  # tokens this one stands for
        if t.kind == "op" and t.text == "x":
            t = replace(t, text="*") if _operand_start(nxt) else replace(t, kind="brk", word=True)
        elif t.word:
            w = t.text.lower()
            # "= 360 divided by 5 is 72": words do not extend a result into a new
            # computation; "6=2\cdot3 is 3" neither
            between = _operand_end(prev) and not (before >= 0 and out[before].kind in _RELATIONS)
            if w == "of" and _after_fraction_or_percent(out) and _operand_start(nxt):
                t = replace(t, kind="op", text="*")
            elif w in _WORD_OPS and between and _operand_start(nxt):
                t = replace(t, kind="op", text=_WORD_OPS[w])
            elif w in _WORD_OPS_BY and between and _is_word(nxt, "by") and _operand_start(nxt2):
                t, width = replace(t, kind="op", text=_WORD_OPS_BY[w], end=nxt.end), 2
            elif w == "equals":
                t = replace(t, kind="is")
            elif w == "is" and _is_word(nxt, "equal") and _is_word(nxt2, "to"):
                t, width = replace(t, kind="is", end=nxt2.end), 3
            elif (w == "is" and between and nxt is not None and nxt.kind == "num"
                  and not (nxt2 is not None and nxt2.word) and _is_subject(out, before)):
                t = replace(t, kind="is")
            if t.kind != "brk":
                t = replace(t, word=False)
        if t.kind not in _EXPRESSION_KINDS:
            before = len(out)
        out.append(t)
        i += width
    return out


def _unit_word(tok: _Tok, before: _Tok, first: bool) -> bool:
    """Can ``tok`` be (part of) a unit? A word of two letters or more that is no
    connective, pronoun or number word (nor, first, a preposition); glued to a number or in
    capitals only if an abbreviation (``15kg``, ``68MB``; not ``3ab``, ``4/AC``)."""
    if tok.kind != "brk" or not tok.word or not tok.text.isalpha():
        return False
    w = tok.text.lower()
    if tok.glued and before.kind == "num" or tok.text.isupper():
        return w in _UNIT_ABBREVIATIONS  # "4/AC", "66/BC": names of lengths
    return len(w) > 1 and w not in _NOT_UNITS and not (first and w in _NOT_FIRST_UNIT_WORDS)


def _singular(word: str) -> str:
    word = word.lower()
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _drop_units(toks: list[_Tok]) -> list[_Tok]:
    """Drop the unit after a number when an operator or a relation follows it:
    ``8 pizzas + 6 pizzas = 14``, ``$18/bag * 17 bags =``, ``3 feet/second * 40 =``,
    ``$0.35 per pound * 4 =``. A unit is up to ``_MAX_UNIT_WORDS`` words (and ``/word``
    rates); what ends it must continue the expression (an unspaced ``/`` before a
    percentage does not: ``3 degrees/5% increase`` is a rate), except that a rate may end
    anywhere (``= $13/day``). The number keeps the unit's words, so that ``4 pounds - 6
    ounces`` is not read as ``4 - 6`` (see :func:`_units_clash`)."""
    out: list[_Tok] = []
    i = 0
    while i < len(toks):
        if out and out[-1].kind == "num":
            j, words, rate = i, [], False
            while j < len(toks) and len(words) <= _MAX_UNIT_WORDS:
                t = toks[j]
                if (t.kind == "op" and t.text == "/" and j + 1 < len(toks)
                        and _unit_word(toks[j + 1], t, not words)):
                    words.append(toks[j + 1].text)
                    j, rate = j + 2, True
                elif _unit_word(t, toks[j - 1], not words):
                    words.append(t.text)
                    j += 1
                else:
                    break
            nxt = toks[j] if j < len(toks) else None
            after = toks[j + 1] if j + 1 < len(toks) else None
            if 0 < len(words) <= _MAX_UNIT_WORDS and (
                rate
                or nxt is not None and nxt.kind in ("=", "≈", "is", ")", "}")
                or nxt is not None and nxt.kind == "op" and nxt.text in "+-*/^"
                and not (nxt.text == "/" and nxt.glued and after is not None and after.percent)
            ):
                out[-1] = replace(out[-1], unit=frozenset(map(_singular, words)))
                i = j
                continue
        out.append(toks[i])
        i += 1
    return out


# --- parsing: tokens -> a tree: ("num", tok) | ("neg", node) | (op, left, right) -------


class _Parser:
    """Recursive descent over one segment (the tokens between two ``=``).

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor | <unspaced> "(" expr ")")*
    factor := "-" factor | "+" factor | power      (not "+" first; "-" first only unspaced)
    power  := atom ("^" factor)?
    atom   := NUM | "(" expr ")" | "{" expr "}" | FRAC "{" expr "}" "{" expr "}"

    ``FRAC`` is LaTeX's ``\\frac`` (``\\dfrac``, ``\\tfrac``), read as a division.
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
            elif t.kind == "(" and (
                t.glued and self.toks[self.i - 1].kind in ("num", ")") or self.toks[self.i - 1].kind == "}"
            ):
                # "2(3+4)": an implicit product only when unspaced, so that in
                # "= 20 (5 x 4)" the parenthesis stays a remark; in LaTeX spaces do not
                # count ("\frac{1}{2} (3)(4)").
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
        if t.kind in _CLOSING:
            return self.enclosed(t.kind)
        if t.kind == "frac":  # \frac{a}{b}
            self.i += 1
            return ("/", self.enclosed("{"), self.enclosed("{"))
        raise SyntaxError(f"unexpected {t.text!r}")

    def enclosed(self, opening: str):
        """``( expr )`` or ``{ expr }``, the opening token next."""
        t = self.peek()
        if t is None or t.kind != opening:
            raise SyntaxError(f"expected {opening!r}")
        self.i += 1
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise SyntaxError("nested too deeply")
        node = self.expr()
        self.depth -= 1
        close = self.peek()
        if close is None or close.kind != _CLOSING[opening]:
            raise SyntaxError("unclosed bracket")
        self.i += 1
        return node


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


def _units(node) -> frozenset[str]:
    if node[0] == "num":
        return node[1].unit
    return frozenset().union(*(_units(child) for child in node[1:]))


def _units_clash(node) -> bool:
    """Does the expression add or subtract measures in different units (``4 pounds - 6
    ounces``, ``1 hour + 30 minutes``)? Then it is no plain sum. Counts of different
    things add up (``25 bugs + 50 ants = 75 insects``)."""
    if node[0] == "num":
        return False
    if node[0] in ("+", "-"):
        a, b = _units(node[1]) & _MEASURES, _units(node[2]) & _MEASURES
        if a and b and not a & b:
            return True
    return any(_units_clash(child) for child in node[1:])


def _word_claim(left, right) -> bool:
    """What a relation written in words (``is``, ``equals``) claims: a computation on the
    left and its result, one number, on the right (``210 + 91 is 301``). A proper
    fraction on its own is a share of something, not a value (``4/7 is equal to $24``)."""
    if not _has_op(left) or _literal(right) is None:
        return False
    share = (left[0] == "/" and left[1][0] == "num" and left[2][0] == "num"
             and _is_int(left[1][1]) and _is_int(left[2][1]) and 0 < left[1][1].value < left[2][1].value)
    return not share


def _pair_verdict(left, right, rel: str) -> str:
    """``"right"``/``"wrong"``/``"skip"`` (no claim)/``"unchecked"`` (too large), for
    the relation ``rel`` (``=``, ``≈`` or ``is``)."""
    if not (_has_op(left) or _has_op(right)) or _units_clash(left) or _units_clash(right):
        return "skip"
    measures_l, measures_r = _units(left) & _MEASURES, _units(right) & _MEASURES
    if measures_l and measures_r and measures_l != measures_r:
        return "skip"  # "6 inches * 3 feet = .5 feet * 3 feet": a change of units
    if rel == "is" and not _word_claim(left, right):
        return "skip"
    approx = rel == "≈"
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
    # A bullet ("- 3 + 5 = 8") heads a computation; "+ 1 = \frac{9}{2}" goes on from the line before.
    bullet = len(cut) == 1 and cut[0].text in _BULLETS and cut[0].line_start and _has_op(node)
    if cut and not (bullet or all(t.kind == "(" for t in cut)):
        # "students x 2/3 =", "$100+($100*(10/100) =": the tail of a longer expression;
        # "1/2 (68) + 10 =": an implicit product we do not read.
        return None, []
    first = seg[0]
    if before is not None and before.text in _GLUE_SYMBOLS and (first.glued or not _has_op(node)):
        # "a_1 + 2 =", "629_{10}=", "f'(2) =", "\sqrt[3]{8}=", "x@3 =", "3 \& 5 =": a
        # subscript, a name, a root's radicand, the operand of an operator we do not know
        return None, []
    if before is not None and before.word and len(before.text) == 1 and first.kind == "(":
        return None, []  # "f \left( \frac{1}{2} \right) =": a function's argument
    if before is not None and before.word and (first.glued or before.text.startswith("\\")):
        # "x-5", "because1+1": the expression goes on into the word; "\sqrt {9+16}",
        # "\sin 30 + 1": it is a LaTeX function's argument
        return None, []
    if before is not None and before.word and not _has_op(node):
        return None, []  # "Week 2 = 35 + 35", "Remaining 10 = ...": a label, not a value
    if not _has_op(node) and _literal(node).unit:
        return None, []  # "8 batches = 5.5 * 8": a label too
    return node, toks


def _right_side(seg: list[_Tok], after: _Tok | None, whole, tight: bool):
    """The expression after an ``=``: ``(node, tokens)`` or ``(None, [])``."""
    if whole is not None:
        if after is not None and after.word and (
            after.glued and after.text.lower() not in _UNIT_ABBREVIATIONS
            or len(after.text) == 1 and seg[-1].kind == "}"
            or after.text.startswith("\\") and after.text not in _LATEX_TEXT
        ):
            # "= 5A/5", "= 40x", "= -\frac{3}{5} m", "= 2 \pi": a coefficient, not a
            # value ("= 155kg" is one); "= 0.142857 \dots": the number goes on
            return None, []
        return whole, seg
    node, n = _parse_prefix(seg, tight)
    nxt = seg[n] if node is not None else None
    if node is None or nxt.kind == "op" or (
        nxt.kind in ("(", "{", "frac", "num") and (nxt.glued or seg[n - 1].kind in ("}", ")"))
    ):
        # "= 10 + x ...", "= \frac{1}{4}\left(...", "= 2^{3}5^{3}": the expression goes
        # on past what we can read
        return None, []
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
        if t.kind in _RELATIONS:
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
            verdict = _pair_verdict(left, right, rels[k - 1])
            # "(4 + 2)" is written as an expression of its own: never a run-on.
            if (verdict == "wrong" and whole is not None and not last
                    and right_toks[0].kind != "(" and _run_on(left, right)):
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
            if any(t.kind in _RELATIONS for t in run):
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
    if _MODULAR.search(text):
        return []  # "50^{-1}=24" (mod 1199): a congruence, not an equality of numbers
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
