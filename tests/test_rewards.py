"""Rewards aggregation: weighted sums, fallbacks, failure counting."""

from __future__ import annotations

import logging
import time

import pytest

from verirl import ConfigError, Failure, Sample, Step, hookimpl, verifier
from verirl.plugins import register_plugin, unregister_plugin
from verirl.rewards import RewardFunction, load_rewards, parse_rewards


@verifier("length_ratio")
def length_ratio(samples, *, scale: float = 1.0):
    return [scale * len(s.completion) / 10 for s in samples]


@verifier("flaky")
def flaky(samples, *, mode: str = "raise", sleep: float = 0.0):
    """Misbehaves on purpose, as the mode says."""
    if mode == "raise":
        raise ValueError("boom")
    if mode == "hang":
        time.sleep(sleep)
        return [1.0] * len(samples)
    if mode == "short":
        return [1.0]
    if mode == "garbage":
        return ["high"] + [float("nan")] + [None] + [Failure("timeout", "took too long")] + [1.0] * (len(samples) - 4)
    raise AssertionError(mode)


@verifier("steps", kind="process")
def steps(samples, *, bad_span: bool = False):
    out = []
    for s in samples:
        n = len(s.completion)
        if bad_span:
            out.append([Step(0, n + 5, 1.0)])
        else:
            out.append([Step(0, n // 2, 1.0), Step(n // 2, n, -1.0)])
    return out


class Plugin:
    @hookimpl
    def verirl_register_verifiers(self):
        return [length_ratio, flaky, steps]


@pytest.fixture(autouse=True)
def plugin():
    register_plugin(Plugin(), name="rewards-test")
    yield
    unregister_plugin("rewards-test")


SAMPLES = [Sample("q", "x" * n, "1") for n in (10, 20, 30, 40, 50)]


def test_weighted_sum_and_per_verifier_scores():
    fn = RewardFunction(parse_rewards([
        {"verifier": "length_ratio", "weight": 0.5},
        {"verifier": "length_ratio", "name": "double", "weight": 2.0, "scale": 2.0},
    ]))
    out = fn(SAMPLES)
    for s, reward, scores in zip(SAMPLES, out.rewards, out.scores):
        base = len(s.completion) / 10
        assert scores == {"length_ratio": base, "double": 2 * base}
        assert reward == pytest.approx(0.5 * base + 2.0 * 2 * base)


def test_a_raising_verifier_costs_the_fallback_and_is_logged_once(caplog):
    fn = RewardFunction(parse_rewards([
        {"verifier": "length_ratio"}, {"verifier": "flaky", "fallback": -1.0, "weight": 1.0},
    ]))
    with caplog.at_level(logging.WARNING, logger="verirl.rewards"):
        a = fn(SAMPLES)
        fn(SAMPLES)
    assert a.rewards == [pytest.approx(len(s.completion) / 10 - 1.0) for s in SAMPLES]
    assert a.failures["flaky"]["error"] == len(SAMPLES)
    assert fn.totals["flaky"]["error"] == 2 * len(SAMPLES)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "ValueError: boom" in messages[0]


def test_a_hanging_verifier_times_out_without_stopping():
    fn = RewardFunction(parse_rewards([{"verifier": "flaky", "mode": "hang", "sleep": 5.0, "batch_timeout": 0.3, "fallback": 0.25}]))
    start = time.perf_counter()
    out = fn(SAMPLES)
    assert time.perf_counter() - start < 2.0
    assert out.rewards == [0.25] * len(SAMPLES)
    assert out.failures["flaky"]["timeout"] == len(SAMPLES)


def test_wrong_length_and_malformed_values():
    short = RewardFunction(parse_rewards([{"verifier": "flaky", "mode": "short"}]))(SAMPLES)
    assert short.failures["flaky"]["error"] == len(SAMPLES)
    garbage = RewardFunction(parse_rewards([{"verifier": "flaky", "mode": "garbage", "fallback": -0.5}]))(SAMPLES)
    assert garbage.rewards == [-0.5, -0.5, 0.0, -0.5, 1.0]  # str, nan → error; None → n/a; Failure → timeout
    assert garbage.failures["flaky"] == {"timeout": 1, "error": 2, "not_applicable": 1}
    assert garbage.scores[2]["flaky"] is None


def test_process_verifier_steps_and_reduce():
    out = RewardFunction(parse_rewards([{"verifier": "steps", "weight": 2.0, "reduce": "min"}]))(SAMPLES)
    assert out.rewards == [-2.0] * len(SAMPLES)
    first = out.steps[0]
    assert first == [Step(0, 5, 2.0), Step(5, 10, -2.0)]
    assert out.scores[0]["steps"] == [Step(0, 5, 1.0), Step(5, 10, -1.0)]


def test_outcome_terms_become_whole_completion_steps():
    out = RewardFunction(parse_rewards([{"verifier": "steps"}, {"verifier": "length_ratio", "weight": 3.0}]))(SAMPLES[:1])
    assert out.steps[0] == [Step(0, 5, 1.0), Step(5, 10, -1.0), Step(0, 10, 3.0)] or sorted(out.steps[0], key=lambda s: s.char_end)[-1].char_end == 10
    assert Step(0, 10, 3.0) in out.steps[0]


def test_out_of_range_step_span_is_an_error():
    out = RewardFunction(parse_rewards([{"verifier": "steps", "bad_span": True, "fallback": 0.0}]))(SAMPLES)
    assert out.failures["steps"]["error"] == len(SAMPLES)


@pytest.mark.parametrize("config, match", [
    ([], "non-empty list"),
    ([{"weight": 1.0}], "needs a 'verifier' key"),
    ([{"verifier": "length_ratio", "weight": "heavy"}], "weight must be a number"),
    ([{"verifier": "length_ratio", "reduce": "median"}], "reduce must be one of"),
    ([{"verifier": "length_ratio"}, {"verifier": "length_ratio"}], "names must be unique"),
])
def test_bad_rewards_configs(config, match):
    with pytest.raises(ConfigError, match=match):
        parse_rewards(config)


def test_unknown_param_fails_at_build():
    with pytest.raises(ConfigError, match="no param 'scal'"):
        RewardFunction(parse_rewards([{"verifier": "length_ratio", "scal": 2}]))


def test_rewards_yaml_file(tmp_path):
    path = tmp_path / "rewards.yaml"
    path.write_text("rewards:\n  - verifier: length_ratio\n    weight: 2\n    scale: 0.5\n")
    terms = load_rewards(path)
    assert terms[0].weight == 2.0 and terms[0].params == {"scale": 0.5}
    with pytest.raises(ConfigError, match="not found"):
        load_rewards(tmp_path / "missing.yaml")
