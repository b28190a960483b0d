"""arith_steps: exact checking of arithmetic claims, per step, on real GSM8K text."""

from __future__ import annotations

import json
import random
import re
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verirl import ConfigError, Sample, Step
from verirl.plugins import get_verifier
from verirl.verifiers.arith_steps import find_claims, step_verdicts

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
needs_gsm8k = pytest.mark.skipif(not GSM8K.is_dir(), reason=f"GSM8K not found at {GSM8K}")

# Gold GSM8K solutions in which a claim is false as written. Found by running the
# verifier over the whole files and reading every flagged line (the report says how).
GOLD_ARITHMETIC_ERRORS = {
    "train": {
        167: "192*100=$1920",
        168: "6*2.5 = $<<6*3=18.00>>18.00",
        198: "6/3=.5 (meant 3/6)",
        224: "4080 + 4080 / 2 = 4000 + 2040",
        502: "3/1=1",
        552: "16,0000/10=16000",
        716: "100 * 0.75 = $0.75",
        3002: "8*3 = <<80*3=240>>240",
        3233: ".8 + . 84 + .82 = 2.46",
        3334: "$4200+$3000 = $8600",
        3409: "10 x .5 = 10",
        4691: "2*8 = 24",
        4973: "200*.55=100",
        5195: "5 x 1/2 = 10 (meant 5 / (1/2))",
        5781: "7+9+1+2 = $19.50",
        6157: "70 + 40 = 100",
        6256: "10 x 1,248 = 11,480",
        6498: "14, 400 / 80 = 180",
        6700: "2 / 12 = .125 (meant 2 / 16)",
        6713: "3 x (8/16) = 6",
        6760: "4+4+6 = 18",
        6812: "50-8 = <<52-8=44>>44",
        6842: "500/ 2/5 = 200 (meant 500 * 2/5)",
        7178: "1152/ 1,536 = .5",
        7270: "13,2000 / 60 = 220",
        7444: "14*20=140",
    },
    "test": {501: "364 / 4 = <<3/4*364=273>>273", 1024: "$32 - $20 = $300"},
}
# Flagged lines that are not arithmetic slips but prose whose "=" is not equality of
# numbers: a unit change, a quotient with a remainder, clock times, a range, a label.
GOLD_NOT_EQUALITIES = {
    "train": {
        657: "0900-0130 = 0730 (clock times)",
        874: "$1 / 2 = 50 cents (dollars to cents)",
        2429: "$2.50 - $2.24 = 26 cents",
        3640: "100 / 6= 16 and (2/3)",
        3859: "5 * 3 = $15,000 (5 thousand dollars)",
        4504: "13 / 6 = 2 full cycles with a remainder",
        4593: "14 / 1 / 4 = 14 * 4 (meant 14 / (1/4), spaced)",
        5396: "on day 1 * 2 = <<10*2=20>>20",
        6590: "Weeks 1-2 = 96 - 70",
    },
    "test": {958: "48 = 100% + 20% = 120%"},
}


def verdicts(text: str) -> list[str]:
    return [c.verdict for c in find_claims(text)]


