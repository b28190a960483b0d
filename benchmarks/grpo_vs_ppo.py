"""GRPO against PPO with a critic on the same task and the same sample budget, over seeds.

    python benchmarks/grpo_vs_ppo.py --seeds 0 1 2 --threads 2
    python benchmarks/grpo_vs_ppo.py --steps 40 --eval-every 10 --set data.max_eval=100

Every (algorithm, seed) run is a child process (``verirl``'s own :class:`Trainer`, one
run directory each under ``--out``), so each one's peak memory is its own. The parent
then writes, to ``--out``:

- ``table.md`` (also printed): the eval-accuracy curve per number of training samples
  (mean ± sample std over seeds), and a cost table: seconds per step, peak memory, and
  the parameters each algorithm holds — policy, reference, critic — with the training
  state they imply (weights + gradients + AdamW's two moments), as a PPO / GRPO ratio;
- ``accuracy.png``: accuracy and training reward against samples, mean and min–max over
  seeds;
- ``summary.json``: every number above.

Same samples: both configs must draw the same number of completions per step
(``prompts_per_step × group_size``) for the same number of steps (the script checks);
``train.seed`` is the seed of both runs of a pair, so they see the same prompts in the
same order (the seeded ``ProblemStream``). The sampled completions differ, as they must:
each algorithm samples from its own policy.

What is measured:

- accuracy: ``eval/accuracy`` of the trainer's own eval (greedy, ``train.eval_verifier``,
  the first ``data.max_eval`` held-out problems) every ``train.eval_every`` steps and at
  step 0;
- seconds per step: the median of ``perf/step_s`` over steps 2..N (step 1 pays for lazy
  initialisation), then the mean over seeds; eval time is not part of it;
- peak memory: the child's peak RSS (``mem/peak_rss_mb``; on CUDA also
  ``mem/peak_gpu_mb``), the max over seeds;
- parameters held: counted on the built trainer (``model``, ``ref_model``, the critic);
  "training state" adds one gradient and two AdamW moments per trainable parameter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ("grpo", "ppo")


# --------------------------------------------------------------------------- child: one run


def held_parameters(trainer: Any) -> dict[str, int]:
    """Parameter counts of what the trainer holds (tied weights counted once)."""

    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    def trainable(module: Any) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad) if module is not None else 0

    critic = trainer.ppo.critic if getattr(trainer, "ppo", None) is not None else None
    weights = count(trainer.model) + count(trainer.ref_model) + count(critic)
    train = trainable(trainer.model) + trainable(critic)
    return {
        "policy": count(trainer.model),
        "reference": count(trainer.ref_model),
        "critic": count(critic),
        "weights": weights,
        "trainable": train,
        # weights + one gradient + AdamW's exp_avg and exp_avg_sq per trainable parameter
        "training_state": weights + 3 * train,
    }


def run_child(config_path: str, out: str, overrides: list[str]) -> int:
    from verirl.config import load_config
    from verirl.trainer import Trainer

    config = load_config(config_path, [*overrides, f"train.output_dir={out}", "train.progress=false",
                                       "train.resume=false", "train.overwrite=true"])
    start = time.perf_counter()
    trainer = Trainer(config)
    params = held_parameters(trainer)
    try:
        trainer.train()
    finally:
        trainer.close()
    (Path(out) / "bench.json").write_text(json.dumps({"params": params, "wall_s": time.perf_counter() - start}))
    return 0


# --------------------------------------------------------------------------- parent


def launch(algo: str, config: str, seed: int, out: Path, overrides: list[str], threads: int) -> subprocess.Popen:
    run_dir = out / f"{algo}_seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", config, str(run_dir), "--",
           *overrides, f"train.seed={seed}", f"train.threads={threads}"]
    log = (run_dir / "child.log").open("w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def read_run(run_dir: Path) -> dict[str, Any]:
    import yaml

    from verirl.metrics import read_metrics

    metrics = read_metrics(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    per_step = config["rollout"]["prompts_per_step"] * config["rollout"]["group_size"]
    bench = json.loads((run_dir / "bench.json").read_text())
    steps = [m for m in metrics if "reward/mean" in m]
    step_s = [m["perf/step_s"] for m in steps if m["step"] >= 2] or [m["perf/step_s"] for m in steps]
    return {
        "samples_per_step": per_step,
        "steps": len(steps),
        "eval": [(m["step"] * per_step, m["eval/accuracy"]) for m in metrics if "eval/accuracy" in m],
        "reward": [(m["step"] * per_step, m["reward/mean"]) for m in steps],
        "step_s": statistics.median(step_s),
        "peak_rss_mb": max(m["mem/peak_rss_mb"] for m in steps),
        "peak_gpu_mb": max((m.get("mem/peak_gpu_mb", 0.0) for m in steps), default=0.0),
        "params": bench["params"],
        "wall_s": bench["wall_s"],
    }


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for algo, by_seed in runs.items():
        curves: dict[int, list[float]] = {}
        for r in by_seed.values():
            for samples, acc in r["eval"]:
                curves.setdefault(samples, []).append(acc)
        first = [r["eval"][0][1] for r in by_seed.values() if r["eval"]]
        last = [r["eval"][-1][1] for r in by_seed.values() if r["eval"]]
        any_run = next(iter(by_seed.values()))
        summary[algo] = {
            "seeds": sorted(by_seed),
            "curve": {s: _mean_sd(v) for s, v in sorted(curves.items())},
            "start_acc": _mean_sd(first) if first else None,
            "final_acc": _mean_sd(last) if last else None,
            "gain": _mean_sd([b - a for a, b in zip(first, last)]) if first else None,
            "step_s": _mean_sd([r["step_s"] for r in by_seed.values()]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in by_seed.values()),
            "peak_gpu_mb": max(r["peak_gpu_mb"] for r in by_seed.values()),
            "params": any_run["params"],
            "wall_s": _mean_sd([r["wall_s"] for r in by_seed.values()]),
        }
    return summary


def table(summary: dict[str, Any]) -> str:
    g, p = summary["grpo"], summary["ppo"]
    fmt = lambda ms: "—" if ms is None else f"{ms[0]:.3f} ± {ms[1]:.3f}"  # noqa: E731
    lines = [f"Eval accuracy (mean ± sd over seeds {g['seeds']}) by training samples", "",
             "| samples | GRPO | PPO |", "|---:|---:|---:|"]
    for s in sorted(set(g["curve"]) | set(p["curve"])):
        lines.append(f"| {s} | {fmt(g['curve'].get(s))} | {fmt(p['curve'].get(s))} |")
    ratio = lambda key: p["params"][key] / max(g["params"][key], 1)  # noqa: E731
    lines += ["", "Cost", "", "| | GRPO | PPO | PPO / GRPO |", "|---|---:|---:|---:|"]
    rows = [
        ("final accuracy", fmt(g["final_acc"]), fmt(p["final_acc"]), ""),
        ("accuracy gain", fmt(g["gain"]), fmt(p["gain"]), ""),
        ("s / step (median, steps ≥ 2)", f"{g['step_s'][0]:.2f}", f"{p['step_s'][0]:.2f}",
         f"{p['step_s'][0] / g['step_s'][0]:.2f}×"),
        ("peak RSS, MB", f"{g['peak_rss_mb']:.0f}", f"{p['peak_rss_mb']:.0f}",
         f"{p['peak_rss_mb'] / g['peak_rss_mb']:.2f}×"),
    ]
    if g["peak_gpu_mb"] and p["peak_gpu_mb"]:
        rows.append(("peak GPU memory, MB", f"{g['peak_gpu_mb']:.0f}", f"{p['peak_gpu_mb']:.0f}",
                     f"{p['peak_gpu_mb'] / g['peak_gpu_mb']:.2f}×"))
    for key, label in (("policy", "policy params"), ("reference", "reference params"), ("critic", "critic params"),
                       ("weights", "weights held"), ("trainable", "trainable params"),
                       ("training_state", "training state (w + grad + 2 Adam)")):
        r = f"{ratio(key):.2f}×" if g["params"][key] else ""
        rows.append((label, f"{g['params'][key]:,}", f"{p['params'][key]:,}", r))
    rows.append(("wall time per run, s", f"{g['wall_s'][0]:.0f}", f"{p['wall_s'][0]:.0f}", ""))
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for algo, color in zip(ALGOS, ("tab:blue", "tab:orange")):
        for ax, key, label in ((axes[0], "eval", "eval accuracy"), (axes[1], "reward", "training reward (mean)")):
            by_x: dict[int, list[float]] = {}
            for r in runs[algo].values():
                for x, y in r[key]:
                    by_x.setdefault(x, []).append(y)
            xs = sorted(by_x)
            ax.plot(xs, [statistics.fmean(by_x[x]) for x in xs], color=color, label=algo.upper())
            ax.fill_between(xs, [min(by_x[x]) for x in xs], [max(by_x[x]) for x in xs], color=color, alpha=0.2)
            ax.set_xlabel("training samples (completions)")
            ax.set_ylabel(label)
    axes[0].legend()
    axes[0].set_title(f"mean and min–max over {len(next(iter(runs.values())))} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        rest = argv[1:]
        sep = rest.index("--") if "--" in rest else len(rest)
        config, out = rest[0], rest[1]
        return run_child(config, out, rest[sep + 1 :])

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpo-config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--ppo-config", default=str(ROOT / "configs" / "tiny_ppo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="training steps of every run (default: the configs')")
    parser.add_argument("--eval-every", type=int, help="eval every N steps (default: the configs')")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override applied to both algorithms (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_grpo_vs_ppo"))
    parser.add_argument("--report-only", action="store_true", help="re-read finished runs under --out, run nothing")
    args = parser.parse_args(argv)
    if len(args.seeds) < 1 or args.jobs < 1 or args.threads < 1:
        parser.error("need at least one seed, --jobs ≥ 1 and --threads ≥ 1")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # before the runs, not after them
        parser.error("the plot needs matplotlib: pip install -e '.[bench]'")

    from verirl.config import load_config

    common = list(args.set)
    if args.steps:
        common.append(f"train.steps={args.steps}")
    if args.eval_every:
        common.append(f"train.eval_every={args.eval_every}")
    configs = {"grpo": args.grpo_config, "ppo": args.ppo_config}
    loaded = {a: load_config(path, common) for a, path in configs.items()}
    for a, want in (("grpo", "grpo"), ("ppo", "ppo")):
        if loaded[a].algo.name != want:
            parser.error(f"--{a}-config {configs[a]} has algo.name={loaded[a].algo.name!r}, expected {want!r}")
    budget = {a: (c.rollout.prompts_per_step * c.rollout.group_size, c.train.steps) for a, c in loaded.items()}
    if budget["grpo"] != budget["ppo"]:
        parser.error(f"the runs must draw the same samples: (completions per step, steps) is {budget['grpo']} "
                     f"for GRPO and {budget['ppo']} for PPO; align them with --set or --steps")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(a, configs[a], s) for s in args.seeds for a in ALGOS]
    if not args.report_only:
        pending, running, failed = list(jobs), [], []
        while pending or running:
            while pending and len(running) < args.jobs:
                algo, config, seed = pending.pop(0)
                print(f"start {algo} seed {seed}", file=sys.stderr)
                running.append((algo, seed, time.perf_counter(), launch(algo, config, seed, out, common, args.threads)))
            time.sleep(1.0)
            for item in list(running):
                algo, seed, t0, proc = item
                if proc.poll() is not None:
                    running.remove(item)
                    status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                    print(f"{status}: {algo} seed {seed} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
                    if proc.returncode != 0:
                        failed.append(f"{out / f'{algo}_seed{seed}' / 'child.log'}")
        if failed:
            print("failed runs; see " + ", ".join(failed), file=sys.stderr)
            return 1

    runs = {a: {s: read_run(out / f"{a}_seed{s}") for s in args.seeds} for a in ALGOS}
    summary = summarise(runs)
    text = table(summary)
    (out / "table.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(
        {a: {**v, "curve": {str(k): list(x) for k, x in v["curve"].items()}} for a, v in summary.items()}, indent=2))
    plot(runs, out / "accuracy.png")
    print(text)
    print(f"written: {out / 'table.md'}, {out / 'accuracy.png'}, {out / 'summary.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
