"""Curves of training runs as a PNG (``verirl plot``; ``verirl ablate`` draws with the same code).

One panel per metric key, against the training step or the samples seen; every run (or
group of runs) in one colour across the panels, named in one legend. A group of several
runs (seeds of one setting) is drawn as its mean with a ± one standard deviation band.

- :func:`plot_runs` ``(runs: {name: records}, keys, x, out)``: one curve per run;
- :func:`plot_groups` ``(groups: {name: [records, ...]}, keys, x, out)``: mean ± std bands;
- :func:`mean_std` and :func:`draw_band`: the band's numbers and its drawing, for other figures.

``records`` are a run's ``metrics.jsonl`` lines (:func:`read_run`). matplotlib is an
optional extra (``pip install 'verirl[plot]'``), imported when a figure is drawn.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from verirl.metrics import read_metrics

Records = list[dict[str, Any]]

# The default panels: patterns over the metric keys, in this order.
DEFAULT_KEYS = (
    "reward/mean", "reward/*", "eval/accuracy", "policy/kl", "policy/clip_frac", "policy/entropy",
    "rollout/len_mean", "rollout/zero_std_frac", "perf/step_s",
)
# Never a panel of their own unless asked for by name.
HIDDEN = {"reward/std"}
COLUMNS = 3
PANEL_INCHES = (4.2, 3.0)
DPI = 100
X_LABELS = {"step": "step", "samples": "samples seen (completions)"}


def read_run(run_dir: str | Path) -> Records:
    """A run's metrics records, each with ``samples_seen`` (completions sampled up to and
    including that step) added: from ``rollout/samples_drawn``, or for runs that predate it,
    ``prompts_per_step × group_size`` from the run's ``config.yaml``."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    per_step = None
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        rollout = (yaml.safe_load(config_path.read_text()) or {}).get("rollout", {})
        if "prompts_per_step" in rollout and "group_size" in rollout:
            per_step = rollout["prompts_per_step"] * rollout["group_size"]
    return with_samples_seen(records, per_step)


def with_samples_seen(records: Records, per_step: int | None = None) -> Records:
    """``records`` (sorted by step) with ``samples_seen`` on each: the running sum of
    ``rollout/samples_drawn`` (else ``per_step`` per training step; eval-only records add 0)."""
    seen = 0
    out = []
    for r in sorted(records, key=lambda r: r["step"]):
        if "reward/mean" in r:  # a training step
            seen += r.get("rollout/samples_drawn") or per_step or 0
        out.append({**r, "samples_seen": seen})
    return out


def run_names(dirs: Sequence[Path]) -> list[str]:
    """Distinct display names for run directories: the folder names, with their parents
    where two folders share a name."""
    names = [d.resolve().name for d in dirs]
    names = [str(Path(d.resolve().parent.name) / n) if names.count(n) > 1 else n for d, n in zip(dirs, names)]
    # the same directory given twice: number the repeats
    return [n if names[:i].count(n) == 0 else f"{n} ({names[:i].count(n) + 1})" for i, n in enumerate(names)]


def select_keys(runs: Sequence[Records], patterns: Sequence[str] | None = None) -> list[str]:
    """The metric keys to plot: those present in some run that match ``patterns``
    (shell-style, default :data:`DEFAULT_KEYS`), in the patterns' order, each once."""
    present = list(dict.fromkeys(k for records in runs for r in records for k, v in r.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)))
    chosen: list[str] = []
    for pattern in patterns or DEFAULT_KEYS:
        for key in present:
            literal = key == pattern
            if (literal or (fnmatch.fnmatchcase(key, pattern) and key not in HIDDEN)) and key not in chosen:
                chosen.append(key)
    return [k for k in chosen if k not in ("step", "samples_seen")]


