"""Policy-optimisation methods side by side on the tiny task: same prompts, same sample budget.

    python benchmarks/algorithms_tiny.py                       # 7 methods × 3 seeds
    python benchmarks/algorithms_tiny.py --methods grpo rloo --seeds 0 --steps 40
    python benchmarks/algorithms_tiny.py --report-only         # re-read finished runs

Every method is an arm of :mod:`verirl.experiment` on ``configs/tiny.yaml`` (the main job)
plus the one or few config lines that make the method (``METHODS`` below, and the README's
method table). All arms share ``--set`` overrides and these settings, chosen so that the
policy losses differ at all: ``algo.minibatch_size`` splits each rollout of 128
completions into four optimizer steps, so the later ones are off-policy (ρ ≠ 1). With one
update per rollout every loss here has the plain policy gradient and the methods would
differ by their advantages alone. The table's clip fraction says how often a loss cut
or bounded a token's gradient.

Same samples: every arm draws ``prompts_per_step × group_size`` completions per step,
and a seed gives every arm the same prompts in the same order. DAPO's dynamic sampling
draws more (it replaces all-equal groups); the x-axis counts every completion drawn, so
that cost is on the plot and in the table.

Writes to ``--out``: ``table.md`` (printed too), ``accuracy.png``, ``summary.json``; the
runs under ``--out/ARM/seed_S/`` (resumable: rerunning continues what is not done).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from verirl.experiment import Arm, markdown_table, plot_arms, read_run, run_arms, run_dir, summarise

ROOT = Path(__file__).resolve().parents[1]

#: method → the config lines that make it (on top of configs/tiny.yaml)
METHODS: dict[str, list[str]] = {
    "grpo": [],
    "dr_grpo": ["algo.advantage=dr_grpo", "algo.loss_agg=seq-mean-token-sum-norm"],
    "rloo": ["algo.advantage=rloo"],
    "reinforce_pp": ["algo.advantage=reinforce_plus_plus"],
    "gspo": ["algo.policy_loss=gspo", "algo.eps_low=3e-4", "algo.eps_high=4e-4"],
    "cispo": ["algo.policy_loss=cispo", "algo.eps_low=1.0", "algo.eps_high=4.0"],
    "dapo": ["algo.eps_high=0.28", "algo.drop_zero_std=true", "algo.loss_agg=token-mean", "algo.mask_truncated=true",
             "rewards=[{verifier: math_answer, workers: 1}, {verifier: format, require: none, overlong_buffer: 8}]"],
}
SHARED = ["algo.minibatch_size=32"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every arm")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--target", type=float, default=0.75, help="accuracy for the samples-to-target column")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_algorithms_tiny"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:  # before the runs, not after them
        parser.error("the plot needs matplotlib: pip install -e '.[bench]'")

    from verirl.config import load_config

    common = [*SHARED, f"train.steps={args.steps}", f"train.eval_every={args.eval_every}", "train.save_every=20",
              *args.set]
    arms = [Arm(m, args.config, METHODS[m]) for m in args.methods]
    for arm in arms:  # a bad method line fails here, before any run starts
        load_config(arm.config, [*common, *arm.overrides])
    out = Path(args.out)
    if not args.report_only:
        failed = run_arms(arms, args.seeds, out, common, jobs=args.jobs, threads=args.threads)
        if failed:
            print("failed runs; see " + ", ".join(str(d / "child.log") for d in failed), file=sys.stderr)
            return 1
    runs = {a.name: {s: read_run(run_dir(out, a.name, s)) for s in args.seeds} for a in arms}
    per_step = load_config(args.config, common).rollout
    budget = per_step.prompts_per_step * per_step.group_size * args.steps
    points = [budget // 4, budget // 2, budget]
    summary = summarise(runs, points, args.target)
    text = (f"Eval accuracy (greedy, {load_config(args.config, common).data.max_eval} held-out problems; mean ± sd "
            f"over seeds {args.seeds}) by training samples drawn; {args.steps} steps.\n\n"
            + markdown_table(summary, points, args.target))
    (out / "table.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot_arms(runs, out / "accuracy.png")
    print(text)
    print(f"written: {out / 'table.md'}, {out / 'accuracy.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