def rows(split: str) -> list[dict]:
    with open(GSM8K / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# --- what counts as a claim, and when it holds --------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 * 4 = 12", ["right"]),
        ("3 * 4 = 13", ["wrong"]),
        ("3 * 4 = 12 + 2 = 14", ["right", "right"]),  # a run-on chain
        ("3 * 4 = 13 + 2 = 15", ["wrong", "right"]),
        ("3 * 4 = 12 + 2 = 15", ["right", "wrong"]),
        ("(2 + 3) * 4 = 20", ["right"]),
        ("2 + 3 * 4 = 14", ["right"]),
        ("2 + 3 * 4 = 20", ["wrong"]),
        ("2(3+4) = 14", ["right"]),
        ("$1,200 - $200 = $1,000", ["right"]),
        ("600 x 30 = 18 000 watts", ["right"]),
        ("0.2 x 50 = 10", ["right"]),
        ("12 × 3 ÷ 4 = 9", ["right"]),
        ("12 \\times 3 \\div 4 = 9", ["right"]),
        ("2^10 = 1024", ["right"]),
        ("2**10 = 1024", ["right"]),
        ("-3 + 5 = 2", ["right"]),
        ("120 – 80 - 15 = 25", ["right"]),  # GSM8K's en-dash minus
        ("20% of 50 = 10", ["right"]),
        ("50 * 20% = 10", ["right"]),
        ("20/100 * 100 = 20%", ["right"]),  # percentage points
        ("100% - 20% = 80%", ["right"]),
        ("8 x 1 1/2 = 12", ["right"]),  # mixed numbers
        ("12 x 1 and 1/4 = 15", ["right"]),
        ("25 / 1/3 = 75", ["right"]),  # dividing by a fraction
        ("500/ 1/10 = 50", ["right"]),  # ... or not: either reading
        ("5/0 = 3", ["wrong"]),
        ("48/2 = <<48/2=24>>24 clips", ["right", "right"]),  # annotation, then inline
        ("48/2 = <<48/2=25>>24 clips", ["wrong", "right"]),
        ("48/2 = <<48/2=24>>25 clips", ["right", "wrong"]),
        # no claim: a bare number on each side, algebra, units, fragments, labels
        ("1 hour = 60 minutes", []),
        ("50 = 10", []),
        ("11x+15=301", []),
        ("x = 5", []),
        ("2x = 10", []),
        ("100/5 = 5A/5 or 20 = A", []),
        ("60 students x 2/3 = 40 students", []),
        ("He works M + 4 + 2 = 8 hours", []),
        ("Week 1 + Week 2 = 35 + 35 = 70", ["right"]),  # only "35 + 35 = 70"
        ("1/2 (68) + 10 = 44", []),
        ("6:00+48=6:48 PM", []),
        ("The answer is 42.", []),
        ("#### 72", []),
    ],
)
def test_claims(text: str, expected: list[str]) -> None:
    assert verdicts(text) == expected


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("10/3 = 3.33", "right"),  # rounded
        ("10/3 = 3.3", "right"),
        ("2/3 = 0.67", "right"),  # rounded up
        ("2/3 = 0.66", "right"),  # truncated
        ("-2/3 = -0.66", "right"),
        ("-2/3 = -0.67", "right"),
        ("10/3 = 3.34", "wrong"),
        ("2/3 = 0.68", "wrong"),
        ("-2/3 = -0.68", "wrong"),
        ("10/3 = 3", "wrong"),  # integers are exact
        ("10/3 ≈ 3", "right"),
        ("10/3 \\approx 4", "wrong"),
        ("1/3 = 33.33%", "right"),
        ("1/3 = 33.4%", "wrong"),
        ("3.33 = 10/3", "right"),  # the single number may be on the left
        ("1/8 = 0.125", "right"),
        ("1/8 = 0.13", "right"),
        ("1/8 = 0.14", "wrong"),
    ],
)
def test_precision_rule(text: str, verdict: str) -> None:
    assert verdicts(text) == [verdict]


def test_claim_spans_index_the_text() -> None:
    text = "So Natalia sold 48/2 = <<48/2=24>>24 clips, and 3 * 4 = 12 + 2 = 14 pens."
    spans = [text[c.start:c.end] for c in find_claims(text)]
    assert spans == ["48/2=24", "48/2 = <<48/2=24>>24", "3 * 4 = 12 + 2", "12 + 2 = 14"]
    assert [c.source for c in find_claims(text)] == ["annotation"] + ["inline"] * 3


# --- the rule checked against an independent evaluation ------------------------------

