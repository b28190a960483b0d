"""format: answer-shape rewards and DAPO's overlong penalty, through the plugin registry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verirl import ConfigError, Failure, Sample
from verirl.plugins import get_verifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def build(**params):
    return get_verifier("format").build(**params)


def one(score, completion: str, prompt: str = "q", **fields) -> float:
    (result,) = score([Sample(prompt=prompt, completion=completion, **fields)])
    return result


def test_registered_as_outcome_verifier() -> None:
    spec = get_verifier("format")
    assert spec.kind == "outcome"
    assert "require" in spec.param_names() and "overlong_buffer" in spec.param_names()


@pytest.mark.parametrize(
    "completion, expected",
    [
        (r"So the answer is $\boxed{42}$.", 1.0),
        (r"\boxed{\frac{1}{2}}", 1.0),
        (r"\boxed {x^{2}}", 1.0),
        (r"first \boxed{ } then \boxed{7}", 1.0),
        (r"\boxed{ \boxed{5}", 1.0),  # the inner one is complete
        (r"\boxed{}", -0.5),
        (r"\boxed{   }", -0.5),
        (r"\boxed{42", -0.5),
        (r"\boxed 42", -0.5),
        ("The answer is 42.", -0.5),
        ("{42}", -0.5),
    ],
)
def test_boxed(completion: str, expected: float) -> None:
    assert one(build(require="boxed", penalty=-0.5), completion) == expected


@pytest.mark.parametrize(
    "completion, ok",
    [
        ("48/2 = 24\n#### 72", True),
        ("work\n####72\n\n  ", True),
        ("#### -3", True),
        ("#### 1,000", True),
        ("#### $2.50", True),
        ("#### 72\nMore text after it.", False),
        ("#### seventy-two", False),
        ("#### 72 apples", False),
        ("The answer is 72", False),
        ("", False),
    ],
)
def test_gsm8k(completion: str, ok: bool) -> None:
    assert one(build(require="gsm8k", reward=2.0), completion) == (2.0 if ok else 0.0)


def test_gsm8k_gold_solutions_all_have_the_shape() -> None:
    path = DATA / "gsm8k" / "test.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    score = build(require="gsm8k")
    samples = [Sample(prompt=r["question"], completion=r["answer"]) for r in rows]
    assert score(samples) == [1.0] * len(rows)
    # ... and lose it when the final line goes
    stripped = [Sample(prompt=s.prompt, completion=s.completion.rsplit("####", 1)[0]) for s in samples]
    assert score(stripped) == [0.0] * len(rows)


@pytest.mark.parametrize(
    "prompt, completion, ok",
    [
        ("q", "<think>3 + 4 = 7</think> The answer is 7.", True),
        ("q", "\n <think>\nreasoning\n</think>\n\n7", True),
        ("q<think>\n", "reasoning</think>7", True),  # the template opened the tag
        ("q", "reasoning</think>7", False),  # ... but here nothing opened it
        ("q", "<think>reasoning</think>", False),  # no answer
        ("q", "<think>reasoning</think>   \n", False),
        ("q", "<think> \n </think>7", False),  # no reasoning
        ("q", "Sure! <think>reasoning</think>7", False),  # text before the tag
        ("q", "<think>a</think>b</think>c", False),
        ("q", "<think>a<think>b</think>c", False),
        ("q", "<think>a</think>b<think>c", False),
        ("q", "The answer is 7.", False),
    ],
)
def test_think(prompt: str, completion: str, ok: bool) -> None:
    assert one(build(require="think"), completion, prompt=prompt) == (1.0 if ok else 0.0)


@pytest.mark.parametrize(
    "completion, ok",
    [
        ("<think>r</think><answer>7</answer>", True),
        ("<think>r</think>\n<answer>\n7\n</answer>\n", True),
        ("<think>r</think>7", False),
        ("<think>r</think><answer> </answer>", False),
        ("<think>r</think><answer>7</answer> extra", False),
        ("<think>r</think>pre <answer>7</answer>", False),
    ],
)
def test_think_answer(completion: str, ok: bool) -> None:
    assert one(build(require="think_answer"), completion) == (1.0 if ok else 0.0)


def test_custom_think_tags() -> None:
    score = build(require="think", think_open="<reasoning>", think_close="</reasoning>")
    assert one(score, "<reasoning>r</reasoning>7") == 1.0
    assert one(score, "<think>r</think>7") == 0.0


# --- DAPO overlong penalty ------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, expected",
    [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (99, -0.95), (100, -1.0), (101, -1.0), (10_000, -1.0)],
)
def test_overlong_ramp(n: int, expected: float) -> None:
    # L_max = 100, L_cache = 20: free up to 80 tokens, a linear ramp to -1 at 100
    score = build(require="none", overlong_buffer=20, max_tokens=100)
    assert one(score, "x", num_tokens=n) == pytest.approx(expected)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 500), st.integers(0, 500), st.integers(0, 1000))
def test_overlong_matches_the_formula(buffer: int, extra: int, n: int) -> None:
    l_max = buffer + extra
    score = build(require="none", overlong_buffer=buffer)
    got = one(score, "x", num_tokens=n, max_tokens=l_max)  # L_max from the sample
    if n <= l_max - buffer:
        assert got == 0.0
    elif n <= l_max:
        assert got == pytest.approx((l_max - buffer - n) / buffer)
        assert -1.0 <= got < 0.0
    else:
        assert got == -1.0


def test_overlong_is_added_to_the_shape_reward_with_its_weight() -> None:
    score = build(require="boxed", reward=1.0, penalty=-1.0, overlong_buffer=10, max_tokens=50, overlong_weight=0.5)
    assert one(score, r"\boxed{1}", num_tokens=40) == 1.0
    assert one(score, r"\boxed{1}", num_tokens=45) == pytest.approx(1.0 - 0.25)
    assert one(score, "no box", num_tokens=60) == pytest.approx(-1.0 - 0.5)
    # the param wins over the sample's own limit
    assert one(score, r"\boxed{1}", num_tokens=45, max_tokens=1000) == pytest.approx(0.75)


def test_missing_token_counts_are_failures_not_guesses() -> None:
    score = build(require="boxed", overlong_buffer=10)
    no_count, no_limit, small_limit = score([
        Sample("q", r"\boxed{1}", max_tokens=100),
        Sample("q", r"\boxed{1}", num_tokens=5),
        Sample("q", r"\boxed{1}", num_tokens=5, max_tokens=4),
    ])
    assert isinstance(no_count, Failure) and "num_tokens" in no_count.cause
    assert isinstance(no_limit, Failure) and "max_tokens" in no_limit.cause
    assert isinstance(small_limit, Failure) and "exceeds" in small_limit.cause
    # without the penalty, token counts are not needed
    assert build(require="boxed")([Sample("q", r"\boxed{1}")]) == [1.0]


def test_bad_params_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="'require' must be one of boxed, gsm8k, think, think_answer, none; got 'xml'"):
        build(require="xml")
    with pytest.raises(ConfigError, match="scores nothing"):
        build(require="none")
    with pytest.raises(ConfigError, match="must not exceed 'max_tokens'"):
        build(overlong_buffer=200, max_tokens=100)
    with pytest.raises(ConfigError, match=">= 0"):
        build(overlong_buffer=-1)
    with pytest.raises(ConfigError, match="two different non-empty tags"):
        build(require="think", think_close="")
    with pytest.raises(ConfigError, match="param 'reward' must be float"):
        build(reward="high")
    with pytest.raises(ConfigError, match="accepted params: require, reward, penalty"):
        build(shape="boxed")


def test_many_unclosed_boxes_stay_fast() -> None:
    text = r"\boxed{" * 50_000 + "}"
    t0 = time.perf_counter()
    assert one(build(), text) == 0.0  # the one closed box is empty
    assert time.perf_counter() - t0 < 2
