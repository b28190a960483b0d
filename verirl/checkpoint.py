"""Checkpoints: written atomically, found again on resume.

Layout: ``OUTPUT_DIR/checkpoints/step_000010/`` holding the model and tokenizer
(``save_pretrained``), ``trainer_state.pt`` (optimizer, scheduler, RNG states, step,
data position, anything else the trainer adds) and ``extra models`` in subfolders
(the reference policy after an iterative reset, the critic). A checkpoint is first
written to a temporary folder beside it and then renamed, so a crash mid-write leaves
the previous checkpoint intact and no half-written one that resume would pick.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_DIR = re.compile(r"^step_(\d{6,})$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, step: int, models: dict[str, Any], tokenizer: Any,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically; ``models`` maps subfolder ('' = top) to a
    model with ``save_pretrained``. Keeps the newest ``keep`` checkpoints."""
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step_{step:06d}-", dir=root))
    try:
        for sub, model in models.items():
            model.save_pretrained(tmp / sub if sub else tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / "trainer_state.pt")
        _fsync_tree(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            old = root / f".old-{final.name}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        # renamed out of the listing first: a kill in the middle of the delete must not
        # leave a half-deleted folder that is still named like a complete checkpoint
        doomed = root / f".pruned-{old.name}"
        os.rename(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    root = Path(output_dir) / "checkpoints"
    if not root.exists():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / "trainer_state.pt", weights_only=False)


def clean_partial(output_dir: str | Path) -> int:
    """Remove temporary folders left by a write or a prune that was killed; returns how many."""
    root = Path(output_dir) / "checkpoints"
    removed = 0
    for p in root.glob(".tmp-step_*") if root.exists() else []:
        shutil.rmtree(p, ignore_errors=True)
        removed += 1
    for p in root.glob(".pruned-step_*") if root.exists() else []:
        shutil.rmtree(p, ignore_errors=True)  # a prune cut short: finish it
        removed += 1
    for p in root.glob(".old-step_*") if root.exists() else []:
        # a crash between the two renames of a re-save: put the old checkpoint back
        target = root / p.name[len(".old-"):]
        if not target.exists():
            os.rename(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)
        removed += 1
    return removed


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