_leaf = st.one_of(
    st.integers(0, 2000).map(lambda n: (Fraction(n), f"{n:,}" if n >= 1000 else str(n), False)),
    st.integers(0, 9999).map(lambda n: (Fraction(n, 100), f"{n // 100}.{n % 100:02d}", False)),
)


def _combine(children):
    def build(parts):
        (a, sa, ca), op, (b, sb, cb) = parts
        if op == "/" and b == 0:
            b, sb, cb = Fraction(7), "7", False
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
        return value, f"{f'({sa})' if ca else sa} {op} {f'({sb})' if cb else sb}", True

    return st.tuples(children, st.sampled_from("+-*/"), children).map(build)


# (exact value, text, has an operator); every compound child is parenthesised, so the
# expected value never depends on the parser's precedence rules.
_expr = st.recursive(_leaf, _combine, max_leaves=6).filter(lambda e: e[2])


def _fixed(n: int, places: int) -> str:
    """The integer ``n`` scaled by ``10**-places``, written with exactly ``places`` decimals."""
    sign = "-" if n < 0 else ""
    whole, frac = divmod(abs(n), 10**places)
    return f"{sign}{whole}.{frac:0{places}d}"


def big_verdicts(text: str) -> list[str]:
    return [c.verdict for c in find_claims(text, max_digits=80)]


@settings(max_examples=300, deadline=None)
@given(_expr, st.integers(1, 9))
def test_random_expressions_are_checked_exactly(expr, delta) -> None:
    value, text, _ = expr
    exact = f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value)
    assert big_verdicts(f"{text} = {exact}") == ["right"]
    assert big_verdicts(f"{text} = {exact} + {delta}") == ["wrong"]
    if value.denominator == 1:
        assert big_verdicts(f"{text} = {value + delta}") == ["wrong"]
    else:
        n = round(value * 10**4)
        assert big_verdicts(f"{text} = {_fixed(n, 4)}") == ["right"]
        # two units of the last written place away: neither rounded nor truncated
        assert big_verdicts(f"{text} = {_fixed(n + 2, 4)}") == ["wrong"]
        assert big_verdicts(f"{text} = {_fixed(n - 2, 4)}") == ["wrong"]


# --- the verifier: steps, spans, rewards ----------------------------------------------


def test_verifier_scores_each_line_with_exact_spans() -> None:
    score = get_verifier("arith_steps").build()
    completion = (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n\n"
        "  She sold 48+24 = <<48+24=73>>73 clips altogether.  \n"
        "So the answer is 72.\n"
        "#### 72"
    )
    (steps,) = score([Sample(prompt="q", completion=completion)])
    assert all(isinstance(s, Step) for s in steps)
    assert [completion[s.char_start:s.char_end] for s in steps] == [
        line.strip() for line in completion.splitlines() if line.strip()
    ]
    assert [s.reward for s in steps] == [1.0, -1.0, 0.0, 0.0]


def test_params_set_rewards_and_sentence_split() -> None:
    score = get_verifier("arith_steps").build(split="sentences", correct=0.5, wrong=-2, neutral=0.1)
    completion = "First 3 + 4 = 7. Then 7 * 2 = 15. Done."
    (steps,) = score([Sample(prompt="", completion=completion)])
    assert [completion[a:b] for a, b, _ in steps] == ["First 3 + 4 = 7.", "Then 7 * 2 = 15.", "Done."]
    assert [s.reward for s in steps] == [0.5, -2.0, 0.1]


def test_empty_completion_has_no_steps() -> None:
    assert get_verifier("arith_steps").build()([Sample("q", ""), Sample("q", " \n\n ")]) == [[], []]


def test_bad_params_are_config_errors() -> None:
    spec = get_verifier("arith_steps")
    with pytest.raises(ConfigError, match="'split' must be one of lines, sentences, paragraphs; got 'words'"):
        spec.build(split="words")
    with pytest.raises(ConfigError, match="max_digits"):
        spec.build(max_digits=0)
    with pytest.raises(ConfigError, match="accepted params: split, correct, wrong, neutral"):
        spec.build(right=1.0)


