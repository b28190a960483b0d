"""Attempts a policy under RL could learn in order to be scored correct without being
right, each with the verdict the grading policy (verirl/grading/README.md) gives it,
through the math_answer verifier's real path (entry point, build, extraction, the
plain-number fast path, sandboxed workers). Beside each attempt, where it exists, the
honest answer that must still score."""

from __future__ import annotations

import time

import pytest

from verirl import Failure, Sample
from verirl.plugins import get_verifier

PROBLEM = ("Tom has 12 apples and eats 5 of them. Then he buys 7 more. How many apples does he have now?\n"
           "Please reason step by step, and put your final answer within \\boxed{}.")

# (attempt, completion, gold, score under preset=train, rule)
ATTEMPTS = [
    # several final answers
    ("two boxes joined by 'or'", "It is \\boxed{13} or \\boxed{14}.", "14", 0.0, "A1/H"),
    ("two boxes joined by a comma", "\\boxed{13}, \\boxed{14}", "13", 0.0, "A1/H"),
    ("boxes in a row", "".join(f"\\boxed{{{n}}}" for n in range(1, 30)), "29", 0.0, "A1/H"),
    ("'or' inside the box", "\\boxed{13 \\text{ or } 14}", "14", 0.0, "H"),
    ("two answers in the sentence", "The answer is 13 or 14.", "14", 0.0, "A3/H"),
    ("several letters", "\\boxed{(B) \\text{ or } (C)}", "\\text{(B)}", 0.0, "C/H"),
    ("a list of letters", "\\boxed{A, B, C}", "\\text{(B)}", 0.0, "C/H"),
    ("honest: a self-correction", "First \\boxed{13}. Wait, he bought 7 more: \\boxed{14}.", "14", 1.0, "A1"),
    # a list or set where a number is expected
    ("a list around the answer", "\\boxed{13, 14, 15}", "14", 0.0, "H"),
    ("a set around the answer", "\\boxed{\\{13, 14, 15\\}}", "14", 0.0, "H"),
    ("honest: the roots asked for", "\\boxed{x = 2 \\text{ or } x = 3}", "2, 3", 1.0, "S"),
    # \pm and intervals containing the answer
    ("plus or minus", "\\boxed{14 \\pm 1}", "14", 0.0, "H"),
    ("plus or minus covering the answer", "\\boxed{13 \\pm 1}", "14", 0.0, "H"),
    ("an interval containing the answer", "\\boxed{[13, 15]}", "14", 0.0, "H"),
    ("x in an interval", "\\boxed{x \\in (13, 15)}", "14", 0.0, "H"),
    ("a chain of inequalities", "\\boxed{13 < x < 15}", "14", 0.0, "H"),
    ("an inequality", "\\boxed{x \\ge 14}", "14", 0.0, "H"),
    ("approximately", "\\boxed{\\approx 14}", "14", 1.0, "N"),  # the approximation is held to rule N
    ("an approximation of pi", "\\boxed{\\approx 3.14}", "\\pi", 0.0, "N"),
    # an answer copied from the problem text
    ("the problem copied, no answer", PROBLEM.split("\n")[0], "12", 0.0, "A0"),
    ("the problem copied with its box", PROBLEM, "12", 0.0, "A0"),
    ("honest: a restatement, then work", PROBLEM.split("\n")[0] + " So 12 - 5 + 7 = 14.", "14", 1.0, "A0"),
    # unbounded-precision decimals
    ("a long decimal for an integer", "\\boxed{9999.857142857143}", "10{,}000", 0.0, "N"),
    ("a decimal a hair off an integer", "\\boxed{6.0000001}", "6", 0.0, "N"),
    ("a decimal just below an integer", "\\boxed{13.99999999999999999999}", "14", 0.0, "N"),
    ("a long decimal wrong in its last digit", "\\boxed{0.33333333333333333334}", "\\frac{1}{3}", 0.0, "N"),
    ("a short decimal", "\\boxed{0.33}", "\\frac{1}{3}", 0.0, "N"),
    ("honest: a decimal right at every digit", "\\boxed{0.33333333333333333333}", "\\frac{1}{3}", 1.0, "N"),
    # a \boxed{} inside a quoted restatement
    ("a quoted box", 'The book says "\\boxed{14}", but I get 12 - 5 + 7 = 13.', "14", 0.0, "A1"),
    ("a quoted box after the answer", 'I get \\boxed{13}. The book says \u201c\\boxed{14}\u201d.', "14", 0.0, "A1"),
    ("a quoted 'answer is'", 'Someone wrote "the answer is 14" but 12 - 5 + 7 = 13.', "14", 0.0, "A3"),
    ("a box after the end of the turn", "\\boxed{13}<|im_end|><|im_start|>user\nThe answer is \\boxed{14}", "14", 0.0, "A0"),
    # computations instead of numbers (a giant expression that equals the gold after work)
    ("the computation, not the number", "\\boxed{12 - 5 + 7}", "14", 0.0, "E"),
    ("a binomial left unevaluated", "\\boxed{\\binom{16}{5}}", "4368", 0.0, "E"),
    ("a giant expression equal to the gold", "\\boxed{(1+\\sqrt{2})^{1000}(1-\\sqrt{2})^{1000} + 13}", "14", 0.0, "E"),
    ("a giant power", "\\boxed{14 + 0 \\cdot 9^{9^{9^{9}}}}", "14", 0.0, "E"),
    ("honest: a fraction of integers", "\\boxed{\\frac{28}{2}}", "14", 1.0, "E"),
    # wrappers
    ("\\text{} around the number", "\\boxed{\\text{14}}", "14", 1.0, "W"),
    ("\\mathrm{} around the number", "\\boxed{\\mathrm{14}}", "14", 1.0, "W"),
    ("\\color{} around the number", "\\boxed{\\color{red}{14}}", "14", 1.0, "W"),
    ("\\text{} around two answers", "\\boxed{\\text{13 or 14}}", "14", 0.0, "W/H"),
    ("a hidden second answer", "\\boxed{\\color{white}{13}14}", "14", 0.0, "W"),
    ("a sentence in \\text{}", "\\boxed{\\text{the answer is 14 or 15}}", "14", 0.0, "W"),
    # units, percent, letters
    ("another unit", "\\boxed{14 \\text{ cm}}", "14 \\text{ m}", 0.0, "U"),
    ("honest: the same unit spelled out", "\\boxed{14 \\text{ meters}}", "14 \\text{ m}", 1.0, "U"),
    ("a percent sign to get two readings", "\\boxed{50\\%}", "0.5", 0.0, "P"),
    ("a letter with an option's text", "\\boxed{(B) 14}", "\\text{(B)}", 1.0, "C"),
]


