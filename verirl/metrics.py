"""Per-step metrics: ``metrics.jsonl`` (one JSON object per step), TensorBoard when
installed, and helpers for memory and timing."""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("verirl.metrics")


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


class UpdateStats:
    """Loss statistics over the micro-batches of an update.

    :meth:`add` each micro-batch's dict of scalars and call :meth:`end_minibatch` after
    each optimizer step. :meth:`means` gives, for the additive keys (:data:`ADDITIVE`:
    losses aggregated over the whole minibatch's denominators, whose micro-batch parts
    add up to the minibatch's loss), the mean over minibatches of their sum; for every
    other key the mean over micro-batches; ``ratio_max`` is the max.
    """

    ADDITIVE = frozenset({"loss", "pg_loss", "value_loss", "entropy_bonus"})

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.ratio_max = 0.0
        self.minibatches = 0
        self._minibatch: dict[str, float] = {}
        self._totals: dict[str, float] = {}

    def add(self, stats: dict[str, Any]) -> None:
        for key, value in stats.items():
            if key == "ratio_max":
                self.ratio_max = max(self.ratio_max, float(value))
            elif key in self.ADDITIVE:
                self._minibatch[key] = self._minibatch.get(key, 0.0) + float(value)
            else:
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def end_minibatch(self) -> None:
        for key, value in self._minibatch.items():
            self._totals[key] = self._totals.get(key, 0.0) + value
        self._minibatch = {}
        self.minibatches += 1

    def means(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        out.update({k: v / max(self.minibatches, 1) for k, v in self._totals.items()})
        out["ratio_max"] = self.ratio_max
        return out


class MetricsWriter:
    """Appends one JSON line per step to ``output_dir/metrics.jsonl``.

    On resume from step ``s`` the lines of steps after ``s`` (written by the run that
    was killed) are dropped first, so the file holds each step once.
    """

    def __init__(self, output_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed; metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(str(Path(output_dir) / "tb"))

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