# --- size guards ------------------------------------------------------------------------


def test_huge_numbers_and_powers_are_unchecked_not_slow() -> None:
    t0 = time.perf_counter()
    assert verdicts("2^1000000 = 5") == ["unchecked"]
    assert verdicts("9^9^9 = 5") == ["unchecked"]
    assert verdicts("2^0.5 = 5") == ["unchecked"]
    assert verdicts("1" * 40 + " + 1 = 2") == ["unchecked"]
    assert verdicts("1" * 40 + " + 1 = 2") == ["unchecked"]
    assert find_claims("1" * 31 + " + 1 = 2", max_digits=40)[0].verdict == "wrong"
    # a product of 100 fifteen-digit numbers is 1,500 digits: fine, and exact
    big = " * ".join(["999999999999999"] * 100)
    assert verdicts(f"{big} = {999999999999999 ** 100}") == ["unchecked"]  # RHS past max_digits
    assert find_claims(f"{big} = {999999999999999 ** 100}", max_digits=2000)[0].verdict == "right"
    assert time.perf_counter() - t0 < 5


def test_pathological_text_is_fast() -> None:
    texts = [
        "(" * 5000 + "1" + ")" * 5000 + " = 1",
        "1 + " * 20000 + "1 = 20001",
        "= " * 20000,
        "- " * 20000 + "3 = 3",
        ("3 * 4 = 12 " * 3000),
        "<<" + "1+" * 1000 + "1=1001>>",
        "1" * 100000 + " = 2",
    ]
    for text in texts:
        t0 = time.perf_counter()
        step_verdicts(text, max_step_chars=10**6)
        assert time.perf_counter() - t0 < 10, text[:40]
    # past max_step_chars a step is not scanned at all
    long_line = "3 * 4 = 13 " * 1000
    assert step_verdicts(long_line)[0][2] == "neutral"
    assert step_verdicts(long_line, max_step_chars=20000)[0][2] == "wrong"


# --- real GSM8K solutions ------------------------------------------------------------------


@needs_gsm8k
@pytest.mark.parametrize("split", ["train", "test"])
def test_gold_gsm8k_solutions_check_out(split: str) -> None:
    data = rows(split)
    flagged, steps, correct = set(), 0, 0
    for i, row in enumerate(data):
        v = step_verdicts(row["answer"])
        steps += len(v)
        correct += sum(x[2] == "correct" for x in v)
        if any(x[2] == "wrong" for x in v):
            flagged.add(i)
    known = set(GOLD_ARITHMETIC_ERRORS[split]) | set(GOLD_NOT_EQUALITIES[split])
    assert flagged <= known, f"gold rows newly flagged: {sorted(flagged - known)}"
    # every genuine slip in the gold is caught
    assert set(GOLD_ARITHMETIC_ERRORS[split]) <= flagged
    assert len(flagged) / len(data) < 0.006
    # and most steps do make a checkable claim (the "#### N" lines make none)
    assert correct / steps > 0.65


def _corrupt_annotation(answer: str, rng: random.Random):
    """Change the result of one random annotation that computes something (``<<3=3>>``
    claims nothing); return (text, the char offset of the change)."""
    anns = list(re.finditer(r"<<[^<>\n=]*\d[^<>\n=]*?[-+*/][^<>\n=]*=(-?[\d.,]+)>>", answer))
    if not anns:
        return None
    m = rng.choice(anns)
    old = m.group(1).replace(",", "")
    new = Decimal(old) + rng.choice([-1, 1]) * rng.randint(1, 9)
    return answer[: m.start(1)] + str(new) + answer[m.end(1):], m.start(1)


