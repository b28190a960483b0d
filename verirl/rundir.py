"""The run directory's rules (``train.output_dir``), checked before any model loads.

- A run never mixes with an earlier one: a directory that holds an earlier run's files
  is refused unless the new run continues it (``train.resume=true``) or replaces it
  (``train.overwrite=true``, which deletes those files once the new run has loaded).
- ``train.resume=true`` needs a complete checkpoint there; without one it is an error,
  not a silent fresh start.
- The directory must be creatable and writable; it is created only when the run starts,
  so a start that fails leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from verirl.checkpoint import clean_partial, latest_checkpoint
from verirl.verifier import ConfigError

# What a run writes in its directory; any of them marks the directory as holding a run.
RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl", "checkpoints", "tb", "wandb", "wandb-run-id")


def run_files(out: Path) -> list[str]:
    """The run files present in ``out``, in :data:`RUN_FILES` order."""
    return [name for name in RUN_FILES if (out / name).exists()]


def check_writable(out: Path) -> None:
    """A ConfigError unless ``out`` is a directory, or can be created as one, that this
    process can write to."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"train.output_dir {str(out)!r} is a file, not a directory: choose another path")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"train.output_dir {str(out)!r} is not writable: fix its permissions or choose another path")
        return
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"train.output_dir {str(out)!r} cannot be created: {str(parent)!r} is a file, not a "
                          "directory; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"train.output_dir {str(out)!r} cannot be created: {str(parent)!r} is not writable; "
                          "fix its permissions or choose another path")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> Path | None:
    """Check ``out`` against the rules above; return the checkpoint to resume from
    (``None`` for a fresh run). On resume, a checkpoint write cut short by a kill is
    cleaned up first."""
    check_writable(out)
    if resume:
        if out.is_dir():
            clean_partial(out)
        checkpoint = latest_checkpoint(out) if out.is_dir() else None
        if checkpoint is None:
            where = "does not exist" if not out.exists() else "holds no checkpoint (checkpoints/step_NNNNNN)"
            raise ConfigError(
                f"train.resume=true, but train.output_dir {str(out)!r} {where}: there is nothing to resume; "
                "leave train.resume out to start a fresh run (with train.overwrite=true if the directory holds "
                "an earlier run), or point train.output_dir at the run to continue"
            )
        return checkpoint
    found = run_files(out) if out.is_dir() else []
    if found and not overwrite:
        raise ConfigError(
            f"train.output_dir {str(out)!r} holds an earlier run ({', '.join(found)}); continue it with "
            "train.resume=true, replace it with train.overwrite=true (deletes its checkpoints, metrics and "
            "samples), or choose another train.output_dir"
        )
    return None


def clear_run(out: Path) -> None:
    """Delete an earlier run's files from ``out`` (``train.overwrite=true``); other files stay."""
    for name in run_files(out):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
