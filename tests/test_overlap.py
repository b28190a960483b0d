"""Scoring while generating: the same scores as one call on the whole batch, in row order,
with the scoring that ran during generation measured; the trainer with it on and off."""

from __future__ import annotations

import time

import pytest

from verirl import hookimpl, verifier
from verirl.overlap import OverlappedScoring, merge_in_row_order
from verirl.plugins import register_plugin, unregister_plugin
from verirl.rewards import RewardBatch, RewardFunction, parse_rewards
from verirl.verifier import Failure, Sample

from test_trainer import make_config, run

SLOW_S = 0.05


@verifier("slow_length")
def slow_length(samples, *, fail_on: str = "x"):
    """len(completion) / 10 after a pause of SLOW_S per call; a timeout failure for completions
    containing ``fail_on``."""
    time.sleep(SLOW_S)
    return [Failure("timeout", "asked to") if fail_on in s.completion else len(s.completion) / 10 for s in samples]


class SlowVerifiers:
    @hookimpl
    def verirl_register_verifiers(self):
        return [slow_length]


@pytest.fixture()
def slow_verifier(toy_verifiers):
    register_plugin(SlowVerifiers(), name="slow-verifiers")
    yield
    unregister_plugin("slow-verifiers")


def _sample(row: int, text: str, n: int) -> Sample:
    return Sample(prompt=f"p{row // 4}", completion=text, answer="1", num_tokens=n, max_tokens=9)


def test_scattered_submissions_give_the_one_call_scores_in_row_order(slow_verifier):
    texts = [f"{i % 3}" * (i % 5 + 1) + ("x" if i == 6 else "") for i in range(12)]
    terms = parse_rewards([{"verifier": "slow_length"}, {"verifier": "starts_with_digit", "weight": 0.5}])
    with RewardFunction(terms) as reward_fn:
        whole = reward_fn([_sample(i, t, len(t)) for i, t in enumerate(texts)])
        scoring = OverlappedScoring(reward_fn, _sample)
        for rows in ([3, 0], [7], [1, 2, 4], [11, 10, 5], [9, 8, 6]):  # the order rows finish in
            scoring.submit(rows, [texts[r] for r in rows], [len(texts[r]) for r in rows])
            time.sleep(2 * SLOW_S)  # the engine keeps generating meanwhile
        merged, overlap = scoring.result(len(texts))
    assert merged.rewards == whole.rewards and merged.scores == whole.scores and merged.steps == whole.steps
    assert merged.failures["slow_length"]["timeout"] == whole.failures["slow_length"]["timeout"] == 1
    assert SLOW_S <= overlap <= merged.seconds + 1e-6  # the scoring that ran while "generating"


def test_scoring_left_for_after_generation_does_not_count_as_overlap(slow_verifier):
    with RewardFunction(parse_rewards([{"verifier": "slow_length"}])) as reward_fn:
        scoring = OverlappedScoring(reward_fn, _sample)
        scoring.submit([0, 1], ["a", "bb"], [1, 2])
        merged, overlap = scoring.result(2)  # generation ends right away
    assert merged.rewards == [0.1, 0.2]
    assert overlap < SLOW_S / 2 < merged.seconds


def test_merge_refuses_a_row_scored_twice_or_never():
    part = RewardBatch([1.0], [{}], [[]], {}, 0.0)
    with pytest.raises(ValueError, match="row 0 was scored twice"):
        merge_in_row_order([([0], part), ([0], part)], 1)
    with pytest.raises(ValueError, match=r"rows \[1\] were never submitted"):
        merge_in_row_order([([0], part)], 2)


def test_trainer_scores_the_same_with_and_without_overlap(char_model, problems_file, tmp_path, slow_verifier):
    rewards = "rewards=[{verifier: slow_length}, {verifier: starts_with_digit}]"
    on = run(make_config(char_model, problems_file, tmp_path / "on", "train.steps=2", rewards,
                         "rollout.max_new_tokens=12"))
    off = run(make_config(char_model, problems_file, tmp_path / "off", "train.steps=2", rewards,
                          "rollout.max_new_tokens=12", "rollout.overlap_rewards=false"))
    for a, b in zip(on, off):
        assert a["reward/mean"] == b["reward/mean"] and a["policy/loss"] == b["policy/loss"]
        assert b["perf/reward_overlap_s"] == 0.0
    assert all(0.0 <= r["perf/reward_overlap_s"] <= r["perf/reward_s"] for r in on)
