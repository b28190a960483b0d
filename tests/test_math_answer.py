"""The math_answer verifier: equivalence of every answer form (both directions, with
negatives), extraction from realistic completions, agreement on real dataset rows, and
the verifier's real path (entry point -> build -> sandboxed scoring -> cache)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from verirl import ConfigError, Failure, Sample
from verirl.grading.extract import extract_answer, extract_gold
from verirl.grading.judge import GoldAnswerError, is_correct, is_equivalent, judge
from verirl.grading.policy import make_policy
from verirl.plugins import get_verifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")

# (gold, prediction): equivalent
EQUIVALENT = [
    ("18", "18.0"), ("18", "\\$18"), ("18", "18 dollars"), ("18", "\\frac{36}{2}"),
    ("18", "1.8\\times10^1"), ("18", "1.8e1"), ("1500", "1.5\\times 10^{3}"),
    ("\\frac{1}{2}", "0.5"), ("\\frac{1}{2}", "\\dfrac{1}{2}"), ("\\frac{1}{2}", "\\frac12"),
    ("\\frac{1}{3}", "0.33333"), ("\\pi", "3.14159"), ("\\frac{5}{2}", "2\\frac{1}{2}"),
    ("137 \\frac{1}{2}", "137.5"), ("50", "50\\%"),
    ("10,\\!080", "10080"), ("\\$32,\\!348", "32,348"), ("0", "0.0"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt{6}}"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"), ("-2 + 7i", "7i-2"),
    ("x=3", "3"), ("3", "x = 3"), ("y = 2x + 3", "y=3+2x"), ("y = -2x", "-2x"),
    ("5x - 7y + 11z + 4 = 0", "-5x + 7y - 11z - 4 = 0"),
    ("x^2+2x+1", "(x+1)^2"), ("6r^2-4r-24", "2(3r^2-2r-12)"),
    ("\\cot x", "\\frac{\\cos x}{\\sin x}"), ("\\sin^2 x + \\cos^2 x", "1"),
    ("(1,2)", "(1, 2)"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("(1,-16,-4,43)", "1, -16, -4, 43"),
    ("[1,2)", "[1, 2)"), ("(2,\\infty)", "x > 2"), ("(-\\infty, 0]", "x \\le 0"),
    ("x \\in [-2,7]", "[-2, 7]"), ("(0,9) \\cup (9,36)", "(9,36)\\cup(0,9)"),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, 8/3]"),
    ("\\{1,2\\}", "\\{2,1\\}"), ("1, 2", "2, 1"), ("-2,1", "x=1, x=-2"),
    ("1 \\pm \\sqrt{19}", "1-\\sqrt{19}, 1+\\sqrt{19}"),
    ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt5, 1-\\sqrt5"), ("3, 5, 7", "\\{3,5,7\\}"),
    ("1 \\text{ and } 2", "2, 1"),
    ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}"),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{bmatrix} -1 & 0 \\\\ 0 & -1 \\end{bmatrix}"),
    ("\\begin{pmatrix} -18 \\\\ -49 \\\\ 96 \\end{pmatrix}", "(-18, -49, 96)"),
    ("\\text{(B)}", "B"), ("\\text{(B)}", "(B)"), ("\\text{(B)}", "B)"), ("\\text{(B)}", "\\textbf{(B)}"),
    ("\\text{east}", "East"), ("\\text{Evelyn}", "\\text{evelyn}"),
    ("106^\\circ", "106"), ("15\\mbox{ cm}^2", "15"), ("204_5", "204_5"),
    ("9^{9^{9^{9}}}", "9^{9^{9^{9}}}"),
    ("\\frac{1}{3}", "0.\\overline{3}"), ("\\frac{1}{6}", "0.1\\overline{6}"), ("1000", "1\\,000"),
    ("\\text{(B)}", "\\textbf{(B) } 42"), ("5.50", "\\$5.50 per hour"), ("4", "x = 4 \\text{ or } x=4"),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{\\frac{1}{2}}"), ("(a+5)(b+2)", "ab+2a+5b+10"),
]

# (gold, prediction): not equivalent
NOT_EQUIVALENT = [
    ("17", "71"), ("\\pi", "3.14"), ("10080", "10081"), ("18", "-18"), ("18", "19"),
    ("\\frac{1}{3}", "0.333"), ("\\frac{1}{2}", "\\frac{2}{1}"), ("0", "0.00001"),
    ("[1,2)", "(1,2]"), ("[1,2)", "[1,2]"), ("(2,\\infty)", "[2,\\infty)"), ("(2,\\infty)", "x \\ge 2"),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty, 2] \\cup (3, \\infty)"),
    ("(1,2)", "(2,1)"), ("(1,-16,-4,43)", "-16, 1, -4, 43"),
    ("\\{1,2\\}", "\\{1,2,3\\}"), ("1, 2", "1"), ("x^2+2x+1", "(x-1)^2"),
    ("y=2x+3", "y=2x+4"), ("2\\sqrt{2}", "\\sqrt{2}"),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & 1 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\text{(B)}", "(C)"), ("\\text{(B)}", "D"), ("\\text{east}", "west"),
    ("9^{9^{9^{9}}}", "3"), ("3", "\\frac{1}{0}"), ("-2 + 7i", "-2 - 7i"),
    ("\\frac{1}{3}", "0.\\overline{4}"), ("4", "x = 4 \\text{ or } x = 5"), ("(a+5)(b+2)", "ab+2a+5b"),
]


@pytest.mark.parametrize("gold, pred", EQUIVALENT)
def test_equivalent_both_directions(gold, pred):
    assert is_equivalent(pred, gold), f"{pred!r} should equal {gold!r}"
    # the other way round a computation may stand where a number is the gold (rule E)
    assert is_equivalent(gold, pred, make_policy(unevaluated="accept")), f"{gold!r} should equal {pred!r}"


@pytest.mark.parametrize("gold, pred", NOT_EQUIVALENT)
def test_not_equivalent_both_directions(gold, pred):
    assert not is_equivalent(pred, gold), f"{pred!r} should differ from {gold!r}"
    assert not is_equivalent(gold, pred), f"{gold!r} should differ from {pred!r}"


def test_tolerance_is_a_parameter():
    assert not is_equivalent("3.14", "\\pi")
    assert is_equivalent("3.14", "\\pi", make_policy(numeric="rel_tol", rel_tol=1e-3))
    # exact values never use the tolerance: big integers that differ by one differ
    assert not is_equivalent("100001", "100000", make_policy(numeric="rel_tol", rel_tol=1e-3))


def test_unparseable_gold_is_an_error_not_a_zero():
    with pytest.raises(GoldAnswerError, match="cannot be parsed"):
        judge("5", "\\foo{bar}")
    assert judge("\\foo{bar}", "\\foo{bar}")  # the same text still matches
    assert not judge("\\foo{", "5")  # an unreadable prediction is simply wrong


# ---- extraction -----------------------------------------------------------------------
@pytest.mark.parametrize("completion, expected", [
    ("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18"),
    ("We get $x = \\frac{1}{2}$, so the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("First \\boxed{3}, but wait, correcting: \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("The roots are \\boxed{x = 1, x = 2}", "x = 1, x = 2"),
    ("nested \\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),
    ("\\fbox{42}", "42"),
    ("so it is \\boxed 7 apples", "7"),
    ("truncated \\boxed{12} and then \\boxed{\\frac{1}{", "12"),
    ("So the total cost is 5 + 7 = 12.\nThe answer is 12.", "12"),
    ("Therefore, the final answer is: $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("**Final Answer:** 1,234 dollars", "1,234 dollars"),
    ("Q: what is 2+2?\nA: 4", "4"),
    ("I think we need 3 buses, then 5 more, so 8 in total", "8"),
    ("The temperature dropped to -7 degrees.", "-7"),
    ("Revenue was 1,250,000 this year", "1250000"),
    ("no numbers at all", None),
])
def test_extract_answer_from_completions(completion, expected):
    assert extract_answer(completion) == expected


def test_fallback_can_be_turned_off():
    assert extract_answer("so 8 in total", fallback="none") is None
    assert extract_answer("so \\boxed{8} in total", fallback="none") == "8"


def test_extract_gold_from_solutions():
    assert extract_gold("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18") == "18"
    assert extract_gold("#### 1,200") == "1200"
    assert extract_gold("so $\\boxed{\\frac{\\pi}{2}}$.") == "\\frac{\\pi}{2}"
    assert extract_gold(" (3,4] ") == "(3,4]"


# ---- real data ------------------------------------------------------------------------
def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f]


def test_gsm8k_gold_answers_match_their_solutions_numbers():
    """The number a GSM8K solution ends on (its last number, with the ``####`` line
    removed) against the gold answer. Measured on the whole test split: 1282/1319 =
    97.2%; the misses are solutions whose last sentence mentions another number."""
    rows = _rows(DATA / "gsm8k" / "test.jsonl")
    agree = 0
    for row in rows:
        solution = row["answer"]
        body = solution[:solution.rfind("####")]
        gold = extract_gold(solution)
        assert is_correct(solution, gold)  # the full solution always matches itself
        agree += is_correct(body, gold)
    assert agree / len(rows) >= 0.96, f"{agree}/{len(rows)}"


def test_gsm8k_gold_answers_in_other_forms():
    rows = _rows(DATA / "gsm8k" / "test.jsonl")[:200]
    for row in rows:
        gold = extract_gold(row["answer"])
        g = int(gold)
        assert is_equivalent(f"{g}.0", gold)
        assert is_equivalent(f"\\${g:,}", gold)
        assert is_equivalent(f"\\frac{{{2 * g}}}{{2}}", gold)
        assert not is_equivalent(str(g + 1), gold)
        assert not is_equivalent(str(-g), gold) or g == 0


def test_math500_answers_match_the_boxed_answer_of_their_solution():
    """MATH-500: the ``answer`` field against the last ``\\boxed{}`` of the
    ``solution``, both directions, through the whole completion path. Measured: 500/500."""
    rows = _rows(DATA / "math" / "math500_test.jsonl")
    agree = sum(is_correct(row["solution"], row["answer"]) and
                is_equivalent(row["answer"], extract_gold(row["solution"])) for row in rows)
    assert agree / len(rows) >= 0.99, f"{agree}/{len(rows)}"


def test_math500_answers_are_not_equivalent_to_their_neighbours():
    """Each MATH-500 answer against the next row's answer: almost all must differ (the
    few true coincidences, like two answers of 3, are counted and bounded)."""
    rows = _rows(DATA / "math" / "math500_test.jsonl")
    same = sum(is_equivalent(a["answer"], b["answer"]) for a, b in zip(rows, rows[1:]))
    literal = sum(a["answer"].strip() == b["answer"].strip() for a, b in zip(rows, rows[1:]))
    assert same - literal <= 5, (same, literal)


# ---- the verifier's real path -----------------------------------------------------------
@pytest.fixture(scope="module")
def math_answer():
    verifier = get_verifier("math_answer").build(timeout=2.0, workers=2)
    yield verifier
    verifier.close()


def test_registered_through_the_entry_point():
    spec = get_verifier("math_answer")
    assert spec.kind == "outcome"
    assert spec.plugin == "math_answer"
    assert {"preset", "numeric", "min_digits", "rel_tol", "units", "percent", "fallback", "timeout",
            "workers", "correct", "incorrect", "cache_size", "extract_gold"} <= set(spec.param_names())


def test_scores_a_batch(math_answer):
    samples = [
        Sample("q", "She makes 9 * 2 = $18.\n#### 18", "Janet ... #### 18"),
        Sample("q", "so the answer is $\\boxed{\\dfrac{1}{2}}$", "0.5"),
        Sample("q", "The answer is 71.", "17"),
        Sample("q", "\\boxed{[1,2)}", "We find $\\boxed{(1,2]}$."),
        Sample("q", "no idea", "5"),
        Sample("q", "\\boxed{3}", ""),  # no gold: the verifier does not apply
    ]
    assert math_answer(samples) == [1.0, 1.0, 0.0, 0.0, 0.0, None]


def test_cache_hits_and_custom_scores():
    verifier = get_verifier("math_answer").build(workers=1, correct=2.0, incorrect=-1.0)
    try:
        samples = [Sample("q", "\\boxed{4}", "4"), Sample("q", "\\boxed{5}", "4")]
        assert verifier(samples) == [2.0, -1.0]
        judged = verifier.stats["judged"]
        assert verifier(samples) == [2.0, -1.0]
        assert verifier.stats["judged"] == judged and verifier.stats["cache_hits"] == 2
    finally:
        verifier.close()


def test_timeout_returns_a_failure_for_that_sample_only():
    # 5 ms is far below what comparing cot x with cos x / sin x takes (tens of ms)
    verifier = get_verifier("math_answer").build(timeout=0.005, workers=1, cache_size=0)
    try:
        scores = verifier([Sample("q", "\\boxed{\\frac{\\cos x}{\\sin x}}", "\\cot x"),
                           Sample("q", "no answer", "3")])
    finally:
        verifier.close()
    assert isinstance(scores[0], Failure) and scores[0].kind == "timeout"
    assert scores[1] == 0.0
    assert verifier.stats["timeouts"] == 1


def test_unparseable_gold_is_a_failure(math_answer):
    [score] = math_answer([Sample("q", "\\boxed{5}", "\\unknowncommand{5}")])
    assert isinstance(score, Failure) and score.kind == "error"
    assert "cannot be parsed" in score.cause


def test_bad_params_are_config_errors():
    spec = get_verifier("math_answer")
    with pytest.raises(ConfigError, match="no param 'timout'.*accepted params: preset, .*timeout"):
        spec.build(timout=1.0)
    with pytest.raises(ConfigError, match="'timeout' must be > 0"):
        spec.build(timeout=0.0)
    with pytest.raises(ConfigError, match="'workers' must be int"):
        spec.build(workers="2")


def test_parallel_scoring_of_many_samples(math_answer):
    rows = _rows(DATA / "gsm8k" / "test.jsonl")[:300]
    samples = [Sample(r["question"], r["answer"], r["answer"]) for r in rows]
    start = time.monotonic()
    scores = math_answer(samples)
    assert scores == [1.0] * len(rows)
    assert time.monotonic() - start < 30
