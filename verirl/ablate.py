"""``verirl ablate CONFIG.yaml``: outcome- versus process-reward arms × seeds, one report.

An ablation config names a base training config and the arms, each a mapping merged
over the base (nested keys merge, lists replace)::

    base: tiny_steps.yaml          # relative to this file
    seeds: [0, 1, 2]
    set: [train.steps=300]         # dotted overrides for every arm
    target: 0.5                    # the "samples to reach" column (optional)
    arms:
      outcome_grpo: {}
      rule_process_grpo:
        algo: {reward_mode: process}
        rewards: [{verifier: arith_steps, weight: 0.5}, {verifier: math_answer}]

Every arm must draw the same samples (``prompts_per_step × group_size`` for ``steps``
steps) and a seed gives every arm the same prompts in the same order (the seeded
``ProblemStream``), so the arms differ by their rewards and algorithms alone. Runs go
to ``OUT/ARM/seed_S/`` through :func:`verirl.experiment.run_arms`: an ablation that is
killed is continued, run by run, by the same command.

``OUT/ablation.md`` holds the accuracy table of :func:`verirl.experiment.markdown_table`
(final, best, at fixed sample counts, samples to the target, s/step) and the signs of
reward hacking per arm (:func:`hacking_signs`); ``OUT/ablation.png`` the accuracy and
reward curves against samples drawn, one line per arm with a ±1 sd band.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from verirl.experiment import Arm, RunResult, fmt, markdown_table, mean_sd, plot_arms, read_run, run_arms, run_dir
from verirl.experiment import summarise as summarise_runs
from verirl.verifier import ConfigError

KEYS = ("base", "seeds", "set", "target", "sample_points", "arms")


@dataclass
class Ablation:
    path: Path
    base: Path
    seeds: list[int]
    common: list[str]
    target: float | None
    sample_points: list[float]
    arms: dict[str, dict[str, Any]]


def merge(base: Any, over: Any) -> Any:
    """``over`` merged onto ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for key, value in over.items():
            out[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def load_ablation(path: str | Path) -> Ablation:
    """Read and check an ablation config; every arm's training config is validated here,
    before any run starts, and must draw the same samples as the others."""
    from verirl.config import config_from_mapping, read_yaml

    path = Path(path)
    data = read_yaml(path, "ablation config")
    if not isinstance(data, dict):
        raise ConfigError(f"ablation config {path} must be a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"ablation config {path}: unknown keys {unknown}; valid keys: {', '.join(KEYS)}")
    if "base" not in data or not isinstance(data.get("arms"), dict) or not data["arms"]:
        raise ConfigError(f"ablation config {path} needs 'base' (a training config) and 'arms' (name: overrides)")
    base = (path.parent / str(data["base"])).resolve()
    if not base.exists():
        raise ConfigError(f"ablation config {path}: base config not found: {base}")
    seeds = data.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds):
        raise ConfigError(f"ablation config {path}: 'seeds' must be a non-empty list of ints, got {seeds!r}")
    common = [str(x) for x in data.get("set") or []]
    for name, arm in data["arms"].items():
        if not isinstance(arm, dict) and arm is not None:
            raise ConfigError(f"ablation arm {name!r} must be a mapping of config sections, got {arm!r}")
    ablation = Ablation(path, base, seeds, common, data.get("target"), [float(x) for x in data.get("sample_points")
                                                                             or []],
                        {str(k): v or {} for k, v in data["arms"].items()})
    budgets = {}
    for name in ablation.arms:
        try:
            config = config_from_mapping(arm_mapping(ablation, name), common)
        except ConfigError as exc:
            raise ConfigError(f"ablation arm {name!r}: {exc}") from None
        budgets[name] = (config.rollout.prompts_per_step * config.rollout.group_size, config.train.steps)
    if len(set(budgets.values())) > 1:
        listed = ", ".join(f"{n}: {b[0]} completions × {b[1]} steps" for n, b in budgets.items())
        raise ConfigError(f"ablation arms must draw the same samples, got {listed}")
    return ablation


def arm_mapping(ablation: Ablation, name: str) -> dict[str, Any]:
    """The arm's training config as a mapping: the base file merged with the arm."""
    base = yaml.safe_load(ablation.base.read_text()) or {}
    return merge(base, ablation.arms[name])


def write_arm_config(ablation: Ablation, name: str, out: Path) -> Path:
    """``OUT/ARM/arm.yaml``: the arm's training config, the file its runs start from."""
    target = out / name / "arm.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(arm_mapping(ablation, name), sort_keys=False))
    return target


# --------------------------------------------------------------------------- hacking signs


def _quarter_means(curve: list[tuple[float, float]]) -> tuple[float, float] | None:
    if len(curve) < 4:
        return None
    q = max(1, len(curve) // 4)
    return statistics.fmean(y for _, y in curve[:q]), statistics.fmean(y for _, y in curve[-q:])


def hacking_signs(result: RunResult, process_keys: Sequence[str]) -> dict[str, Any]:
    """Signs that a run optimises its reward rather than the task:

    - ``reward_gain``: last-quarter minus first-quarter mean of the training reward of the
      process terms (``reward/NAME`` for each process verifier; the total reward if none);
    - ``acc_drop``: best eval accuracy minus the final one (≥ 0);
    - ``reward_up_acc_down``: the reward kept rising (``reward_gain > 0``) while accuracy
      fell from its best by at least 0.02;
    - ``length_ratio``: mean completion length in the last quarter over the first;
      ``length_drift`` when it is above 1.5 or below 1/1.5.
    """
    curves = [result.series[k] for k in process_keys if result.series.get(k)] or [result.reward]
    gains = [g[1] - g[0] for c in curves if (g := _quarter_means(c)) is not None]
    reward_gain = statistics.fmean(gains) if gains else float("nan")
    accs = [y for _, y in result.eval]
    acc_drop = (max(accs) - accs[-1]) if accs else float("nan")
    lengths = _quarter_means(result.series.get("rollout/len_mean", []))
    ratio = lengths[1] / lengths[0] if lengths and lengths[0] > 0 else float("nan")
    return {
        "reward_gain": reward_gain,
        "acc_drop": acc_drop,
        "reward_up_acc_down": bool(reward_gain > 0 and acc_drop >= 0.02),
        "length_ratio": ratio,
        "length_drift": bool(ratio > 1.5 or ratio < 1 / 1.5),
    }


def hacking_table(runs: dict[str, dict[int, RunResult]], process_keys: dict[str, list[str]]) -> str:
    lines = ["| arm | process-reward gain (q4 − q1) | accuracy drop from best | reward ↑ while accuracy ↓ "
             "| length q4 / q1 | length drift |", "|---|---:|---:|---:|---:|---:|"]
    for arm, by_seed in runs.items():
        signs = [hacking_signs(r, process_keys.get(arm, [])) for r in by_seed.values()]
        lines.append("| " + " | ".join([
            arm,
            fmt(mean_sd([s["reward_gain"] for s in signs])),
            fmt(mean_sd([s["acc_drop"] for s in signs])),
            f"{sum(s['reward_up_acc_down'] for s in signs)}/{len(signs)} seeds",
            fmt(mean_sd([s["length_ratio"] for s in signs]), 2),
            f"{sum(s['length_drift'] for s in signs)}/{len(signs)} seeds",
        ]) + " |")
    return "\n".join(lines) + "\n"


def _process_terms(config_path: Path) -> list[str]:
    """``reward/NAME`` of the arm's process verifiers (where step-level reward could be hacked)."""
    from verirl.config import load_config
    from verirl.plugins import get_verifier
    from verirl.rewards import parse_rewards

    terms = parse_rewards(load_config(config_path).rewards)
    return [f"reward/{t.name}" for t in terms if get_verifier(t.verifier).kind == "process"]


# --------------------------------------------------------------------------- the command


def separation(summary: dict[str, dict[str, Any]]) -> list[str]:
    """For each pair of arms, whether their final accuracies differ by more than the seeds'
    spread: ``|Δ mean| > sd_a + sd_b`` (a plain, conservative reading for 3 seeds)."""
    names = list(summary)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            fa, fb = summary[a]["final"], summary[b]["final"]
            if fa is None or fb is None:
                continue
            gap, spread = fa[0] - fb[0], fa[1] + fb[1]
            verdict = "exceeds" if abs(gap) > spread else "within"
            out.append(f"- {a} − {b}: {gap:+.3f} final accuracy, {verdict} the seed spread (sd sum {spread:.3f})")
    return out


def run_ablation(path: str | Path, out: str | Path | None = None, jobs: int = 1, threads: int = 1,
                 report_only: bool = False, log: Any = sys.stderr) -> Path:
    """Run (or continue) the ablation and write its report; returns ``ablation.md``'s path."""
    ablation = load_ablation(path)
    out = Path(out) if out is not None else Path("runs") / f"ablate_{ablation.path.stem}"
    out.mkdir(parents=True, exist_ok=True)
    arms = [Arm(name, str(write_arm_config(ablation, name, out))) for name in ablation.arms]
    start = time.perf_counter()
    if not report_only:
        failed = run_arms(arms, ablation.seeds, out, ablation.common, jobs=jobs, threads=threads, log=log)
        if failed:
            raise RuntimeError("ablation runs failed; see " + ", ".join(str(d / "child.log") for d in failed))
    runs = {a.name: {s: read_run(run_dir(out, a.name, s)) for s in ablation.seeds} for a in arms}
    from verirl.config import load_config

    first = load_config(arms[0].config, ablation.common)
    budget = first.rollout.prompts_per_step * first.rollout.group_size * first.train.steps
    points = ablation.sample_points or [budget / 4, budget / 2, budget]
    summary = summarise_runs(runs, points, ablation.target)
    process_keys = {a.name: _process_terms(Path(a.config)) for a in arms}
    wall = {a: fmt(s["wall_s"], 0) for a, s in summary.items()}
    text = "\n".join([
        f"# Ablation: {ablation.path.name}",
        "",
        f"Base config `{ablation.base.name}` + each arm; seeds {ablation.seeds}; {first.train.steps} steps of "
        f"{first.rollout.prompts_per_step} prompts × {first.rollout.group_size} completions; eval: greedy on "
        f"{first.data.max_eval or 'all'} held-out problems (`{first.train.eval_verifier}`). Mean ± sd over seeds.",
        "",
        "## Accuracy",
        "",
        markdown_table(summary, points, ablation.target),
        "Differences of final accuracy against the seed spread:",
        "",
        *separation(summary),
        "",
        "## Signs of reward hacking",
        "",
        hacking_table(runs, process_keys),
        "## Cost",
        "",
        "| arm | wall time per run, s |",
        "|---|---:|",
        *[f"| {a} | {w} |" for a, w in wall.items()],
        "",
        f"(report written {time.strftime('%Y-%m-%d %H:%M')}, {time.perf_counter() - start:.0f} s in this call)",
        "",
    ])
    (out / "ablation.md").write_text(text)
    plot_arms(runs, out / "ablation.png", title=f"{ablation.path.name}: mean ± sd over {len(ablation.seeds)} seeds")
    return out / "ablation.md"
