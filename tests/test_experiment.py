"""verirl.experiment: arms × seeds in child processes, resumable, summarised."""

from __future__ import annotations

import io

import pytest
import yaml

from verirl.experiment import (
    Arm,
    is_done,
    markdown_table,
    mean_sd,
    read_run,
    run_arms,
    run_dir,
    samples_to_reach,
    summarise,
    value_at,
)


def test_curve_helpers_by_hand():
    curve = [(0.0, 0.5), (100.0, 0.7), (200.0, 0.6)]
    assert value_at(curve, 50.0) == pytest.approx(0.6)
    assert value_at(curve, 200.0) == 0.6 and value_at(curve, 250.0) is None
    assert samples_to_reach(curve, 0.65) == 100.0 and samples_to_reach(curve, 0.9) is None
    assert mean_sd([1.0, None, 3.0]) == (2.0, pytest.approx(2 ** 0.5), 2) and mean_sd([None]) is None


def test_arms_run_resume_and_summarise(char_model, problems_file, tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(char_model)},
        "data": {"train": str(problems_file), "eval": str(problems_file), "max_eval": 4,
                 "prompt_template": "Q: {question}\nA:"},
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "rewards": [{"verifier": "math_answer", "workers": 1}],
        "algo": {"beta": 0.0}, "optim": {"lr": 1e-3},
        "train": {"steps": 2, "eval_every": 1, "save_every": 1},
    }))
    arms = [Arm("grpo", str(config)), Arm("rloo", str(config), ["algo.advantage=rloo"])]
    out = tmp_path / "exp"
    log = io.StringIO()
    assert run_arms(arms, [0], out, jobs=2, log=log) == []
    assert log.getvalue().count("start") == 2
    assert all(is_done(run_dir(out, a.name, 0)) for a in arms)

    # a run cut back to its first checkpoint is resumed, the finished one is left alone
    partial = run_dir(out, "rloo", 0)
    lines = (partial / "metrics.jsonl").read_text().splitlines()
    (partial / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    import shutil

    shutil.rmtree(partial / "checkpoints" / "step_000002")
    assert not is_done(partial)
    log = io.StringIO()
    assert run_arms(arms, [0], out, jobs=1, log=log) == []
    assert log.getvalue().count("start") == 1 and "rloo" in log.getvalue()
    runs = {a.name: {0: read_run(run_dir(out, a.name, 0))} for a in arms}
    r = runs["rloo"][0]
    assert [x for x, _ in r.eval] == [0, 4, 8] and r.steps == 2  # samples drawn: 2 prompts × 2 per step
    summary = summarise(runs, [4], target=0.0)
    assert summary["grpo"]["to_target"][0] == 0.0 and summary["rloo"]["reached"] == 1
    table = markdown_table(summary, [4], target=0.0)
    assert table.count("\n") == 4 and "| rloo |" in table and "acc @ 4" in table
