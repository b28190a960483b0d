"""The trainer config: types, unknown keys, overrides, cross-field checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from verirl import ConfigError
from verirl.config import Config, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ablation_*.yaml are `verirl ablate` configs (tests/test_tiny_steps.py loads them)
@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("ablation_")))
def test_shipped_configs_load(name):
    load_config(CONFIGS / name)


def test_overrides_are_typed():
    c = load_config(None, ["algo.beta=0", "optim.lr=1e-5", "train.steps=7", "data.eval=null", "algo.scale=none"])
    assert c.algo.beta == 0.0 and isinstance(c.algo.beta, float)
    assert c.optim.lr == 1e-5
    assert c.train.steps == 7 and c.data.eval is None and c.algo.scale == "none"
    assert load_config(None, ["train.eval_verifier_params={preset: eval}"]).train.eval_verifier_params == {
        "preset": "eval"}


@pytest.mark.parametrize("override, match", [
    ("algo.bta=0.1", r"unknown config key 'algo.bta'; did you mean algo.beta"),
    ("trian.steps=3", r"unknown config key 'trian'; did you mean train"),
    ("train.steps=three", r"'train.steps' must be int"),
    ("train.steps=2.5", r"'train.steps' must be int"),
    ("algo.kl_estimator=k4", r"'algo.kl_estimator' must be one of \['k3', 'k1', 'k2', 'abs', 'low_var_kl', 'k3\+'\]"),
    ("algo.loss_agg=mean", r"must be one of"),
    ("train.resume=maybe", r"'train.resume' must be bool"),
    ("train.eval_verifier_params=eval", r"'train.eval_verifier_params' must be a mapping"),
    ("rollout.group_size=1", r"group_size must be ≥ 2 for GRPO"),
    ("algo.minibatch_size=5", r"must divide prompts_per_step × group_size"),
    ("rewards=[]", r"non-empty list"),
    ("steps", r"must look like section.key=value"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  group_sise: 4\n")
    with pytest.raises(ConfigError, match=r"'rollout.group_sise'; did you mean rollout.group_size"):
        load_config(path)


def test_saved_config_round_trips(tmp_path):
    c = load_config(CONFIGS / "tiny.yaml", ["train.steps=3"])
    save_config(c, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == c
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["steps"] == 3


def test_defaults_match_algorithms_md():
    a = Config().algo
    assert (a.eps_low, a.eps_high, a.beta, a.kl_estimator, a.scale) == (0.2, 0.2, 0.04, "k3", "group_std")
    assert (a.gamma, a.lam, a.loss_agg, a.ppo_epochs) == (1.0, 0.95, "seq-mean-token-mean", 1)


@pytest.mark.parametrize("overrides, match", [
    (["algo.advantage=gae"], r"algo.advantage=gae needs a critic's values: set algo.name=ppo"),
    (["algo.name=ppo", "algo.advantage=rloo"], r"algo.name=ppo computes advantages by GAE.*algo.advantage=rloo"),
    (["algo.reward_mode=process", "algo.advantage=rloo"], r"algo.reward_mode=process.*algo.advantage=rloo has none"),
    (["algo.scale=none", "algo.advantage=rloo"], r"algo.scale=none applies to algo.advantage=grpo.*algo.advantage=rloo"),
    (["algo.advantage=grpo_passk", "algo.scale=batch_std"], r"grpo_passk.*batch_std is not defined"),
    (["algo.ref_mixup_alpha=0.5"], r"algo.ref_mixup_alpha.*set algo.ref_reset_every"),
    (["algo.ref_mixup_alpha=0", "algo.ref_reset_every=4"], r"algo.ref_mixup_alpha must be in \(0, 1\]"),
    (["algo.top_entropy_quantile=1.5"], r"algo.top_entropy_quantile must be in \[0, 1\]"),
    (["algo.off_policy_mask_delta=-1"], r"algo.off_policy_mask_delta must be ≥ 0"),
    (["algo.dual_clip_c=1"], r"algo.dual_clip_c must be > 1"),
    (["algo.eps_low=1.5"], r"algo.eps_low must be in \[0, 1\]"),
    (["algo.clip_cov_lb=6"], r"algo.clip_cov_lb \(6.0\) must be below algo.clip_cov_ub"),
    (["algo.name=ppo", "algo.kl_estimator=k3+"], r"k3\+ weights the KL term of a loss.*algo.beta_r"),
    (["optim.min_lr_ratio=0.1"], r"optim.min_lr_ratio.*set optim.lr_schedule=linear or cosine"),
    (["optim.lr_schedule=step"], r"'optim.lr_schedule' must be one of"),
    (["algo.policy_loss=gspo", "algo.rollout_is=token_truncate"],
     r"algo.policy_loss=gspo weighs each completion.*algo.rollout_is=token_truncate would break"),
    (["algo.policy_loss=vespo", "algo.rollout_is=token_truncate"], r"algo.policy_loss=vespo.*rollout_is=token_truncate"),
    (["algo.rollout_is=sequence_mask", "algo.rollout_is_cap=0.5"], r"algo.rollout_is_cap must be ≥ 1"),
    (["algo.rollout_is=tis"], r"'algo.rollout_is' must be one of \['none', 'token_truncate', 'sequence_mask'\]"),
    (["algo.policy_loss=ppo2"], r"'algo.policy_loss' must be one of \['vanilla', 'dual_clip', 'gspo'"),
    (["algo.advantage=rlo"], r"'algo.advantage' must be 'grpo' \| 'dr_grpo' \| 'rloo'.* \| null, got 'rlo'"),
])
def test_incompatible_options_are_refused_naming_both_keys(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides, estimator", [
    ([], "grpo"),
    (["algo.advantage=rloo"], "rloo"),
    (["algo.reward_mode=process"], "grpo_process"),
    (["algo.reward_mode=process", "algo.advantage=dr_grpo"], "dr_grpo_process"),
    (["algo.name=ppo"], "gae"),
    (["algo.name=ppo", "algo.advantage=gae", "algo.reward_mode=process"], "gae"),
])
def test_the_estimator_a_config_selects(overrides, estimator):
    assert load_config(None, overrides).algo.estimator() == estimator


def test_config_names_are_the_registries_names():
    """The config's literal choices and the math modules' registries name the same things."""
    from verirl import config
    from verirl.advantages import ADVANTAGE_ESTIMATORS, PROCESS_ESTIMATORS
    from verirl.losses import KL_ESTIMATORS, LOSS_AGGREGATIONS
    from verirl.policy_losses import POLICY_LOSSES

    assert set(config.ADVANTAGES) - {"gae"} == set(ADVANTAGE_ESTIMATORS) - PROCESS_ESTIMATORS
    assert {f"{n}_process" for n in config.PROCESS_VARIANTS} == set(PROCESS_ESTIMATORS)
    assert set(config.POLICY_LOSSES) == set(POLICY_LOSSES)
    assert set(config.KL_ESTIMATORS) == set(KL_ESTIMATORS)
    assert set(config.LOSS_AGGREGATIONS) == set(LOSS_AGGREGATIONS)
    assert set(config.BATCH_COUPLED_LOSSES) <= set(POLICY_LOSSES)
