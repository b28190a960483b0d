"""Per-step metrics: ``metrics.jsonl`` (one JSON object per step, always), the logging
backends asked for in ``train.report_to`` (TensorBoard, Weights & Biases), and helpers
for memory and timing."""

from __future__ import annotations

import importlib.util
import json
import math
import resource
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from verirl.registry import lookup, registrar
from verirl.verifier import ConfigError


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
    other key the mean over micro-batches; for the keys ending in ``_max`` (``ratio_max``,
    ``rollout_is_logp_diff_max``) the max.
    """

    ADDITIVE = frozenset({"loss", "pg_loss", "value_loss", "entropy_bonus"})

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.maxima: dict[str, float] = {"ratio_max": 0.0}
        self.minibatches = 0
        self._minibatch: dict[str, float] = {}
        self._totals: dict[str, float] = {}

    def add(self, stats: dict[str, Any]) -> None:
        for key, value in stats.items():
            if key.endswith("_max"):
                self.maxima[key] = max(self.maxima.get(key, float(value)), float(value))
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
        out.update(self.maxima)
        return out


class Backend(Protocol):
    """A logging backend besides ``metrics.jsonl`` (``train.report_to``)."""

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Record the finite numeric metrics of one step."""
        ...

    def close(self) -> None: ...


@dataclass
class RunInfo:
    """What a backend is told about the run it logs."""

    output_dir: Path
    name: str  # the run's display name
    config: dict[str, Any]  # the resolved config, as plain data
    resume_step: int | None  # the checkpoint's step when resuming, else None
    wandb_project: str = "verirl"


BACKENDS: dict[str, Callable[[RunInfo], Backend]] = {}
register_backend = registrar(BACKENDS, "logging backend")
# the package each backend needs, and the extra that installs it
BACKEND_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_backends(names: Sequence[str]) -> None:
    """A ConfigError for a backend whose library is not installed (before any model loads)."""
    for name in names:
        package = BACKEND_PACKAGES.get(name, name)
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.report_to includes {name!r}, but the {package} package is not installed: "
                              f"pip install 'verirl[logging]' (or {package}), or take {name!r} out of train.report_to")


@register_backend("tensorboard")
class TensorBoardBackend:
    """TensorBoard event files in ``OUTPUT_DIR/tb`` (``torch.utils.tensorboard``, which
    writes through the tensorboard package). On resume from step ``s`` the events of
    steps after ``s`` are purged, as ``metrics.jsonl``'s lines are."""

    def __init__(self, run: RunInfo):
        from torch.utils.tensorboard import SummaryWriter

        purge = None if run.resume_step is None else run.resume_step + 1
        self.writer = SummaryWriter(str(run.output_dir / "tb"), purge_step=purge)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


@register_backend("wandb")
class WandbBackend:
    """A Weights & Biases run (``wandb.init`` in ``OUTPUT_DIR``, the resolved config
    attached). Its id is kept in ``OUTPUT_DIR/wandb-run-id`` so a resumed run continues
    the same W&B run; W&B keeps the first values it got for a step, so steps redone after
    a kill keep the killed run's values there (``metrics.jsonl`` holds the redone ones).
    ``WANDB_MODE=offline`` writes the run under ``OUTPUT_DIR/wandb`` only."""

    def __init__(self, run: RunInfo):
        import wandb

        id_file = run.output_dir / "wandb-run-id"
        if run.resume_step is not None and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]  # W&B run ids: letters and digits, unique in the project
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=run.wandb_project, name=run.name, id=run_id, resume="allow",
                              dir=str(run.output_dir), config=run.config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def make_backends(names: Sequence[str], run: RunInfo) -> list[Backend]:
    """The backends named in ``train.report_to``, in order."""
    check_backends(names)
    return [lookup(BACKENDS, "logging backend", name)(run) for name in names]


def truncate_jsonl_after(path: Path, step: int) -> None:
    """Drop the lines of ``path`` whose ``step`` is after ``step`` (written by a run that
    was killed after its last checkpoint), and any line cut short by the kill."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(line + "\n" for line in kept))


class MetricsWriter:
    """Appends one JSON line per step to ``output_dir/metrics.jsonl`` and hands the
    numeric values to the logging backends.

    On resume from step ``s`` the lines of steps after ``s`` (written by the run that
    was killed) are dropped first, so the file holds each step once.
    """

    def __init__(self, output_dir: str | Path, resume_step: int | None = None, backends: Sequence[Backend] = ()):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            truncate_jsonl_after(self.path, resume_step)
        self.backends = list(backends)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        scalars = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for backend in self.backends:
            backend.log(step, scalars)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
