"""What a run shows on screen: the sample table (printed by real training steps) and
the end-of-run summary (from the run's whole metrics.jsonl, resumes included)."""

from __future__ import annotations

import json
import math
import re

import pytest

from verirl import Step
from verirl.cli import main as cli_main
from verirl.config import load_config
from verirl.report import format_score, head, one_line, run_summary, sample_table, tail
from verirl.trainer import Trainer


def test_text_helpers_keep_one_line_and_cut_with_an_ellipsis():
    assert one_line("a\nb\tc\x00d\ud800") == "a⏎b c?d?"
    assert head("Tom has 3 apples and 4 pears", 10) == "Tom has 3…"
    assert tail("so the answer is\n#### 42", 9) == "…⏎#### 42"
    assert head("short", 10) == "short" and tail("short", 10) == "short"
    assert format_score(None) == "–" and format_score(1.0) == "1.00"
    assert format_score([Step(0, 3, 1.0), Step(3, 5, 0.0)]) == "0.50/2st"


def test_sample_table_shows_question_head_completion_tail_gold_scores_and_reward():
    rows = [
        {"question": "Tom has 3 apples and buys 4 more. How many now?", "completion": "He has 3+4=7.\n#### 7",
         "answer": "7", "scores": {"math_answer": 1.0, "format": 0.5}, "reward": 1.05},
        {"question": "Ana has 9 pens and gives away 2. How many are left over at the end of the day?",
         "completion": "x" * 300 + " so #### 11", "answer": "7", "scores": {"math_answer": 0.0, "format": None},
         "reward": 0.0},
    ]
    table = sample_table(12, rows, total=64, width=100)
    lines = table.splitlines()
    assert lines[0].startswith("── step 12: 2 of 64 completions")
    assert all(len(line) <= 100 for line in lines), [len(line) for line in lines]
    assert lines[1].split() == ["question", "completion", "(end)", "gold", "math_answer", "format", "reward"]
    assert "Tom has 3 apples" in lines[2] and "#### 7" in lines[2] and lines[2].rstrip().endswith("1.05")
    assert "1.00" in lines[2] and "0.50" in lines[2]
    assert "…" in lines[3] and lines[3].count("x") < 100 and "so #### 11" in lines[3]  # the tail, not the head
    assert "–" in lines[3] and lines[3].rstrip().endswith("0.00")


def run_overrides(char_model, problems_file, out, *extra) -> list[str]:
    return [
        f"model.name_or_path={char_model}", f"data.train={problems_file}", f"data.eval={problems_file}",
        "data.max_eval=4", "data.prompt_template='Q: {question}\nA:'", "rewards=[{verifier: starts_with_digit}]",
        f"train.output_dir={out}", "train.progress=false", "rollout.prompts_per_step=3", "rollout.group_size=4",
        "rollout.max_new_tokens=5", "optim.lr=1e-2", "algo.beta=0", "train.seed=1",
        "train.eval_verifier=starts_with_digit", "train.eval_every=2", *extra,
    ]


def run_config(char_model, problems_file, out, *extra):
    return load_config(None, run_overrides(char_model, problems_file, out, *extra))


def screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: ``\r`` returns to the line's start and
    what follows overwrites it (how a progress bar redraws itself)."""
    lines = []
    for raw in text.split("\n"):
        line: list[str] = []
        for part in raw.split("\r"):
            line[: len(part)] = part
        lines.append("".join(line).rstrip())
    return lines


@pytest.mark.parametrize("progress", [False, True])
def test_training_prints_the_table_every_show_samples_every_steps(progress, char_model, problems_file, tmp_path,
                                                                  capsys, toy_verifiers):
    trainer = Trainer(run_config(char_model, problems_file, tmp_path / "run", "train.steps=4",
                                 "train.show_samples_every=2", "train.show_samples=2", "train.save_every=0",
                                 f"train.progress={str(progress).lower()}"))
    try:
        trainer.train()
    finally:
        trainer.close()
    lines = screen(capsys.readouterr().err)
    starts = [i for i, line in enumerate(lines) if line.startswith("── step")]
    assert [lines[i].split(":")[0] for i in starts] == ["── step 2", "── step 4"]
    for i in starts:  # each table whole on its own lines: its header, the column names, two rows
        assert "2 of 12 completions" in lines[i]
        assert lines[i + 1].split()[-2:] == ["starts_with_digit", "reward"]
        assert all(line.startswith("  What is") and "verirl train" not in line for line in lines[i + 2 : i + 4])
    bar = [line for line in lines if line.startswith("verirl train:")]
    assert bool(bar) == progress and (not progress or "4/4" in bar[-1])  # the bar is drawn, and ends below
    if progress:
        assert lines.index(bar[-1]) > starts[-1] + 3


def test_verirl_train_prints_the_summary_and_exits_1_after_it_when_aborted(char_model, problems_file, tmp_path,
                                                                           capsys, monkeypatch, toy_verifiers):
    """`verirl train` ends with the summary; a run stopped past train.max_bad_updates
    prints it too, then the reason, and exits 1."""
    out = tmp_path / "run"
    args = ["train", "configs/tiny.yaml", *run_overrides(char_model, problems_file, out, "train.steps=4",
                                                         "train.save_every=1", "train.show_samples_every=0")]
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"^verirl train: 4 steps in \d+s$", err, re.M), err
    assert "skipped updates  none" in err and f"checkpoint     {out / 'checkpoints' / 'step_000004'}" in err

    real_init = Trainer.__init__

    def poisoned_init(self, config):  # NaN gradients from step 2 on: steps 2 and 3 skipped, the run stops at 3
        real_init(self, config)
        self.model.get_input_embeddings().weight.register_hook(lambda g: g * math.nan if self.step >= 1 else g)

    monkeypatch.setattr(Trainer, "__init__", poisoned_init)
    assert cli_main([*args, "train.overwrite=true", "train.max_bad_updates=1"]) == 1
    err = capsys.readouterr().err
    summary = re.search(r"^verirl train: 3 steps in \d+s$", err, re.M)
    reason = re.search(r"^error: step 3: 2 optimizer steps were skipped .*the last checkpoint is .*step_000002$",
                       err, re.M)
    assert summary and reason and summary.start() < reason.start(), err
    assert "skipped updates  2 (NaN/inf loss or gradient)" in err[summary.start():reason.start()]
    assert f"checkpoint     {out / 'checkpoints' / 'step_000002'}" in err


def test_summary_after_a_resume_counts_the_evals_before_it(char_model, problems_file, tmp_path, toy_verifiers):
    out = tmp_path / "run"
    for extra in (["train.steps=2"], ["train.steps=4", "train.resume=true"]):
        trainer = Trainer(run_config(char_model, problems_file, out, "train.save_every=2",
                                     "train.show_samples_every=0", *extra))
        first = trainer.step
        try:
            trainer.train()
        finally:
            trainer.close()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
    assert [s for s, _ in evals] == [0, 2, 4]
    summary = run_summary(out, wall_s=75.0, first_step=first)
    lines = summary.splitlines()
    assert lines[0] == "verirl train: 4 steps (2 in this run, resumed at step 2) in 1m 15s"
    best = max(evals, key=lambda e: e[1])
    assert (f"eval/accuracy    {evals[0][1]:.3f} (step 0) → best {best[1]:.3f} (step {best[0]}) → "
            f"last {evals[-1][1]:.3f} (step 4)") in summary
    assert "verifier faults  none" in summary and "skipped updates  none" in summary
    assert f"checkpoint     {out / 'checkpoints' / 'step_000004'}" in summary
    assert f"verirl plot {out}" in summary