def series(records: Records, key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """``(xs, ys)``: the finite values of ``key`` against ``step`` or ``samples_seen``."""
    xkey = "samples_seen" if x == "samples" else "step"
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(float(r[xkey]))
            ys.append(float(value))
    return xs, ys


def rolling_mean(ys: Sequence[float], window: int) -> list[float]:
    """The trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def mean_std(runs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[list[float], list[float], list[float]]:
    """Mean and (sample) standard deviation across runs, point by point.

    ``runs``: per run, ``(xs, ys)``. Runs are matched at the xs they all share; when they
    share none (samples seen differ between seeds under dynamic sampling), by position,
    at the mean of their xs. Returns ``(xs, mean, std)``; std is 0 for a single run."""
    if not runs:
        return [], [], []
    common = set(runs[0][0]).intersection(*(set(xs) for xs, _ in runs[1:]))
    if len(common) == min(len(set(xs)) for xs, _ in runs):
        xs = sorted(common)
        columns = [[dict(zip(rx, ry))[x] for rx, ry in runs] for x in xs]
    else:
        n = min(len(ry) for _, ry in runs)
        xs = [statistics.fmean(rx[i] for rx, _ in runs) for i in range(n)]
        columns = [[ry[i] for _, ry in runs] for i in range(n)]
    means = [statistics.fmean(c) for c in columns]
    stds = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]
    return xs, means, stds


def draw_band(ax: Any, xs: Sequence[float], mean: Sequence[float], std: Sequence[float], *, label: str,
              color: Any, marker: str | None = None) -> Any:
    """The mean as a line and mean ± std as a translucent band on ``ax``; returns the line."""
    (line,) = ax.plot(xs, mean, color=color, label=label, marker=marker, markersize=3, linewidth=1.6)
    if any(s > 0 for s in std):
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=color, alpha=0.2, linewidth=0)
    return line


def auto_window(n_points: int) -> int:
    """The default smoothing window: about 1/25 of the run's steps."""
    return max(1, round(n_points / 25))


def plot_groups(groups: Mapping[str, Sequence[Records]], keys: Sequence[str] | None = None, x: str = "step",
                out: str | Path | None = None, smooth: int | None = None, title: str | None = None) -> Any:
    """Draw each group (name → its runs' records) on one panel per key and save a PNG to
    ``out`` (if given); returns the matplotlib Figure.

    One run: its curve, smoothed by a rolling mean of ``smooth`` steps (default
    :func:`auto_window`; 1: raw) over the raw values drawn faintly behind; several runs:
    the mean ± std band of the smoothed curves. Sparse keys (evaluated every few steps,
    such as ``eval/accuracy``) are never smoothed and are drawn with markers. Each group
    has one labelled line per panel, in the same colour on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in X_LABELS:
        raise ValueError(f"x must be one of {sorted(X_LABELS)}, got {x!r}")
    all_runs = [records for runs in groups.values() for records in runs]
    chosen = select_keys(all_runs, keys)
    if not chosen:
        wanted = ", ".join(keys or DEFAULT_KEYS)
        raise ValueError(f"none of the keys {wanted} is in these runs' metrics")
    rows = math.ceil(len(chosen) / COLUMNS)
    cols = min(COLUMNS, len(chosen))
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows), dpi=DPI,
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    steps_total = max((sum("reward/mean" in r for r in records) for records in all_runs), default=0)
    for ax, key in zip(axes.flat, chosen):
        for (name, runs), color in zip(groups.items(), _cycle(colors)):
            curves = [series(records, key, x) for records in runs]
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            dense = max(len(c[0]) for c in curves) > steps_total / 2
            window = (smooth if smooth is not None else auto_window(steps_total)) if dense else 1
            if len(curves) == 1 and window > 1:
                ax.plot(curves[0][0], curves[0][1], color=color, alpha=0.25, linewidth=0.8, label="_raw")
            smoothed = [(xs, rolling_mean(ys, window)) for xs, ys in curves]
            draw_band(ax, *mean_std(smoothed), label=name, color=color, marker=None if dense else "o")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(X_LABELS[x], fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_visible(False)
    legend: dict[str, Any] = {}  # one entry per group, from whichever panel drew it first
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    height = PANEL_INCHES[1] * rows
    top = 0.0  # inches above the panels: the title, then the legend
    if title:
        fig.suptitle(title, y=1 - 0.05 / height, va="top", fontsize=11)
        top += 0.3
    fig.legend(list(legend.values()), list(legend), loc="upper center", bbox_to_anchor=(0.5, 1 - top / height),
               ncol=min(len(legend), 6), fontsize=9, frameon=False)
    top += 0.3
    fig.tight_layout(rect=(0, 0, 1, 1 - top / height))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return fig


def plot_runs(runs: Mapping[str, Records], keys: Sequence[str] | None = None, x: str = "step",
              out: str | Path | None = None, smooth: int | None = None, title: str | None = None) -> Any:
    """One curve per run (name → its metrics records); see :func:`plot_groups`."""
    return plot_groups({name: [records] for name, records in runs.items()}, keys, x, out, smooth, title)


def _cycle(colors: Sequence[Any]):
    while True:
        yield from colors
