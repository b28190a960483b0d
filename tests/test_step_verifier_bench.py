"""benchmarks/step_verifier_bench.py: its scoring functions on hand-made cases, and its
GSM8K injection on real solutions."""

from __future__ import annotations

import json
import random
import sys
from itertools import product
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import step_verifier_bench as bench  # noqa: E402

from verirl.grading.steps import split_steps  # noqa: E402
from verirl.verifiers.arith_steps import step_verdicts  # noqa: E402

DATA = bench.DATA
needs_data = pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason=f"shared data not found at {DATA}")


def pairwise_auroc(wrong: list[float], ok: list[float]) -> float:
    """The definition, pair by pair: a wrong step scoring lower wins, a tie counts half."""
    wins = sum((w < o) + 0.5 * (w == o) for w, o in product(wrong, ok))
    return wins / (len(wrong) * len(ok))


@pytest.mark.parametrize(
    "wrong, ok",
    [
        ([-1.0], [1.0]),  # perfect
        ([1.0], [-1.0]),  # backwards
        ([0.0, 0.0], [0.0, 0.0, 0.0]),  # all ties: chance
        ([-1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0, -1.0, 1.0]),  # arith_steps' three values
        ([0.1, 0.4, 0.4, 0.9], [0.2, 0.4, 0.8, 0.8, 0.95]),
    ],
)
def test_auroc_matches_the_pairwise_definition(wrong, ok) -> None:
    assert bench.auroc(wrong, ok) == pytest.approx(pairwise_auroc(wrong, ok))


def test_auroc_on_random_scores_and_empty_sides() -> None:
    rng = random.Random(0)
    for _ in range(50):
        wrong = [rng.choice([-1.0, 0.0, 1.0, rng.random()]) for _ in range(rng.randint(1, 8))]
        ok = [rng.choice([-1.0, 0.0, 1.0, rng.random()]) for _ in range(rng.randint(1, 8))]
        assert bench.auroc(wrong, ok) == pytest.approx(pairwise_auroc(wrong, ok))
    assert bench.auroc([], [1.0]) is None and bench.auroc([1.0], []) is None


def test_first_flag() -> None:
    assert bench.first_flag([1.0, 0.0, -1.0, -1.0], 0.0) == 2
    assert bench.first_flag([1.0, 0.0], 0.0) is None
    assert bench.first_flag([None, 0.7, 0.3], 0.5) == 2  # unscored steps are skipped
    assert bench.first_flag([], 0.0) is None


def test_join_and_merge_pieces() -> None:
    steps = ["First 3 + 4 = 7.", "Then\n\n7 * 2 = 15.", "Done."]
    text, spans = bench.join_steps(steps)
    assert [text[a:b] for a, b in spans] == steps
    # a multi-line step: its lowest piece, arith_steps' neutral pieces left out
    pieces = [(s, e, {"correct": 1.0, "wrong": -1.0, "neutral": 0.0}[v]) for s, e, v in step_verdicts(text)]
    assert len(pieces) == 4
    assert bench.merge_pieces(spans, pieces, neutral=0.0) == [1.0, -1.0, 0.0]
    # prm-like scores: the lowest piece; a step with no piece is unscored
    assert bench.merge_pieces(spans, [(0, 5, 0.9), (17, 21, 0.8), (23, 34, 0.2)], neutral=None) == [0.9, 0.2, None]
    with pytest.raises(ValueError, match="not inside one labelled step"):
        bench.merge_pieces(spans, [(10, 20, 1.0)], neutral=0.0)


def _bbm(first: int | None, n: int = 4) -> bench.Item:
    labels = [False if first is None or i < first else (True if i == first else None) for i in range(n)]
    return bench.Item("q", [f"step {i}" for i in range(n)], labels, {"first": first})


