"""The command line, run as users run it: a real subprocess, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def verirl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verirl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture
def completions(tmp_path) -> Path:
    rows = [
        {"id": 1, "completion": "3 + 4 = 7\n#### 7", "answer": "7"},
        {"id": 2, "completion": "So the answer is $\\boxed{\\frac{1}{2}}$.", "answer": "0.5"},
        {"id": 3, "completion": "I think it is 71.", "answer": "17"},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_verify_default_is_math_answer(completions, tmp_path):
    out = tmp_path / "out.jsonl"
    result = verirl("verify", str(completions), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3]  # other fields pass through, order kept
    assert [r["reward"] for r in rows] == [1.0, 1.0, 0.0]
    assert rows[0]["scores"] == {"math_answer": 1.0}
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert summary["count"] == 3 and summary["mean_reward"] == pytest.approx(2 / 3)
    assert summary["timeouts"] == 0 and summary["errors"] == 0 and summary["samples_per_s"] > 0


def test_verify_with_a_rewards_file_and_process_scores(completions, tmp_path):
    rewards = tmp_path / "r.yaml"
    rewards.write_text("- verifier: math_answer\n  weight: 1.0\n- verifier: arith_steps\n  weight: 0.5\n")
    result = verirl("verify", str(completions), "--rewards", str(rewards))
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout.splitlines()[0])
    assert first["scores"]["math_answer"] == 1.0
    steps = first["scores"]["arith_steps"]
    assert steps[0][:2] == [0, len("3 + 4 = 7")] and steps[0][2] == 1.0
    assert first["reward"] == pytest.approx(1.0 + 0.5 * sum(s[2] for s in steps) / len(steps))


@pytest.mark.parametrize("args, message", [
    (["verify", "missing.jsonl"], "input file not found"),
    (["verify", "{in}", "--verifier", "math_anwser"], "unknown verifier 'math_anwser'"),
    (["verify", "{bad}"], "bad.jsonl:2: not valid JSON"),
    (["train", "configs/tiny.yaml", "algo.bta=0.1"], "did you mean algo.beta"),
    (["train", "nope.yaml"], "config file not found"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2_with_a_message(args, message, completions, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"completion": "1", "answer": "1"}\n{oops\n')
    args = [a.replace("{in}", str(completions)).replace("{bad}", str(bad)) for a in args]
    result = verirl(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_train_and_eval_the_tiny_model(tmp_path):
    out = tmp_path / "run"
    result = verirl("train", "configs/tiny.yaml", f"train.output_dir={out}", "train.steps=2", "rollout.prompts_per_step=4",
                    "data.max_eval=8", "train.eval_every=2", "train.progress=false", "train.save_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert "eval/accuracy" in metrics[0] and "eval/accuracy" in metrics[2]
    checkpoint = out / "checkpoints" / "step_000002"
    result = verirl("eval", "--model", str(checkpoint), "--data", "builtin:tiny-arith/test.jsonl", "--limit", "8",
                    "--n", "4", "--k", "1,4", "--max-new-tokens", "48")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["problems"] == 8 and 0.0 <= metrics["pass@1"] <= metrics["pass@4"] <= 1.0
    assert "maj@4" in metrics


def test_eval_grades_with_the_chosen_preset(tmp_path):
    """`verirl eval --grading`: gold answers moved by 1e-4 (7 -> 7.0001) are the model's
    answers under the lenient `eval` preset (relative tolerance) and never under `train`
    (a decimal is its exact value)."""
    source = ROOT / "verirl" / "assets" / "tiny-arith" / "test.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()[:8]]
    for row in rows:
        solution, gold = row["answer"].rsplit("#### ", 1)
        row["answer"] = f"{solution}#### {gold.strip()}.0001"
    data = tmp_path / "moved.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    correct = {}
    for grading in ("eval", "train"):
        out = tmp_path / f"{grading}.jsonl"
        result = verirl("eval", "--model", "builtin:tiny-arith", "--data", str(data), "--max-new-tokens", "48",
                        "--no-progress", "--grading", grading, "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout.strip().splitlines()[-1])["grading"] == grading
        correct[grading] = [json.loads(line)["correct"][0] for line in out.read_text().splitlines()]
    assert any(correct["eval"]), "the tiny model answers some of the first 8 test problems"
    assert not any(correct["train"])
