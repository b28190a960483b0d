"""What a run shows on screen: the sample table (printed by real training steps) and
the end-of-run summary (from the run's whole metrics.jsonl, resumes included)."""

from __future__ import annotations

import json

from verirl import Step
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


def run_config(char_model, problems_file, out, *extra):
    return load_config(None, [
        f"model.name_or_path={char_model}", f"data.train={problems_file}", f"data.eval={problems_file}",
        "data.max_eval=4", "data.prompt_template='Q: {question}\nA:'", "rewards=[{verifier: starts_with_digit}]",
        f"train.output_dir={out}", "train.progress=false", "rollout.prompts_per_step=3", "rollout.group_size=4",
        "rollout.max_new_tokens=5", "optim.lr=1e-2", "algo.beta=0", "train.seed=1",
        "train.eval_verifier=starts_with_digit", "train.eval_every=2", *extra,
    ])


def test_training_prints_the_table_every_show_samples_every_steps(char_model, problems_file, tmp_path, capsys,
                                                                  toy_verifiers):
    trainer = Trainer(run_config(char_model, problems_file, tmp_path / "run", "train.steps=4",
                                 "train.show_samples_every=2", "train.show_samples=2", "train.save_every=0"))
    try:
        trainer.train()
    finally:
        trainer.close()
    err = capsys.readouterr().err
    headers = [line for line in err.splitlines() if line.startswith("── step")]
    assert [h.split(":")[0] for h in headers] == ["── step 2", "── step 4"]
    assert all("2 of 12 completions" in h for h in headers)
    table = err.split(headers[0], 1)[1].splitlines()
    assert "starts_with_digit" in table[1] and table[2].lstrip().startswith("What is")


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
