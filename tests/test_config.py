"""The trainer config: types, unknown keys, overrides, cross-field checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from verirl import ConfigError
from verirl.config import Config, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    load_config(CONFIGS / name)


def test_overrides_are_typed():
    c = load_config(None, ["algo.beta=0", "optim.lr=1e-5", "train.steps=7", "data.eval=null", "algo.scale=none"])
    assert c.algo.beta == 0.0 and isinstance(c.algo.beta, float)
    assert c.optim.lr == 1e-5
    assert c.train.steps == 7 and c.data.eval is None and c.algo.scale == "none"


@pytest.mark.parametrize("override, match", [
    ("algo.bta=0.1", r"unknown config key 'algo.bta'; did you mean algo.beta"),
    ("trian.steps=3", r"unknown config key 'trian'; did you mean train"),
    ("train.steps=three", r"'train.steps' must be int"),
    ("train.steps=2.5", r"'train.steps' must be int"),
    ("algo.kl_estimator=k4", r"'algo.kl_estimator' must be one of \['k3', 'k1', 'k2'\]"),
    ("algo.loss_agg=mean", r"must be one of"),
    ("train.resume=maybe", r"'train.resume' must be bool"),
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
