"""`verirl ablate`: the config checks, the hacking signs by hand, and a tiny ablation end to end."""

from __future__ import annotations

import pytest
import yaml

from verirl import ConfigError
from verirl.ablate import hacking_signs, load_ablation, merge
from verirl.cli import main
from verirl.experiment import RunResult


def test_merge_nested_keys_and_replaces_lists():
    base = {"algo": {"beta": 0.0, "name": "grpo"}, "rewards": [{"verifier": "a"}]}
    got = merge(base, {"algo": {"name": "ppo"}, "rewards": [{"verifier": "b"}]})
    assert got == {"algo": {"beta": 0.0, "name": "ppo"}, "rewards": [{"verifier": "b"}]}
    assert base["algo"]["name"] == "grpo"  # the base is not touched


def _write(tmp_path, arms, **extra):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
                                    "train": {"steps": 2}}))
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "seeds": [0], "arms": arms, **extra}))
    return path


@pytest.mark.parametrize("arms, extra, match", [
    ({"a": {"algo": {"bta": 1}}}, {}, r"ablation arm 'a': unknown config key 'algo.bta'"),
    ({"a": {}, "b": {"rollout": {"group_size": 4}}}, {}, r"must draw the same samples.*a: 4 completions × 2 steps"),
    ({"a": {}}, {"seed": [1]}, r"unknown keys \['seed'\]"),
    ({"a": {}}, {"seeds": []}, r"'seeds' must be a non-empty list"),
    ({}, {}, r"needs 'base'.*'arms'"),
])
def test_bad_ablation_configs_are_refused_naming_the_arm(tmp_path, arms, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_ablation(_write(tmp_path, arms, **extra))


def test_hacking_signs_by_hand():
    steps = [(float(x), 0.0) for x in range(8)]
    rising = [(x, 0.1 * x) for x, _ in steps]  # process reward climbs
    result = RunResult(eval=[(0, 0.5), (4, 0.6), (7, 0.55)], reward=rising, step_s=1.0, peak_rss_mb=1.0, wall_s=1.0,
                       steps=8, series={"reward/arith_steps": rising,
                                        "rollout/len_mean": [(x, 10.0 if x < 2 else 20.0) for x, _ in steps]})
    signs = hacking_signs(result, ["reward/arith_steps"])
    assert signs["reward_gain"] == pytest.approx(0.1 * (6.5 - 0.5))  # last two minus first two, mean
    assert signs["acc_drop"] == pytest.approx(0.05) and signs["reward_up_acc_down"]
    assert signs["length_ratio"] == pytest.approx(2.0) and signs["length_drift"]


def test_tiny_ablation_end_to_end(char_model, problems_file, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(char_model)},
        "data": {"train": str(problems_file), "eval": str(problems_file), "max_eval": 4,
                 "prompt_template": "Q: {question}\nA:"},
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6},
        "rewards": [{"verifier": "math_answer", "workers": 1}],
        "algo": {"beta": 0.0}, "optim": {"lr": 1e-3},
        "train": {"steps": 2, "eval_every": 1, "save_every": 1},
    }))
    config = tmp_path / "ablation.yaml"
    config.write_text(yaml.safe_dump({
        "base": "base.yaml", "seeds": [0, 1], "target": 0.0,
        "arms": {
            "outcome": {},
            "process": {"algo": {"reward_mode": "process"},
                        "rewards": [{"verifier": "arith_steps", "weight": 0.5}, {"verifier": "math_answer", "workers": 1}]},
        },
    }))
    out = tmp_path / "out"
    assert main(["ablate", str(config), "--out", str(out), "--jobs", "2"]) == 0
    report = (out / "ablation.md").read_text()
    for needed in ("| outcome |", "| process |", "Signs of reward hacking", "seed spread", "samples to 0.00"):
        assert needed in report, needed
    assert (out / "ablation.png").stat().st_size > 10_000
    assert (out / "process" / "arm.yaml").exists() and (out / "process" / "seed_1" / "metrics.jsonl").exists()
    # everything is done: a second call runs nothing and writes the same table
    assert main(["ablate", str(config), "--out", str(out), "--report-only"]) == 0
    assert main(["ablate", str(tmp_path / "missing.yaml")]) == 2