def test_first_mistake_scoring_on_hand_made_traces() -> None:
    judge = bench.Judge("j", score=None, threshold=0.0, neutral=0.0)
    items = [_bbm(2), _bbm(2), _bbm(1), _bbm(None), _bbm(None), _bbm(3)]
    scores = [
        [1.0, 1.0, -1.0, -1.0],  # exact
        [1.0, -1.0, -1.0, 1.0],  # too early
        [1.0, 0.0, 1.0, -1.0],  # too late: missed
        [1.0, 1.0, 1.0, 1.0],  # no mistake, no flag: right
        [0.0, -1.0, 1.0, 1.0],  # no mistake, a flag: wrong
        None,  # the verifier failed: left out
    ]
    rows = bench.bbm_rows(items, scores, judge)
    assert rows["first-mistake accuracy, all traces"] == "0.400 (2/5)"
    assert rows["  traces with a mistake: exact step"] == "0.333 (1/3)"
    assert rows["  … first flag too early"] == "0.333 (1/3)"
    assert rows["  … mistake missed (no flag at or before it)"] == "0.333 (1/3)"
    assert rows["  traces without a mistake: no flag"] == "0.500 (1/2)"
    # AUROC over labelled steps only (those after the first mistake carry None)
    wrong = [-1.0, -1.0, 0.0]
    ok = [1.0] * 10 + [0.0] + [-1.0] * 2
    assert bench.step_auroc(items, scores) == pytest.approx(pairwise_auroc(wrong, ok))


def test_prm800k_scoring_on_hand_made_items() -> None:
    judge = bench.Judge("j", score=None, threshold=0.0, neutral=0.0)

    def item(ratings, ending):
        labels = [r == -1 for r in ratings]
        first = labels.index(True) if True in labels else None
        return bench.Item("q", ["s"] * len(ratings), labels, {"first": first, "ending": ending, "ratings": ratings})

    items = [item([1, 1, -1], "rejected_step"), item([1, -1], "rejected_step"),
             item([1, 1], "solution"), item([1, 0, 1], "solution"), item([1, 0], "rejected_step")]
    scores = [[1.0, 0.0, -1.0], [0.0, 0.0], [1.0, -1.0], [0.0, 0.0, 1.0], [0.0, 0.0]]
    rows = bench.prm800k_rows(items, scores, judge)
    assert rows["first-error accuracy (items with a -1 step)"] == "0.500 (1/2)"
    assert rows["false flags: correct solutions with any flag"] == "0.500 (1/2)"
    assert rows["false flags: +1 steps flagged"] == "0.125 (1/8)"
    assert rows["steps with a verdict (not neutral)"] == "0.417 (5/12)"


@needs_data
def test_injection_changes_one_result_and_arith_steps_flags_its_line() -> None:
    with (DATA / "gsm8k" / "test.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:60]
    for i, row in enumerate(rows):
        answer = row["answer"]
        first = bench.inject_wrong_result(answer, random.Random(f"0:{i}"))
        assert first == bench.inject_wrong_result(answer, random.Random(f"0:{i}"))  # seeded
        if first is None:
            continue
        text, at = first
        assert len(split_steps(text)) == len(split_steps(answer))
        k = bench.step_at(text, at)
        changed = [j for j, (a, b) in enumerate(zip(text.splitlines(), answer.splitlines())) if a != b]
        assert changed == [k]  # one line changed, and the offset is on it
        verdicts = [v for *_, v in step_verdicts(text)]
        assert verdicts[k] == "wrong"
        stripped, at_stripped = bench.strip_annotations(text, at)
        assert "<<" not in stripped
        assert stripped[at_stripped:].startswith(text[at:at + 3])  # the same visible number


def test_injection_keeps_the_number_format() -> None:
    answer = "So the new value is 120,000+80,000=$<<120000+80000=200000>>200,000\n#### 200000"
    text, at = bench.inject_wrong_result(answer, random.Random(1))
    new = text[text.index("=", text.index("<<")) + 1:text.index(">>")]
    assert new != "200000" and "," not in new
    assert text[at:].split()[0] == f"{int(new):,}"
    assert bench.inject_wrong_result("No annotation here.\n#### 3", random.Random(0)) is None
    decimal = "It costs 2*1.25=$<<2*1.25=2.50>>2.50\n#### 2.5"
    text, at = bench.inject_wrong_result(decimal, random.Random(0))
    assert len(text[at:].split()[0]) == 4 and text[at:].split()[0] != "2.50"  # moved in the last place


def test_strip_annotations_maps_offsets() -> None:
    text = "a <<1+1=2>>2 and <<2*3=6>>6 end"
    stripped, at = bench.strip_annotations(text, text.index("6 end"))
    assert stripped == "a 2 and 6 end" and stripped[at:] == "6 end"


@needs_data
def test_bbm_steps_round_trip_through_split_steps() -> None:
    assert bench.check_round_trip(bench.bbm_items(DATA))
    assert not bench.check_round_trip([bench.Item("q", ["two\nlines"], [False])])
