"""`verirl plot` and the plotting module: real PNGs opened with Pillow, curves checked
against plain Python references."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
from PIL import Image  # noqa: E402  (matplotlib depends on Pillow)

from verirl.cli import main as cli_main  # noqa: E402
from verirl.plotting import (  # noqa: E402
    COLUMNS, DPI, PANEL_INCHES, mean_std, plot_groups, plot_runs, read_run, rolling_mean, run_names, select_keys,
    series, with_samples_seen,
)


def fake_run(path: Path, steps: int, slope: float, per_step: int = 32, eval_every: int = 5, resample: bool = False):
    """A run directory as the trainer writes it: metrics.jsonl and config.yaml."""
    path.mkdir(parents=True)
    lines = [{"step": 0, "eval/accuracy": 0.5}]
    for s in range(1, steps + 1):
        r = {"step": s, "reward/mean": slope * s, "reward/std": 0.1, "reward/math_answer": slope * s,
             "policy/kl": 0.01 * s, "policy/clip_frac": 0.0, "policy/entropy": 1.0 - 0.01 * s,
             "rollout/len_mean": 20.0, "rollout/zero_std_frac": 0.5, "perf/step_s": 0.7,
             "rollout/samples_drawn": per_step * (2 if resample and s % 2 else 1)}
        if s % eval_every == 0:
            r["eval/accuracy"] = 0.5 + slope * s
        lines.append(r)
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (path / "config.yaml").write_text(f"rollout:\n  prompts_per_step: {per_step // 8}\n  group_size: 8\n")
    return path


def labelled_lines(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def colour_present(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 12) -> bool:
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return bool((np.abs(pixels - np.array(rgb)) <= tolerance).all(-1).any())


def test_plot_runs_writes_a_png_of_the_expected_size_with_one_line_per_run(tmp_path):
    runs = {"a": read_run(fake_run(tmp_path / "a", 30, 0.01)), "b": read_run(fake_run(tmp_path / "b", 30, 0.02))}
    out = tmp_path / "plot.png"
    fig = plot_runs(runs, out=out)
    keys = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert keys == ["reward/mean", "reward/math_answer", "eval/accuracy", "policy/kl", "policy/clip_frac",
                    "policy/entropy", "rollout/len_mean", "rollout/zero_std_frac", "perf/step_s"]
    for ax in fig.axes:
        if ax.get_visible():
            assert labelled_lines(ax) == ["a", "b"], ax.get_title()
    with Image.open(out) as image:
        rows = math.ceil(len(keys) / COLUMNS)
        assert image.format == "PNG"
        assert image.size == (round(PANEL_INCHES[0] * COLUMNS * DPI), round(PANEL_INCHES[1] * rows * DPI))
        # both runs' colours are drawn (matplotlib's first two: tab:blue, tab:orange), a third is not
        assert colour_present(image, (0x1F, 0x77, 0xB4)) and colour_present(image, (0xFF, 0x7F, 0x0E))
        assert not colour_present(image, (0x2C, 0xA0, 0x2C), tolerance=4)


def test_the_cli_overlays_runs_and_takes_keys_patterns(tmp_path, capsys):
    a, b, c = (fake_run(tmp_path / n / "run", 12, 0.01 * (i + 1)) for i, n in enumerate("xyz"))
    out = tmp_path / "cmp.png"
    assert cli_main(["plot", str(a), str(b), str(c), "--out", str(out), "--keys", "reward/*", "eval/accuracy",
                     "--x", "samples"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as image:  # reward/mean, reward/math_answer, eval/accuracy: one row of three
        assert image.size == (round(PANEL_INCHES[0] * 3 * DPI), round(PANEL_INCHES[1] * DPI))
        assert colour_present(image, (0x2C, 0xA0, 0x2C))  # the third run
    # one run: the PNG goes into its directory
    assert cli_main(["plot", str(a)]) == 0 and (a / "curves.png").exists()


def test_plot_refuses_what_is_not_a_run(tmp_path, capsys):
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err
    runs = {"a": read_run(fake_run(tmp_path / "a", 3, 0.1))}
    with pytest.raises(ValueError, match="none of the keys nope/x"):
        plot_runs(runs, keys=["nope/x"])


def test_samples_seen_counts_resampled_completions_and_falls_back_to_the_config(tmp_path):
    records = read_run(fake_run(tmp_path / "r", 4, 0.1, per_step=16, resample=True))
    assert [r["samples_seen"] for r in records] == [0, 32, 48, 80, 96]
    old = [{"step": 0, "eval/accuracy": 0.5}] + [{"step": s, "reward/mean": 0.1} for s in (1, 2, 3)]
    assert [r["samples_seen"] for r in with_samples_seen(old, per_step=8)] == [0, 8, 16, 24]
    xs, ys = series(records, "eval/accuracy", x="samples")
    assert xs == [0.0] and ys == [0.5]


def test_mean_std_and_rolling_mean_against_plain_python():
    runs = [([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0]), ([1, 2, 3], [2.0, 2.0, 5.0]), ([1, 2, 3, 4], [0.0, 5.0, 1.0, 9.0])]
    xs, mean, std = mean_std(runs)
    assert xs == [1, 2, 3]  # the points every run has
    for i, x in enumerate(xs):
        column = [dict(zip(rx, ry))[x] for rx, ry in runs]
        assert mean[i] == pytest.approx(statistics.fmean(column))
        assert std[i] == pytest.approx(statistics.stdev(column))
    # xs that differ between runs (dynamic sampling): matched by position, at their mean
    xs, mean, _ = mean_std([([32, 64], [1.0, 2.0]), ([48, 80], [3.0, 4.0])])
    assert xs == [40, 72] and mean == [2.0, 3.0]
    assert mean_std([([1, 2], [5.0, 6.0])])[2] == [0.0, 0.0]
    ys = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    for window in (1, 2, 3, 10):
        want = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1]) for i in range(len(ys))]
        assert rolling_mean(ys, window) == pytest.approx(want)


def test_groups_of_seeds_draw_a_mean_and_a_band(tmp_path):
    seeds = [read_run(fake_run(tmp_path / f"s{i}", 10, 0.01 * (i + 1))) for i in range(3)]
    fig = plot_groups({"grpo": seeds, "ppo": seeds[:1]}, keys=["reward/mean"], smooth=1)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert labelled_lines(ax) == ["grpo", "ppo"]
    line = next(line for line in ax.get_lines() if line.get_label() == "grpo")
    assert list(line.get_ydata()) == pytest.approx([0.02 * s for s in range(1, 11)])  # mean of 0.01, 0.02, 0.03 × s
    assert len(ax.collections) == 1  # one band: the group of three; a single run has none


def test_keys_and_names():
    runs = [[{"step": 1, "reward/mean": 1.0, "reward/std": 0.1, "reward/fmt": 0.5, "policy/kl": 0.0, "note": "x"}]]
    assert select_keys(runs) == ["reward/mean", "reward/fmt", "policy/kl"]
    assert select_keys(runs, ["reward/std", "policy/*"]) == ["reward/std", "policy/kl"]
    assert run_names([Path("/a/run"), Path("/b/run"), Path("/b/run")]) == ["a/run", "b/run", "b/run (2)"]
    assert run_names([Path("/a/x"), Path("/a/y")]) == ["x", "y"]
