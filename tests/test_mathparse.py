"""The safe answer parser: every answer form it reads, the values it builds, and the
errors (with their causes) for text it must refuse."""

from __future__ import annotations

import time

import pytest
import sympy
from sympy import E, I, Eq, FiniteSet, ImmutableMatrix, Interval, Rational, Symbol, Tuple, Union, oo, pi, sqrt

from verirl.grading.parse import (
    MAX_CHARS,
    AnswerList,
    Choice,
    ParseError,
    Text,
    parse_answer,
    tokenize,
)

x, y, z, k, n, r = (Symbol(s) for s in "xyzknr")


def value(text: str):
    return parse_answer(text).value


@pytest.mark.parametrize("text, expected", [
    ("18", 18),
    ("-3", -3),
    ("1,234", 1234),
    ("10,\\!080", 10080),
    ("11,\\! 111,\\! 111,\\! 100", 11111111100),
    ("1{,}000", 1000),
    ("\\$18.90", sympy.Float("18.9")),
    ("$18", 18),
    ("18 dollars", 18),
    ("\\frac{36}{2}", 18),
    ("\\dfrac{17}{50}", Rational(17, 50)),
    ("\\tfrac{3}{4}", Rational(3, 4)),
    ("\\frac12", Rational(1, 2)),
    ("\\frac 34", Rational(3, 4)),
    ("\\frac9{19}", Rational(9, 19)),
    ("3/4", Rational(3, 4)),
    ("2\\frac{1}{2}", Rational(5, 2)),
    ("2 1/2", Rational(5, 2)),
    ("137 \\frac{1}{2}", Rational(275, 2)),
    ("-2\\frac12", Rational(-5, 2)),
    ("\\frac{3}{2}x", Rational(3, 2) * x),  # a fraction of a symbol is a product, not mixed
    ("50\\%", Rational(1, 2)),
    ("1.5e3", 1500),
    ("1.5\\times10^{3}", 1500),
    ("1.8\\times10^1", 18),
    ("2^{10}", 1024),
    ("2**10", 1024),
    ("\\sqrt{2}", sqrt(2)),
    ("\\sqrt[3]{8}", 2),
    ("11\\sqrt2", 11 * sqrt(2)),
    ("2\\pi", 2 * pi),
    ("2 \\cdot 3", 6),
    ("\\left( 3 \\right)", 3),
    ("\\infty", oo),
    ("-\\infty", -oo),
    ("106^\\circ", 106),
    ("30^{\\circ}", 30),
    ("5.4 \\text{ cents}", sympy.Float("5.4")),
    ("15\\mbox{ cm}^2", 15),
    ("-2 + 7i", -2 + 7 * I),
    ("e^{2}", E**2),
    ("(a+5)(b+2)", (Symbol("a") + 5) * (Symbol("b") + 2)),
    ("8n^2 + 4n + 1", 8 * n**2 + 4 * n + 1),
    ("2k+2", 2 * k + 2),
    ("\\cot x", sympy.cot(x)),
    ("\\sin^2 x", sympy.sin(x) ** 2),
    ("\\log_2 8", 3),
    ("\\ln(e)", 1),
    ("5!", 120),
    ("\\binom{5}{2}", 10),
    ("|{-3}|", 3),
    ("\\lfloor 2.5 \\rfloor", 2),
    ("x_1", Symbol("x_1")),
    ("204_5", 54),
    ("4210_{5}", 555),
    (".35625", sympy.Float("0.35625")),
    ("0.\\overline{3}", Rational(1, 3)),
    ("0.1\\overline{6}", Rational(1, 6)),
    ("2.\\overline{27}", Rational(25, 11)),
    ("1\\,000", 1000),
    ("\\frac{270}7\\text{ degrees}", Rational(270, 7)),
])
def test_scalar_forms(text, expected):
    got = value(text)
    expected = sympy.S(expected)  # a trusted Python number from this file
    assert got == expected or sympy.simplify(got - expected) == 0, (text, got)


def test_decimals_are_inexact_and_fractions_exact():
    assert isinstance(value("0.5"), sympy.Float)
    assert value("\\frac{1}{2}") == Rational(1, 2)
    assert isinstance(value("1,234"), sympy.Integer)


def test_readings_of_percent_and_base_numbers():
    assert parse_answer("50\\%").readings == (Rational(1, 2), 50)
    assert parse_answer("2516_8").readings == (1358, 2516)


