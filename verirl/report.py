"""What a run shows on screen: a table of sampled completions every
``train.show_samples_every`` steps, and a one-screen summary when the run ends.

Both are plain text built by pure functions (rows in, a string out); the trainer prints
the table above its progress bar, the command line prints the summary.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Sequence

from verirl.checkpoint import latest_checkpoint
from verirl.metrics import read_metrics

ELLIPSIS = "…"


def one_line(text: str) -> str:
    """``text`` on one line: newlines shown as ``⏎``, tabs as spaces, other control
    characters (and lone surrogates) as ``?``."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("⏎")
        elif ch in "\t\r":
            out.append(" ")
        elif not ch.isprintable() or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)


def head(text: str, width: int) -> str:
    """The first ``width`` characters of ``text`` on one line (``…`` where cut)."""
    text = one_line(text.strip())
    return text if len(text) <= width else text[: max(width - 1, 0)] + ELLIPSIS


def tail(text: str, width: int) -> str:
    """The last ``width`` characters of ``text`` on one line (``…`` where cut)."""
    text = one_line(text.strip())
    return text if len(text) <= width else ELLIPSIS + text[len(text) - max(width - 1, 0):]


def format_score(score: Any) -> str:
    """An outcome score as a number, a process verifier's steps as their mean and count,
    ``None`` (does not apply) as ``–``."""
    if score is None:
        return "–"
    if isinstance(score, (list, tuple)):
        rewards = [s[2] if isinstance(s, (list, tuple)) else s.reward for s in score]
        return f"{sum(rewards) / len(rewards):.2f}/{len(rewards)}st" if rewards else "0 st"
    return f"{float(score):.2f}"


def sample_table(step: int, rows: Sequence[dict[str, Any]], total: int, width: int | None = None) -> str:
    """A compact table of sampled completions: question head, completion tail, gold
    answer, each verifier's score and the reward.

    ``rows``: dicts with ``question``, ``completion``, ``answer``, ``scores`` ({verifier:
    score}) and ``reward``; ``total``: completions in the step (for the header line).
    ``width``: characters per line (default: the terminal's, at most 160).
    """
    width = width or min(shutil.get_terminal_size((120, 24)).columns, 160)
    names = list(dict.fromkeys(n for r in rows for n in r["scores"]))
    score_cols = [(n, max(len(n), 6)) for n in names]
    gold_w = max([4] + [len(head(str(r["answer"]), 12)) for r in rows])
    fixed = 2 + (gold_w + 2) + sum(w + 2 for _, w in score_cols) + 8  # indent, gold, scores, reward
    free = max(width - fixed, 24)
    prompt_w = max(12, free // 3)
    completion_w = max(12, free - prompt_w - 2)
    lines = [f"── step {step}: {len(rows)} of {total} completions " + "─" * max(0, width - 40)]
    lines[0] = lines[0][:width]
    header = (f"  {'question':<{prompt_w}}  {'completion (end)':<{completion_w}}  {'gold':<{gold_w}}  "
              + "".join(f"{n:>{w}}  " for n, w in score_cols) + f"{'reward':>6}")
    lines.append(header.rstrip())
    for r in rows:
        line = (f"  {head(r['question'], prompt_w):<{prompt_w}}  {tail(r['completion'], completion_w):<{completion_w}}  "
                f"{head(str(r['answer']), gold_w):<{gold_w}}  "
                + "".join(f"{format_score(r['scores'].get(n)):>{w}}  " for n, w in score_cols)
                + f"{r['reward']:>6.2f}")
        lines.append(line)
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def run_summary(output_dir: str | Path, wall_s: float, first_step: int = 0) -> str:
    """The end-of-run summary, from the run's whole ``metrics.jsonl`` (so a resumed run
    counts the evals before its resume): steps, wall time, eval accuracy first → best →
    last, the training reward, verifier failures and skipped updates, and where the
    outputs are. ``first_step``: the step this invocation started from (0, or the
    checkpoint it resumed)."""
    out = Path(output_dir)
    records = read_metrics(out)
    steps = [r for r in records if "reward/mean" in r]
    last_step = max((r["step"] for r in records), default=0)
    lines = [f"verirl train: {last_step} steps"
             + (f" ({last_step - first_step} in this run, resumed at step {first_step})" if first_step else "")
             + f" in {_duration(wall_s)}"]
    evals = [(r["step"], r["eval/accuracy"]) for r in records if r.get("eval/accuracy") is not None]
    if evals:
        best = max(evals, key=lambda e: e[1])
        lines.append(f"  eval/accuracy    {evals[0][1]:.3f} (step {evals[0][0]}) → best {best[1]:.3f} "
                     f"(step {best[0]}) → last {evals[-1][1]:.3f} (step {evals[-1][0]})")
    rewards = [r["reward/mean"] for r in steps if r.get("reward/mean") is not None]
    if rewards:
        k = max(1, min(10, len(rewards) // 5))
        span = f"{k} steps" if k > 1 else "step"
        lines.append(f"  reward/mean      {_mean(rewards[:k]):.3f} (first {span}) → "
                     f"{_mean(rewards[-k:]):.3f} (last {span})")
    faults: dict[str, dict[str, int]] = {}
    for r in steps:
        for key, value in r.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "verifier" and parts[2] in ("timeouts", "errors") and value:
                faults.setdefault(parts[1], {"timeouts": 0, "errors": 0})[parts[2]] += int(value)
    if faults:
        listed = ", ".join(f"{n}: {c['timeouts']} timeouts, {c['errors']} errors" for n, c in sorted(faults.items()))
        lines.append(f"  verifier faults  {listed} (those samples got the term's fallback)")
    else:
        lines.append("  verifier faults  none")
    skipped = sum(int(r.get("optim/skipped_updates") or 0) for r in steps)
    lines.append(f"  skipped updates  {skipped} (NaN/inf loss or gradient)" if skipped else "  skipped updates  none")
    checkpoint = latest_checkpoint(out)
    lines.append(f"  run directory    {out}")
    lines.append(f"    metrics        {out / 'metrics.jsonl'}  (plot: verirl plot {out})")
    if (out / "samples.jsonl").exists():
        lines.append(f"    samples        {out / 'samples.jsonl'}")
    if checkpoint is not None:
        lines.append(f"    checkpoint     {checkpoint}  (verirl eval --model {checkpoint} ...)")
    return "\n".join(lines)
