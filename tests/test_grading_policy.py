"""The written grading policy (verirl/grading/README.md), rule by rule: each rule's cases
under every choice of its switch, the decimal rule against a plain Python reference
loop, the plain-number fast path against the full engine, and the policy's config errors."""

from __future__ import annotations

import itertools
from dataclasses import replace
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from verirl import ConfigError, Sample
from verirl.grading.equiv import equivalent
from verirl.grading.extract import extract_answer, extract_gold
from verirl.grading.judge import is_equivalent, quick_verdict
from verirl.grading.numbers import plain_number, plain_verdict
from verirl.grading.parse import ParseError, Ratio, canonical_unit, number_from_words, parse_answer
from verirl.grading.policy import FIELDS, PRESETS, Policy, make_policy
from verirl.plugins import get_verifier

TRAIN, EVAL = PRESETS["train"], PRESETS["eval"]
POLICIES = {
    "train": TRAIN, "eval": EVAL,
    "exact": make_policy(numeric="exact"), "digits3": make_policy(min_digits=3),
    "rel_tol": make_policy(numeric="rel_tol"), "strip": make_policy(units="strip"),
    "fraction": make_policy(percent="fraction"), "either": make_policy(percent="either"),
    "accept": make_policy(unevaluated="accept"),
}


def verdicts(gold: str, pred: str) -> dict[str, bool]:
    return {name: is_equivalent(pred, gold, pol) for name, pol in POLICIES.items()}


def expect(row: dict[str, bool], **overrides: bool) -> dict[str, bool]:
    """``row``'s verdict for every policy, with the named ones different."""
    return {name: overrides.get(name, row["all"]) for name in POLICIES}


ALL = {"all": True}
NONE = {"all": False}

