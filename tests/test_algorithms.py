"""Every estimator, policy loss, filter, reference sync and schedule through a real trainer
step on a tiny real model; the schedule and the reference mix-up against hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from verirl.config import ADVANTAGES, POLICY_LOSSES, load_config
from verirl.optim import lr_multiplier
from verirl.trainer import Trainer, sync_reference

from test_trainer import make_config, run


@pytest.fixture(autouse=True)
def plugin(toy_verifiers):
    yield


def one_step(config) -> dict:
    trainer = Trainer(config)
    try:
        return trainer.train_step()
    finally:
        trainer.close()


def _finite(record: dict, *keys: str) -> None:
    for key in keys:
        assert key in record and math.isfinite(record[key]), key


@pytest.mark.parametrize("advantage", [a for a in ADVANTAGES if a != "gae"])
def test_every_estimator_trains(char_model, problems_file, tmp_path, advantage):
    rewards = "rewards=[{verifier: starts_with_digit}, {verifier: halves, weight: 0.5}]"
    record = one_step(make_config(char_model, problems_file, tmp_path, f"algo.advantage={advantage}", rewards,
                                  "rollout.prompts_per_step=2", "rollout.group_size=4"))
    _finite(record, "policy/loss", "policy/grad_norm", "reward/mean")
    if advantage == "remax":
        _finite(record, "rollout/baseline_reward")


@pytest.mark.parametrize("policy_loss", POLICY_LOSSES)
def test_every_policy_loss_trains_off_policy(char_model, problems_file, tmp_path, policy_loss):
    # two epochs of two minibatches: the second pass sees ρ ≠ 1
    record = one_step(make_config(char_model, problems_file, tmp_path, f"algo.policy_loss={policy_loss}",
                                  "algo.ppo_epochs=2", "algo.minibatch_size=16", "algo.micro_batch_size=8",
                                  "algo.cov_frac=0.2"))
    _finite(record, "policy/loss", "policy/clip_frac", "policy/approx_kl", "policy/grad_norm")
    assert record["policy/ratio_max"] != 1.0


@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo"])
def test_process_variants_train(char_model, problems_file, tmp_path, advantage):
    record = one_step(make_config(char_model, problems_file, tmp_path, "algo.reward_mode=process",
                                  f"algo.advantage={advantage}", "rewards=[{verifier: halves}]"))
    _finite(record, "policy/loss")


def test_token_filters_report_what_they_keep(char_model, problems_file, tmp_path):
    record = one_step(make_config(char_model, problems_file, tmp_path, "algo.top_entropy_quantile=0.2",
                                  "algo.off_policy_mask_delta=0.0", "algo.ppo_epochs=2", "algo.minibatch_size=16",
                                  "algo.ent_coef=0.01"))
    _finite(record, "policy/entropy_kept_frac", "policy/off_policy_masked_frac", "policy/entropy_bonus")
    assert 0.1 < record["policy/entropy_kept_frac"] < 0.4


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
@pytest.mark.parametrize("mode", ["token_truncate", "sequence_mask"])
def test_rollout_is_with_the_hf_engine(char_model, problems_file, tmp_path, mode, algo):
    """The HF engine samples from the trainer's own model, so its behaviour log-probs match
    the trainer's recomputation up to float rounding: weights ≈ 1, nothing truncated or
    masked, with μ = 2 epochs (π_old recomputed) and with one update per rollout."""
    for epochs in ("algo.ppo_epochs=1", "algo.ppo_epochs=2"):
        record = one_step(make_config(char_model, problems_file, tmp_path / epochs, f"algo.rollout_is={mode}", epochs,
                                      f"algo.name={algo}", "algo.rollout_is_cap=1.01"))
        _finite(record, "policy/loss", "policy/rollout_is_logp_diff_mean", "policy/rollout_is_weight_mean")
        assert record["policy/rollout_is_logp_diff_max"] < 1e-3
        assert record["policy/rollout_is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
        key = "policy/rollout_is_truncated_frac" if mode == "token_truncate" else "policy/rollout_is_masked_frac"
        assert record[key] == 0.0


def test_truncated_completions_get_no_loss(char_model, problems_file, tmp_path):
    # a random model rarely ends within 4 tokens: nearly every completion is cut off
    record = one_step(make_config(char_model, problems_file, tmp_path, "algo.mask_truncated=true",
                                  "rollout.max_new_tokens=4"))
    assert record["filter/truncated_frac"] > 0.5
    if record["filter/truncated_frac"] == 1.0:  # nothing left to train on: no gradient at all
        assert record["policy/grad_norm"] == 0.0


def test_kl_k3_plus_with_a_reference(char_model, problems_file, tmp_path):
    record = one_step(make_config(char_model, problems_file, tmp_path, "algo.beta=0.1", "algo.kl_estimator=k3+",
                                  "algo.ppo_epochs=2"))
    _finite(record, "policy/kl")


@pytest.mark.parametrize("overlap", ["true", "false"])
def test_format_overlong_penalty_arrives_through_a_training_step(tmp_path, overlap):
    """DAPO's soft overlong punishment (the `format` verifier) in a real step of the shipped
    tiny model: the trainer hands each completion its token count and max_new_tokens, and
    the `format` reward it logs is R_length of the completions' actual lengths. Both scoring
    paths: in the background as completions finish, and after the rollout."""
    config = load_config(None, [
        "model.name_or_path=builtin:tiny-arith", "data.train=builtin:tiny-arith/train.jsonl", "data.eval=null",
        "rewards=[{verifier: format, require: none, overlong_buffer: 30}]", f"rollout.overlap_rewards={overlap}",
        "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=40", "algo.beta=0",
        f"train.output_dir={tmp_path}", "train.progress=false", "train.show_samples_every=0", "train.seed=0",
    ])
    trainer = Trainer(config)
    rollouts = []
    sample_and_score = trainer.rollout
    trainer.rollout = lambda: rollouts.append(sample_and_score()) or rollouts[-1]  # keep what the step used
    try:
        record = trainer.train_step()
    finally:
        trainer.close()
    lengths = [int(n) for n in rollouts[0].batch.completion_mask.sum(dim=1)]  # tokens of each completion, EOS included
    # L_max = max_new_tokens = 40, L_cache = 30: R = 0 for n ≤ 10, (10 − n)/30 for 10 < n ≤ 40
    expected = [0.0 if n <= 10 else (10 - n) / 30 for n in lengths]
    assert [row["format"] for row in rollouts[0].rewards.scores] == pytest.approx(expected)
    assert record["reward/format"] == pytest.approx(sum(expected) / len(expected))
    assert record["reward/mean"] == pytest.approx(sum(expected) / len(expected))
    assert len({r for r in expected if -1.0 < r < 0.0}) > 1, lengths  # completions at several points of the ramp


# --------------------------------------------------------------------------- reference sync


def test_reference_mixup_by_hand(char_model):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(char_model)
    ref = AutoModelForCausalLM.from_pretrained(char_model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    sync_reference(ref, policy, 0.25)
    for name, p in policy.named_parameters():
        torch.testing.assert_close(dict(ref.named_parameters())[name], 0.25 * p + 0.75 * before[name])
    sync_reference(ref, policy, 1.0)
    for name, p in policy.named_parameters():
        assert torch.equal(dict(ref.named_parameters())[name], p)


def test_reference_mixup_in_training(char_model, problems_file, tmp_path):
    config = make_config(char_model, problems_file, tmp_path, "algo.beta=0.1", "algo.ref_reset_every=1",
                         "algo.ref_mixup_alpha=0.5")
    trainer = Trainer(config)
    try:
        ref_before = [p.detach().clone() for p in trainer.ref_model.parameters()]
        trainer.train_step()
        for r, r0, p in zip(trainer.ref_model.parameters(), ref_before, trainer.model.parameters()):
            torch.testing.assert_close(r, 0.5 * p + 0.5 * r0)
    finally:
        trainer.close()


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_multiplier_by_hand(schedule):
    warmup, total, m = 3, 13, 0.1
    got = [lr_multiplier(s, warmup, total, schedule, m) for s in range(total)]
    assert got[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    for step in range(warmup, total):
        p = (step - warmup) / (total - 1 - warmup)
        want = {"constant": 1.0, "linear": 1 - (1 - m) * p,
                "cosine": m + (1 - m) * (1 + math.cos(math.pi * p)) / 2}[schedule]
        assert got[step] == pytest.approx(want)
    if schedule != "constant":
        assert got[-1] == pytest.approx(m)


def test_cosine_schedule_in_training(char_model, problems_file, tmp_path):
    records = run(make_config(char_model, problems_file, tmp_path, "train.steps=3", "optim.lr_schedule=cosine",
                              "optim.min_lr_ratio=0.0", "optim.lr=1e-3"))
    # logged after each step's scheduler.step(): steps 1 and 2 of 3 → cos(π/2), cos(π)
    assert [r["optim/lr"] for r in records] == pytest.approx([5e-4, 0.0, 0.0], abs=1e-12)
