"""Experiments: named arms (a config plus overrides) × seeds, each run in a child process,
resumable run by run, summarised into learning curves against samples drawn.

An arm's seed-``s`` run lives in ``OUT/ARM/seed_S/`` (an ordinary run directory). A run
is *done* when its ``metrics.jsonl`` holds the config's last step; a run that is not done
resumes from its newest checkpoint, or starts over when it has none. So an experiment
killed at any moment is continued by the same command.

What a run contributes (:func:`read_run`):

- ``eval``: ``(samples drawn so far, eval/accuracy)`` at every eval, step 0 included;
  samples drawn counts every completion generated for training, resampled groups
  included (``rollout/samples_drawn``), so arms that resample pay for it on the x-axis;
- ``reward``: the training reward per step, on the same axis;
- ``step_s``: median seconds per step over steps ≥ 2 (step 1 pays for lazy set-up);
- ``peak_rss_mb``, ``wall_s``.

:func:`summarise` gives per arm the mean ± sample std over seeds of the curve, of the
final accuracy, of the accuracy at fixed sample counts (linear interpolation between
evals), of the samples needed to first reach a target accuracy, and of the step time.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

Curve = list[tuple[float, float]]
SERIES = ("reward/", "rollout/len_mean")  # per-step metrics a RunResult keeps as curves


@dataclass
class Arm:
    """One arm of an experiment: a config file and the overrides that make the arm."""

    name: str
    config: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    eval: Curve
    reward: Curve
    step_s: float
    peak_rss_mb: float
    wall_s: float
    steps: int
    clip_frac: float = float("nan")  # mean policy/clip_frac over steps: how often the loss cut a gradient
    series: dict[str, Curve] = field(default_factory=dict)  # reward/* and rollout/len_mean against samples drawn


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed_{seed}"


# --------------------------------------------------------------------------- running


def _planned_steps(directory: Path) -> int | None:
    import yaml

    path = directory / "config.yaml"
    return yaml.safe_load(path.read_text())["train"]["steps"] if path.exists() else None


def is_done(directory: Path) -> bool:
    from verirl.metrics import read_metrics

    steps = _planned_steps(directory)
    if steps is None or not (directory / "metrics.jsonl").exists():
        return False
    return any(m.get("step") == steps and "reward/mean" in m for m in read_metrics(directory))


def _launch(arm: Arm, seed: int, directory: Path, common: Sequence[str], threads: int) -> subprocess.Popen:
    from verirl.checkpoint import latest_checkpoint

    resume = directory.exists() and latest_checkpoint(directory) is not None
    if directory.exists() and not resume:
        shutil.rmtree(directory)  # killed before its first checkpoint: start it over
    directory.mkdir(parents=True, exist_ok=True)
    overrides = [*common, *arm.overrides, f"train.seed={seed}", f"train.threads={threads}",
                 f"train.output_dir={directory}", "train.progress=false", f"train.resume={str(resume).lower()}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = (directory / "child.log").open("a")
    cmd = [sys.executable, "-m", "verirl.experiment", "--child", arm.config, "--", *overrides]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_arms(arms: Sequence[Arm], seeds: Sequence[int], out: Path, common: Sequence[str] = (), jobs: int = 1,
             threads: int = 1, log: Any = sys.stderr) -> list[Path]:
    """Run every (arm, seed) that is not done, ``jobs`` at a time; returns the run
    directories that failed (their ``child.log`` says why)."""
    pending = [(a, s) for s in seeds for a in arms if not is_done(run_dir(out, a.name, s))]
    running: list[tuple[Arm, int, float, subprocess.Popen]] = []
    failed: list[Path] = []
    while pending or running:
        while pending and len(running) < jobs:
            arm, seed = pending.pop(0)
            print(f"start {arm.name} seed {seed}", file=log, flush=True)
            running.append((arm, seed, time.perf_counter(), _launch(arm, seed, run_dir(out, arm.name, seed),
                                                                     common, threads)))
        time.sleep(0.5)
        for item in list(running):
            arm, seed, t0, proc = item
            if proc.poll() is None:
                continue
            running.remove(item)
            ok = proc.returncode == 0
            print(f"{'done' if ok else f'FAILED (exit {proc.returncode})'}: {arm.name} seed {seed} in "
                  f"{time.perf_counter() - t0:.0f} s", file=log, flush=True)
            if not ok:
                failed.append(run_dir(out, arm.name, seed))
    return failed


def _child(config: str, overrides: list[str]) -> int:
    from verirl.config import load_config
    from verirl.trainer import Trainer

    start = time.perf_counter()
    trainer = Trainer(load_config(config, overrides))
    try:
        trainer.train()
    finally:
        trainer.close()
    wall = Path(trainer.config.train.output_dir) / "wall.json"
    previous = json.loads(wall.read_text())["wall_s"] if wall.exists() else 0.0  # a resumed run adds up
    wall.write_text(json.dumps({"wall_s": previous + time.perf_counter() - start}))
    return 0


# --------------------------------------------------------------------------- reading and summarising


def read_run(directory: Path) -> RunResult:
    from verirl.metrics import read_metrics

    metrics = read_metrics(directory)
    steps = [m for m in metrics if "reward/mean" in m]
    drawn, total = {0: 0.0}, 0.0
    for m in steps:
        total += m.get("rollout/samples_drawn", 0.0)
        drawn[m["step"]] = total
    step_s = [m["perf/step_s"] for m in steps if m["step"] >= 2] or [m["perf/step_s"] for m in steps]
    wall = directory / "wall.json"
    return RunResult(
        eval=[(drawn[m["step"]], m["eval/accuracy"]) for m in metrics if "eval/accuracy" in m and m["step"] in drawn],
        reward=[(drawn[m["step"]], m["reward/mean"]) for m in steps],
        step_s=statistics.median(step_s) if step_s else float("nan"),
        peak_rss_mb=max((m["mem/peak_rss_mb"] for m in steps), default=float("nan")),
        wall_s=json.loads(wall.read_text())["wall_s"] if wall.exists() else float("nan"),
        steps=len(steps),
        clip_frac=statistics.fmean(clips) if (clips := [m["policy/clip_frac"] for m in steps
                                                        if "policy/clip_frac" in m]) else float("nan"),
        series={key: [(drawn[m["step"]], m[key]) for m in steps if isinstance(m.get(key), (int, float))]
                for key in sorted({k for m in steps for k in m if k.startswith(SERIES)})},
    )


def value_at(curve: Curve, x: float) -> float | None:
    """The curve at ``x`` by linear interpolation between its points; None outside them."""
    xs = [p[0] for p in curve]
    if not curve or x < xs[0] or x > xs[-1]:
        return None
    i = bisect.bisect_left(xs, x)
    if xs[i] == x:
        return curve[i][1]
    (x0, y0), (x1, y1) = curve[i - 1], curve[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def samples_to_reach(curve: Curve, target: float) -> float | None:
    """The first sample count at which the curve reaches ``target`` (None if it never does)."""
    return next((x for x, y in curve if y >= target), None)


def mean_sd(values: Sequence[float | None]) -> tuple[float, float, int] | None:
    """``(mean, sample std, n)`` of the values that are not None or nan; None if there are none."""
    got = [v for v in values if v is not None and v == v]
    if not got:
        return None
    return statistics.fmean(got), (statistics.stdev(got) if len(got) > 1 else 0.0), len(got)


def summarise(runs: dict[str, dict[int, RunResult]], sample_points: Sequence[float] = (),
              target: float | None = None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for arm, by_seed in runs.items():
        results = list(by_seed.values())
        out[arm] = {
            "seeds": sorted(by_seed),
            "start": mean_sd([r.eval[0][1] if r.eval else None for r in results]),
            "final": mean_sd([r.eval[-1][1] if r.eval else None for r in results]),
            "best": mean_sd([max(y for _, y in r.eval) if r.eval else None for r in results]),
            "at": {x: mean_sd([value_at(r.eval, x) for r in results]) for x in sample_points},
            "to_target": mean_sd([samples_to_reach(r.eval, target) for r in results]) if target is not None else None,
            "reached": sum(samples_to_reach(r.eval, target) is not None for r in results) if target is not None else 0,
            "step_s": mean_sd([r.step_s for r in results]),
            "clip_frac": mean_sd([r.clip_frac for r in results]),
            "peak_rss_mb": max(r.peak_rss_mb for r in results),
            "wall_s": mean_sd([r.wall_s for r in results]),
        }
    return out


def fmt(ms: tuple[float, float, int] | None, digits: int = 3) -> str:
    if ms is None:
        return "—"
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def markdown_table(summary: dict[str, dict[str, Any]], sample_points: Sequence[float] = (),
                   target: float | None = None) -> str:
    """One row per arm: start, final and best accuracy, accuracy at the sample points,
    samples to reach the target, the loss's clip fraction, s/step, peak RSS (mean ± sd
    over seeds)."""
    head = ["arm", "start acc", "final acc", "best acc", *[f"acc @ {int(x):,}" for x in sample_points]]
    if target is not None:
        head.append(f"samples to {target:.2f} (runs reaching it)")
    head += ["clip frac", "s / step", "peak RSS, MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for arm, s in summary.items():
        row = [arm, fmt(s["start"]), fmt(s["final"]), fmt(s["best"]), *[fmt(s["at"][x]) for x in sample_points]]
        if target is not None:
            reach = s["to_target"]
            row.append(("—" if reach is None else f"{reach[0]:,.0f} ± {reach[1]:,.0f}") + f" ({s['reached']}/"
                       f"{len(s['seeds'])})")
        row += [fmt(s["clip_frac"], 4), fmt(s["step_s"], 2), f"{s['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_arms(runs: dict[str, dict[int, RunResult]], path: Path, title: str = "") -> None:
    """Eval accuracy and training reward against samples drawn: one line per arm (mean over
    seeds at each eval) with a ±1 sd band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from verirl.plotting import draw_band

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, (arm, by_seed) in enumerate(runs.items()):
        color = plt.get_cmap("tab10")(k % 10)
        for ax, key in ((axes[0], "eval"), (axes[1], "reward")):
            curves = [getattr(r, key) for r in by_seed.values() if getattr(r, key)]
            if not curves:
                continue
            # seeds that resample draw different sample counts: compare them where all are defined
            xs = sorted({x for c in curves for x, _ in c if all(value_at(o, x) is not None for o in curves)})
            stats = [mean_sd([value_at(c, x) for c in curves]) for x in xs]
            draw_band(ax, xs, [s[0] for s in stats], [s[1] for s in stats], label=arm, color=color,
                      marker="o" if key == "eval" else None)
    for ax, label in ((axes[0], "eval accuracy (greedy)"), (axes[1], "training reward (mean)")):
        ax.set_xlabel("training samples drawn (completions)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = max((len(v) for v in runs.values()), default=0)
    axes[0].set_title(title or f"mean ± sd over {seeds} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--child"] or "--" not in argv:
        print("usage: python -m verirl.experiment --child CONFIG -- OVERRIDES... (started by run_arms)",
              file=sys.stderr)
        return 2
    sep = argv.index("--")
    return _child(argv[1], argv[sep + 1 :])


if __name__ == "__main__":
    sys.exit(main())
