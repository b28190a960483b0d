"""The optimizer step, guarded against numerical faults.

A NaN or inf in a minibatch's loss or gradients must not reach the weights: AdamW would
write it into every parameter it touches and into its moment estimates, and the run
could not recover. :func:`guard_step` takes the step only when the loss and the total
gradient norm are finite; otherwise it drops the gradients and leaves the weights, the
optimizer state and the LR schedule exactly as they were. The caller counts the skipped
steps (``optim/skipped_updates``) and the trainer stops the run past
``train.max_bad_updates`` of them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

log = logging.getLogger("verirl.guard")


@dataclass
class GuardedStep:
    """What :func:`guard_step` did: ``taken`` is False when the step was skipped, with
    ``reason`` saying why; ``grad_norms`` are the total gradient norms before clipping,
    one per parameter group."""

    taken: bool
    grad_norms: list[float]
    reason: str = ""


def guard_step(param_groups: Sequence[Iterable[torch.Tensor]], max_grad_norm: float,
               steps: Sequence[Callable[[], object]], losses: Sequence[torch.Tensor | float] = ()) -> GuardedStep:
    """Clip each group of parameters' gradients to ``max_grad_norm`` (0: no clipping,
    the norm is still measured) and call ``steps`` in order (the optimizers' and the
    schedulers' ``step``), unless a loss in ``losses`` or a group's gradient norm is not
    finite: then every gradient of the groups is set to None and nothing is stepped."""
    groups = [[p for p in params] for params in param_groups]
    limit = max_grad_norm if max_grad_norm > 0 else math.inf
    # clip_grad_norm_ returns the norm before clipping; with an infinite limit it only measures
    norms = [_as_float(torch.nn.utils.clip_grad_norm_(params, limit)) for params in groups]
    bad_losses = [float(x) for x in losses if not math.isfinite(float(x))]
    if bad_losses or not all(math.isfinite(n) for n in norms):
        reason = (f"non-finite loss {bad_losses[0]}" if bad_losses
                  else f"non-finite gradient norm {[round(n, 4) for n in norms]}")
        for params in groups:
            for p in params:
                p.grad = None
        log.debug("optimizer step skipped: %s", reason)
        return GuardedStep(False, norms, reason)
    for step in steps:
        step()
    return GuardedStep(True, norms)


def _as_float(norm: torch.Tensor) -> float:
    """The norm as a float; sharded parameters (FSDP2) give a DTensor, made whole first."""
    full_tensor = getattr(norm, "full_tensor", None)
    return float(full_tensor() if full_tensor is not None else norm)