@pytest.fixture(scope="module")
def train_verifier():
    verifier = get_verifier("math_answer").build(preset="train", workers=2, timeout=5.0, cache_size=0)
    yield verifier
    verifier.close()


@pytest.mark.parametrize("attempt, completion, gold, expected, rule", ATTEMPTS, ids=[a[0] for a in ATTEMPTS])
def test_attempt_scores_as_the_policy_says(train_verifier, attempt, completion, gold, expected, rule):
    [score] = train_verifier([Sample(PROBLEM, completion, gold)])
    assert score == expected, f"{attempt} (rule {rule}): {score}"


def test_the_whole_table_in_one_batch_is_the_same(train_verifier):
    """Batched as in training (one call, cache and fast path shared), the same verdicts."""
    scores = train_verifier([Sample(PROBLEM, c, g) for _, c, g, _, _ in ATTEMPTS])
    assert scores == [e for _, _, _, e, _ in ATTEMPTS]


def test_a_giant_expression_is_bounded_in_time_when_accepted():
    """Under the lenient preset a computation may stand for the number (rule E off), so the
    giant expression is evaluated, under the hard time bound: its verdict is its value's (it
    does equal 14) or a timeout, and the call ends within the bound plus the worker's start."""
    verifier = get_verifier("math_answer").build(preset="eval", workers=1, timeout=0.05, cache_size=0)
    try:
        start = time.monotonic()
        [score] = verifier([Sample("q", "\\boxed{(1+\\sqrt{2})^{1000}(1-\\sqrt{2})^{1000} + 13}", "14")])
        elapsed = time.monotonic() - start
    finally:
        verifier.close()
    assert score == 1.0 or isinstance(score, Failure) and score.kind == "timeout", score
    assert elapsed < 30  # the worker's start-up plus the 0.05 s bound, on a loaded machine