@pytest.mark.parametrize("text, expected", [
    ("x = 3", Eq(x, 3, evaluate=False)),
    ("(1, 2)", Tuple(1, 2)),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", Tuple(3, pi / 2)),
    ("(1,-16,-4,43)", Tuple(1, -16, -4, 43)),
    ("(12,102)", Tuple(12, 102)),  # inside brackets a comma separates
    ("(10,\\!080, 3)", Tuple(10080, 3)),  # ... unless it is a marked thousands separator
    ("[1, 2)", Interval.Ropen(1, 2)),
    ("(1,2]", Interval.Lopen(1, 2)),
    ("[-2,7]", Interval(-2, 7)),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", Interval.Lopen(Rational(3, 5), Rational(8, 3))),
    ("(-\\infty, 2) \\cup (3, \\infty)", Union(Interval.open(-oo, 2), Interval.open(3, oo))),
    ("x \\in [-2,7]", Interval(-2, 7)),
    ("0 < x \\le 5", Interval.Lopen(0, 5)),
    ("\\{1,2\\}", FiniteSet(1, 2)),
    ("\\{1\\pm\\sqrt{5},-2\\}", FiniteSet(1 + sqrt(5), 1 - sqrt(5), -2)),
    ("\\emptyset", sympy.S.EmptySet),
    ("\\langle 1, 2 \\rangle", Tuple(1, 2)),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", ImmutableMatrix([[-1, 0], [0, -1]])),
    ("\\begin{bmatrix} 1/5 \\\\ -18/5 \\end{bmatrix}",
     ImmutableMatrix([[Rational(1, 5)], [Rational(-18, 5)]])),
    ("\\begin{array}{cc} 1 & 2 \\end{array}", ImmutableMatrix([[1, 2]])),
])
def test_structured_forms(text, expected):
    assert value(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("1, 2", AnswerList((1, 2))),
    ("x=1, x=2", AnswerList((Eq(x, 1, evaluate=False), Eq(x, 2, evaluate=False)))),
    ("1 \\text{ and } 2", AnswerList((1, 2))),
    ("3 or 4", AnswerList((3, 4))),
    ("3 \\pm 2 \\sqrt{2}", AnswerList((3 + 2 * sqrt(2), 3 - 2 * sqrt(2)))),
    ("(B)", Choice("B")),
    ("\\text{(C)}", Choice("C")),
    ("\\textbf{(E)}", Choice("E")),
    ("D", Choice("D")),
    ("(b) 42", Choice("B")),
    ("\\text{east}", Text("east")),
    ("\\text{Evelyn}", Text("evelyn")),
    ("no solution", Text("no solution")),
])
def test_lists_choices_and_words(text, expected):
    assert value(text) == expected


def test_wrappers_are_removed():
    assert value("$\\boxed{\\frac{1}{2}}$") == Rational(1, 2)
    assert value("\\(42\\).") == 42
    assert value("\\text{5}") == 5


def test_huge_powers_are_not_computed():
    start = time.monotonic()
    for text in ("9^{9^{9^{9}}}", "10**10**10", "2^{2^{2^{2^{2}}}}", "99999!", "(10^{100})!",
                 "\\binom{10^{9}}{10^{4}}", "(x+1)^{10^{6}}"):
        parsed = parse_answer(text)
        assert parsed.huge, text
    assert time.monotonic() - start < 2.0
    assert not parse_answer("2^{100}").huge
    assert parse_answer("2^{100}").value == 2**100


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("\\frac{1}{0}", "division by zero"),
    ("(" * 5000 + "1" + ")" * 5000, "characters long"),
    ("(" * 600 + "1" + ")" * 600, "nesting deeper"),
    ("-" * 1000 + "1", "nesting deeper"),
    ("2^" * 300 + "2", "nesting deeper"),
    ("1\ud800", "lone surrogate"),
    ("__import__('os').system('ls')", "expected a value"),
    ("lambda: 1", "unexpected word 'lambda'"),
    ("exec('1')", "unexpected word 'exec'"),
    ("1" * 1001, "more than 1000 digits"),
    ("1e99999", "exponent"),
    ("(5, 3]", "reversed"),
    ("(1, 2", "expected ')' or ']'"),
    ("\\foo{1}", "unknown or misplaced LaTeX command \\foo"),
    ("\\begin{align} 1 \\end{align}", "unsupported environment"),
    ("2 + (1, 2)", "cannot use Tuple"),
    ("1 @ 2", "unexpected character '@'"),
    ("\\", "lone backslash"),
])
def test_refusals_name_the_problem(text, message):
    start = time.monotonic()
    with pytest.raises(ParseError, match=message.replace("\\", "\\\\").replace("(", "\\(")
                       .replace(")", "\\)").replace("[", "\\[").replace("]", "\\]")):
        parse_answer(text)
    assert time.monotonic() - start < 1.0


def test_length_cap_is_checked_first():
    start = time.monotonic()
    with pytest.raises(ParseError, match=f"at most {MAX_CHARS}"):
        parse_answer("x" * 1_000_000)
    assert time.monotonic() - start < 0.5


def test_tokenizer_positions_and_kinds():
    toks = tokenize("\\frac{1}{2} + x_1")
    assert [(t.kind, t.val) for t in toks] == [
        ("cmd", "frac"), ("op", "{"), ("num", "1"), ("op", "}"), ("op", "{"), ("num", "2"),
        ("op", "}"), ("op", "+"), ("id", "x"), ("op", "_"), ("num", "1"), ("eof", "")]
    assert toks[7].pos == 12 and toks[7].space


def test_parser_never_calls_eval(monkeypatch):
    # the parser must not reach Python's eval/exec or sympy's string parsers at all
    import builtins

    import sympy.parsing.sympy_parser as sp_parser

    def forbidden(*args, **kwargs):
        raise AssertionError("string evaluation was called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(sp_parser, "parse_expr", forbidden)
    monkeypatch.setattr(sympy, "sympify", forbidden)
    parse_answer.cache_clear()
    for text in ("\\frac{\\sqrt{3}}{2} + x^2", "(1, 2]", "\\{1, 2\\}", "x = 3",
                 "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "1.5e3", "\\sin^2 x + \\cos^2 x"):
        parse_answer(text)