# (rule, gold, prediction, the verdict under each policy)
RULES = [
    # N: exact values, decimals standing for them, never for an integer
    ("N", "\\frac{1}{2}", "0.5", expect(ALL)),
    ("N", "1500", "1.5\\times10^{3}", expect(ALL)),
    ("N", "\\frac{1}{3}", "0.3333", expect(ALL, exact=False)),
    ("N", "\\frac{2}{3}", "0.6667", expect(ALL, exact=False)),
    ("N", "\\frac{2}{3}", "0.6666", expect(ALL, exact=False)),
    ("N", "\\frac{2}{3}", "0.66669", expect(NONE, eval=True, rel_tol=True)),
    ("N", "\\frac{1}{3}", "0.333", expect(NONE, digits3=True)),
    ("N", "\\pi", "3.1416", expect(ALL, exact=False)),
    ("N", "\\pi", "3.14", expect(NONE, digits3=True)),
    ("N", "\\sqrt{2}", "1.4142135623730951", expect(ALL, exact=False)),
    ("N", "\\frac{\\sqrt{3}}{2}", "0.8660254", expect(ALL, exact=False)),
    ("N", "10{,}000", "9999.857142857143", expect(NONE, eval=True, rel_tol=True)),
    ("N", "6", "6.0000001", expect(NONE, eval=True, rel_tol=True)),
    ("N", "6", "5.9999", expect(NONE, eval=True, rel_tol=True)),
    ("N", "6", "6.0", expect(ALL)),
    ("N", "16386.20", "16386.2", expect(ALL)),
    ("N", "16386.20", "16386.19", expect(NONE, eval=True, rel_tol=True)),
    ("N", "0.5x", "\\frac{x}{2}", expect(ALL)),
    ("N", "\\frac{1}{3}", "x \\approx 0.3333", expect(ALL, exact=False)),
    ("N", "\\frac{1}{3}", "x = \\frac{1}{3} \\approx 0.33", expect(ALL)),
    # T: thousands separators
    ("T", "10000", "10{,}000", expect(ALL)),
    ("T", "10080", "10,\\!080", expect(ALL)),
    ("T", "1000", "1\\,000", expect(ALL)),
    ("T", "1000", "1 000", expect(NONE)),
    ("T", "1.5", "1,5", expect(NONE)),
    ("T", "111", "0,111", expect(NONE)),
    # U: units
    ("U", "5", "5 \\text{ cm}", expect(ALL)),
    ("U", "5\\text{ cm}", "5 centimeters", expect(ALL)),
    ("U", "5\\text{ m}", "5\\text{ cm}", expect(NONE, strip=True, eval=True)),
    ("U", "15\\mbox{ cm}^2", "15 square centimeters", expect(ALL)),
    ("U", "18", "18 dollars", expect(ALL)),
    ("U", "12", "12 apples", expect(ALL)),
    # D: degrees
    ("D", "90^\\circ", "90", expect(ALL)),
    ("D", "90^\\circ", "90 degrees", expect(ALL)),
    ("D", "\\frac{\\pi}{2}", "90^\\circ", expect(NONE)),
    ("D", "\\frac{\\sqrt{3}}{2}", "\\sin 60^\\circ", expect(ALL)),
    ("D", "\\frac{1}{2}", "\\cos(60^{\\circ})", expect(NONE, eval=True, accept=True)),  # and rule E
    # P: percent
    ("P", "28\\%", "28", expect(ALL, fraction=False)),
    ("P", "28", "28\\%", expect(ALL, fraction=False)),
    ("P", "28\\%", "28 percent", expect(ALL)),
    ("P", "0.28", "28\\%", expect(NONE, fraction=True, either=True, eval=True)),
    ("P", "28\\%", "0.28", expect(NONE, fraction=True, either=True, eval=True)),
    # R: ratios
    ("R", "1:2", "2:4", expect(ALL)),
    ("R", "1:2", "2:1", expect(NONE)),
    ("R", "\\frac{1}{2}", "1:2", expect(ALL)),
    ("R", "7:32", "S_{1}:S_{2}=7:32", expect(ALL)),
    ("R", "12:00", "1:00", expect(NONE)),
    # W: words, \text{}
    ("W", "5", "five", expect(ALL)),
    ("W", "21", "twenty-one", expect(ALL)),
    ("W", "105", "one hundred and five", expect(ALL)),
    ("W", "13", "\\text{13}", expect(ALL)),
    ("W", "\\text{east}", "East", expect(ALL)),
    ("W", "\\text{east}", "west", expect(NONE)),
    # C: choice letters
    ("C", "\\text{(B)}", "B", expect(ALL)),
    ("C", "\\text{(B)}", "(B) 42", expect(ALL)),
    ("C", "\\text{(B)}", "(B) or (C)", expect(NONE)),
    ("C", "\\text{(B)}", "A, B", expect(NONE)),
    # S: structure
    ("S", "(1,3)", "\\{1,3\\}", expect(NONE)),
    ("S", "1, 3", "\\{3,1\\}", expect(ALL)),
    ("S", "(1,2,3)", "1, 2, 3", expect(ALL)),
    ("S", "(3,2)", "(p,q)=(3,2)", expect(ALL)),
    ("S", "4", "AB = 4", expect(ALL)),
    ("S", "0", "a + 3z = 0", expect(NONE)),
    ("S", "\\frac{10}{9}", "\\frac{1}{2} = \\frac{10}{9}", expect(ALL)),
    ("S", "[-2,7]", "x \\in [-2,7]", expect(ALL)),
    ("S", "x < 1", "-x > -1", expect(ALL)),
    ("S", "x \\le 5", "5 \\geq x", expect(ALL)),
    ("S", "(0,1)", "0 < f(x) < 1", expect(ALL)),
    ("S", "f(x)", "f(y)", expect(NONE)),
    # E: a number asked for, a computation given
    ("E", "4368", "\\binom{16}{5}", expect(NONE, eval=True, accept=True)),
    ("E", "1024", "2^{10}", expect(NONE, eval=True, accept=True)),
    ("E", "18", "3 \\cdot 6", expect(NONE, eval=True, accept=True)),
    ("E", "1", "\\sin^2 x + \\cos^2 x", expect(NONE, eval=True, accept=True)),
    ("E", "18", "\\frac{36}{2}", expect(ALL)),
    ("E", "18", "x = 18", expect(ALL)),
    ("E", "2\\sqrt{2}", "\\sqrt{8}", expect(ALL)),
    # H: hedging
    ("H", "6", "6 \\pm 1", expect(NONE)),
    ("H", "7", "6, 7, 8", expect(NONE)),
    ("H", "6", "[5, 7]", expect(NONE)),
    ("H", "6", "x \\ge 6", expect(NONE)),
    ("H", "6", "x = 6 \\text{ or } x = 7", expect(NONE)),
]