def _corrupt_inline_result(answer: str, rng: random.Random):
    """Change the number ending one random right inline claim; return (text, offset)."""
    ends = []
    for s, e, _ in step_verdicts(answer):
        for c in find_claims(answer[s:e]):
            m = re.search(r"(\d[\d,]*(?:\.\d+)?)$", answer[s + c.start:s + c.end])
            if c.source == "inline" and c.verdict == "right" and m:
                ends.append((s + c.start + m.start(1), s + c.end))
    if not ends:
        return None
    a, b = rng.choice(ends)
    old = answer[a:b].replace(",", "")
    new = Decimal(old) + rng.randint(1, 9)
    return answer[:a] + str(new) + answer[b:], a


@needs_gsm8k
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("corrupt", [_corrupt_annotation, _corrupt_inline_result])
def test_one_corrupted_number_flags_exactly_its_step(seed: int, corrupt) -> None:
    rng = random.Random(seed)
    data = rows("train") + rows("test")
    tried = 0
    for row in rng.sample(data, 400):
        gold = row["answer"]
        before = step_verdicts(gold)
        if any(v == "wrong" for *_, v in before):
            continue  # one of the known gold errors
        out = corrupt(gold, rng)
        if out is None:
            continue
        text, at = out
        after = step_verdicts(text)
        assert len(after) == len(before)
        hit = [i for i, (s, e, _) in enumerate(after) if s <= at < e]
        assert len(hit) == 1
        for i, (b, a) in enumerate(zip(before, after)):
            expected = "wrong" if i == hit[0] else b[2]
            assert a[2] == expected, (text, i, a, b)
        tried += 1
    assert tried > 250


# --- the shared step splitter (verirl.grading.steps) -----------------------------------------------


def test_split_modes() -> None:
    from verirl.grading.steps import split_steps

    text = "Hello there. I have 3.5 apples, e.g. two! Then? ok\n\n  second line  \nthird. Fourth"
    assert [text[a:b] for a, b in split_steps(text, "lines")] == [
        "Hello there. I have 3.5 apples, e.g. two! Then? ok", "second line", "third. Fourth",
    ]
    assert [text[a:b] for a, b in split_steps(text, "sentences")] == [
        "Hello there.", "I have 3.5 apples, e.g. two!", "Then? ok", "second line", "third.", "Fourth",
    ]
    assert [text[a:b] for a, b in split_steps(text, "paragraphs")] == [
        "Hello there. I have 3.5 apples, e.g. two! Then? ok", "second line  \nthird. Fourth",
    ]
    with pytest.raises(ConfigError, match="one of lines, sentences, paragraphs"):
        split_steps(text, "tokens")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab1. !?\n\t ")), max_size=80),
       st.sampled_from(["lines", "sentences", "paragraphs"]))
def test_split_spans_cover_the_text_in_order(text: str, mode: str) -> None:
    from verirl.grading.steps import split_steps

    spans = split_steps(text, mode)
    for (a, b), (c, _) in zip(spans, spans[1:]):
        assert b <= c
    for a, b in spans:
        assert a < b and text[a:b] == text[a:b].strip()
        if mode != "paragraphs":
            assert "\n" not in text[a:b]
    # every non-blank character belongs to exactly one step
    covered = "".join(text[a:b] for a, b in spans)
    assert "".join(covered.split()) == "".join(text.split())


_PIECES = list("0123456789+-*/^()=x.,%$ \n") + ["<<", ">>", "1,000", " 1/2", " of ", " and ", "≈", "\\times", "–", "**", "a"]
_NOISE = st.lists(st.sampled_from(_PIECES), max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(_NOISE)
def test_any_text_gives_well_formed_claims(text: str) -> None:
    for c in find_claims(text):
        assert 0 <= c.start < c.end <= len(text)
        assert c.verdict in ("right", "wrong", "unchecked")
    for start, end, verdict in step_verdicts(text, split="sentences"):
        assert text[start:end].strip() == text[start:end] != ""
        assert verdict in ("correct", "wrong", "neutral")