@pytest.mark.parametrize("rule, gold, pred, expected", RULES, ids=[f"{r[0]}:{r[2]}" for r in RULES])
def test_rule_under_every_policy(rule, gold, pred, expected):
    assert verdicts(gold, pred) == expected


# rows whose prediction is no relation (an equation or inequality as gold means something else)
SYMMETRIC = [r for r in RULES if r[0] in "NSHRW" and not any(c in r[2] for c in ("=", "<", ">", "\\approx", "\\in", "\\ge"))]


@pytest.mark.parametrize("rule, gold, pred, expected", SYMMETRIC, ids=[f"{r[0]}:{r[2]}" for r in SYMMETRIC])
def test_symmetric_rules_hold_both_ways(rule, gold, pred, expected):
    """Numbers, structure, hedging, ratios and words do not depend on which side is gold
    (units, degrees and percent do: a gold's unit is not a prediction's; and rule E, off
    here, refuses an exact value for a gold decimal)."""
    assert {name: is_equivalent(gold, pred, replace(pol, unevaluated="accept"))
            for name, pol in POLICIES.items()} == expected


# ---- rule N against a plain Python reference ---------------------------------------------
def reference_digits(x: Fraction, text: str, min_digits: int) -> bool:
    """Rule N (``digits``) written with the decimal module: the decimal ``text`` stands for
    the exact value ``x`` iff it equals it, or ``x`` is no integer, ``text`` gives at least
    ``min_digits`` significant digits, and it is ``x`` truncated or rounded half-up at its
    number of decimals."""
    d = Decimal(text)
    if Fraction(d) == x:
        return True
    if x.denominator == 1:
        return False
    _, digits, exp = d.normalize().as_tuple()
    if exp >= 0 or len(digits) < min_digits:
        return False
    with localcontext() as ctx:
        ctx.prec = 200
        exact = Decimal(x.numerator) / Decimal(x.denominator)
        quantum = Decimal(1).scaleb(exp)
        candidates = {exact.quantize(quantum, ROUND_DOWN), exact.quantize(quantum, ROUND_HALF_UP)}
    return d in candidates


fractions = st.builds(Fraction, st.integers(-10**6, 10**6), st.integers(1, 10**4))


@settings(max_examples=300, deadline=None)
@given(fractions, st.integers(0, 3), st.integers(1, 12), st.integers(1, 6))
def test_digits_rule_matches_the_reference(x, jitter, places, min_digits):
    """The decimal written for a fraction at ``places`` decimals (truncated, rounded, or
    off by ``jitter`` units in the last place), judged against ``\\frac{p}{q}``."""
    exact = Decimal(x.numerator) / Decimal(x.denominator)
    quantum = Decimal(1).scaleb(-places)
    base = exact.quantize(quantum, ROUND_DOWN if jitter % 2 else ROUND_HALF_UP)
    text = str(base + quantum * (jitter // 2))
    gold = f"\\frac{{{x.numerator}}}{{{x.denominator}}}"
    policy = make_policy(min_digits=min_digits)
    assert is_equivalent(text, gold, policy) == reference_digits(x, text, min_digits), (text, gold)


def test_exact_mode_is_equality_of_values():
    for x, text in [(Fraction(1, 4), "0.25"), (Fraction(1, 3), "0.3333333333"), (Fraction(5), "5.000")]:
        assert is_equivalent(text, f"\\frac{{{x.numerator}}}{{{x.denominator}}}",
                             POLICIES["exact"]) == (Fraction(Decimal(text)) == x)


# ---- the plain-number fast path agrees with the engine ----------------------------------
PLAIN = ["18", "18.0", "18.00", "-18", "19", "1,234", "1234", "1{,}234", "1,\\!234", "\\$18", "$18.5",
         "18.5", "0", "0.0", "-0.0", "0.5", "10000", "9999.857142857143", "9999.9", "6.0000001", "6",
         "+6", "007", "7"]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_plain_verdict_agrees_with_the_engine(name):
    policy = POLICIES[name]
    for pred, gold in itertools.product(PLAIN, repeat=2):
        fast = plain_verdict(pred, gold, policy)
        assert fast is not None, (pred, gold)
        engine = equivalent(parse_answer(pred, policy.percent), parse_answer(gold, policy.percent), policy)
        assert fast == engine, (name, pred, gold)


SAME_TEXTS = ["\\frac{14}{3}", "(3, \\frac{\\pi}{2})", "\\text{Evelyn}", "x \\in [-2, 7]", "6 \\pm 1",
              "9^{9^{9^{9}}}", "\\unknown{5}", "1 000", "2 1/2", "5\\text{ cm}", "28\\%", "p - q"]


@pytest.mark.parametrize("name", ["train", "eval"])
def test_the_same_text_is_the_same_answer_without_the_parser(name):
    policy = POLICIES[name]
    for text in SAME_TEXTS:
        assert quick_verdict(text, "  " + text.replace(" ", "   ") + " ", policy) is True
        try:
            parsed = parse_answer(text, policy.percent)
        except ParseError:
            continue  # unreadable: the same words, which judge() also accepts
        assert equivalent(parsed, parsed, policy), text
    assert quick_verdict("{}", "{}", policy) is None  # no words: the engine reports the gold
    assert quick_verdict("21/2", "2 1/2", policy) is None  # spaces that matter are kept


@pytest.mark.parametrize("text", ["18 dollars", "\\frac{1}{2}", "1,5", "0,111", "1e3", ".5", "18.", "x", "5\\%",
                                  "12345,678", "1 000", "--5"])
def test_plain_number_leaves_everything_else_to_the_engine(text):
    assert plain_number(text) is None


# ---- extraction (rules A0-A5, G) ----------------------------------------------------------
@pytest.mark.parametrize("completion, fallback, expected", [
    ("\\boxed{1}, \\boxed{2}", "last_math", "1, 2"),
    ("\\boxed{5} or \\boxed{6}", "last_math", "5, 6"),
    ("$\\boxed{-2}$ \\quad \\text{and} \\quad $\\boxed{1}$", "last_math", "-2, 1"),
    ("First \\boxed{3}. Wait, that is wrong: \\boxed{4}", "last_math", "4"),
    ("Put your answer in \\boxed{}. So \\boxed{7}. Remember: \\boxed{}", "last_math", "7"),
    ('They wrote "\\boxed{12}" but I get \\boxed{7}.', "last_math", "7"),
    ('I get \\boxed{7}. The book says "\\boxed{12}".', "last_math", "7"),
    ("so \\boxed{5}<|im_end|><|im_start|>user\nthe answer is \\boxed{6}", "last_math", "5"),
    ("Final Answer: The final answer is $14{,}916$. I hope it is correct.", "last_math", "14{,}916"),
    ("Final Answer: The largest $n$ is 34.", "last_math", "34"),
    ("The final answer is:\n\n$\\frac{3}{4}$", "last_math", "\\frac{3}{4}"),
    ("The answer is east.", "last_math", "east"),
    ("Thus $f(-2)+f(0) = \\frac{14}{3}$", "last_math", "f(-2)+f(0) = \\frac{14}{3}"),
    ("Let $x$ be the count; then we get 12 apples", "last_math", "12"),
    ("She pays $18 and spends $5 more.", "last_math", "5"),
    ("\\frac{10}{9}", "last_math", "\\frac{10}{9}"),
    ("x = 5", "last_math", "x = 5"),
    ("AZYUK2A", "last_math", None),
    ("Thus $x \\geq 5$ is the solution.", "last_math", "x \\geq 5"),
    ("Thus $x \\geq 5$ is the solution.", "last_number", "5"),
    ("Thus $x \\geq 5$ is the solution.", "none", None),
])
def test_which_answer_counts(completion, fallback, expected):
    assert extract_answer(completion, fallback) == expected


def test_copies_of_the_problem_are_not_answers():
    problem = "Tom has 12 apples and eats 5 of them. How many are left?\nPut your final answer within \\boxed{}."
    assert extract_answer("Tom has 12 apples and eats 5 of them. How many are left?", problem=problem) is None
    assert extract_answer("Tom has 12 apples and eats 5 of them. So 12 - 5 = 7 are left.", problem=problem) == "7"
    assert extract_answer("Put your final answer within \\boxed{}.", problem=problem) is None


@pytest.mark.parametrize("field, expected", [
    ("We find $\\boxed{1}$ and $\\boxed{2}$.", "1, 2"),
    ("steps\n#### 1,200", "1200"),
    ("A long solution.\nFinal Answer: The final answer is $28 \\%$. I hope it is correct.", "28 \\%"),
    (" (3,4] ", "(3,4]"),
])
def test_gold_fields(field, expected):
    assert extract_gold(field) == expected


# ---- pieces of the rules ------------------------------------------------------------------
@pytest.mark.parametrize("word, unit", [("Centimeters", "cm"), ("cm", "cm"), ("feet", "ft"), ("hours", "hour"),
                                        ("per", None), ("square", None), ("apples", "apple"), ("dollars", "dollar")])
def test_unit_names(word, unit):
    assert canonical_unit(word) == unit


@pytest.mark.parametrize("words, value", [("zero", 0), ("five", 5), ("Twenty-One", 21), ("minus three", -3),
                                          ("a thousand", 1000), ("two thousand and twelve", 2012),
                                          ("five six", None), ("twenty twelve", None), ("east", None)])
def test_number_words(words, value):
    assert number_from_words(words) == value


@pytest.mark.parametrize("text, value, units, numeral", [
    ("5\\text{ cm}", 5, {"cm"}, True),
    ("15\\mbox{ cm}^2", 15, {"cm"}, True),
    ("90^\\circ", 90, {"degree"}, True),
    ("\\sin 30^\\circ", sympy.Rational(1, 2), set(), False),  # an angle, not a unit
    ("2:4", Ratio((2, 4)), set(), True),
    ("S_{1}:S_{2} = 7:32", Ratio((7, 32)), set(), True),
    ("x = \\frac{1}{3} \\approx 0.33", sympy.Eq(sympy.Symbol("x"), sympy.Rational(1, 3)), set(), True),
    ("\\approx 3.14", sympy.Float("3.14"), set(), True),
    ("1.5\\times10^{3}", sympy.Float(1500), set(), True),
    ("3 \\cdot 500", 1500, set(), False),
    ("twenty-one", 21, set(), True),
    ("0 < f(x) < 1", sympy.Interval.open(0, 1), set(), False),
])
def test_what_the_parser_records(text, value, units, numeral):
    parsed = parse_answer(text)
    assert parsed.value == value and set(parsed.units) == units and parsed.numeral == numeral


def test_percent_modes_parse_differently():
    assert parse_answer("50\\%", "number").value == 50
    assert parse_answer("50\\%", "fraction").value == sympy.Rational(1, 2)
    assert set(parse_answer("50\\%", "either").readings) == {50, sympy.Rational(1, 2)}


# ---- the policy as config -------------------------------------------------------------------
def test_presets_and_overrides():
    assert TRAIN == Policy() and TRAIN.numeric == "digits" and TRAIN.units == "match"
    assert EVAL.numeric == "rel_tol" and EVAL.units == "strip" and EVAL.percent == "either"
    assert make_policy("eval", units="match").units == "match"
    assert make_policy("train", numeric="rel_tol", rel_tol=1e-3).rel_tol == 1e-3
    assert set(FIELDS) == {"numeric", "min_digits", "rel_tol", "units", "percent", "unevaluated", "fallback"}


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "strict"}, "preset must be one of train, eval"),
    ({"numeric": "approx"}, "'numeric' must be one of exact, digits, rel_tol"),
    ({"units": "drop"}, "'units' must be one of match, strip"),
    ({"percent": "half"}, "'percent' must be one of number, fraction, either"),
    ({"fallback": "first"}, "'fallback' must be one of last_math, last_number, none"),
    ({"unevaluated": "maybe"}, "'unevaluated' must be one of refuse, accept"),
    ({"min_digits": 0}, "'min_digits' must be an int >= 1"),
    ({"rel_tol": 1e-3}, "'rel_tol' applies only with numeric: rel_tol"),
    ({"numeric": "rel_tol", "rel_tol": 2.0}, "'rel_tol' must be a number in"),
])
def test_bad_policies_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_policy(**kwargs)
    with pytest.raises(ConfigError, match=message):
        get_verifier("math_answer").build(**kwargs)


@pytest.mark.parametrize("preset", ["train", "eval"])
def test_the_verifier_grades_by_its_preset(preset):
    """The real path (entry point, build, fast path and sandbox) under each preset."""
    verifier = get_verifier("math_answer").build(preset=preset, workers=1)
    try:
        scores = verifier([
            Sample("q", "\\boxed{9999.857142857143}", "10{,}000"),  # a decimal for an integer
            Sample("q", "\\boxed{0.28}", "28\\%"),  # a percent as a fraction
            Sample("q", "\\boxed{5\\text{ m}}", "5\\text{ cm}"),  # other units
            Sample("q", "\\boxed{0.3333}", "\\frac{1}{3}"),  # enough digits, all right
        ])
    finally:
        verifier.close()
    assert scores == ([0.0, 0.0, 0.0, 1.0] if preset == "train" else [1.0, 1.0, 1.0, 1.0])
    assert verifier.policy == PRESETS[preset]


# ---- the independent benchmark's explanations cite real rows and rules ---------------------
@pytest.fixture(scope="module")
def independent_bench():
    """``benchmarks/independent_bench.py``: its rows (``load_rows`` checks their ids are
    unique), explanations and ``math_answer`` run, as the benchmark uses them."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("independent_bench")


def test_explanations_name_real_rows_and_written_rules(independent_bench):
    from pathlib import Path

    ids = {r["id"] for r in independent_bench.load_rows(independent_bench.DATA)}
    explained = independent_bench.load_explained(independent_bench.DATA)
    rules = {"A", "A0", "A1", "A2", "A3", "A4", "A5", "G", "N", "E", "T", "U", "D", "P", "S", "R", "W", "C",
             "H", "L", "label"}
    readme = (Path(__file__).resolve().parents[1] / "verirl" / "grading" / "README.md").read_text()
    for preset in ("train", "eval"):
        assert explained[preset], preset
        for row_id, note in explained[preset].items():
            assert row_id in ids, row_id
            assert note["rule"] in rules and note["why"], (row_id, note)
            if note["rule"] != "label":
                assert f"**{note['rule']}**" in readme or f"({note['rule']})" in readme, note["rule"]


def test_every_disagreement_with_the_independent_labels_is_explained(independent_bench):
    """``math_answer`` (train preset, its real path) on the 1,119 rows other graders
    labelled: each verdict that differs from the label is explained in ``explained.json``
    by a written rule, and no explanation is left on a row that now agrees."""
    rows = independent_bench.load_rows(independent_bench.DATA)
    verdicts, _ = independent_bench.run_math_answer(rows, preset="train")
    explained = independent_bench.load_explained(independent_bench.DATA)["train"]
    misses, stale = independent_bench.unexplained(verdicts, rows, explained)
    assert (misses, stale) == ([], [])
