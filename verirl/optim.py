"""The optimizer and its learning-rate schedule (policy and critic alike).

:func:`lr_multiplier` is the schedule as a pure function of the optimizer step:
linear warm-up, then constant, linear decay or cosine decay down to
``min_lr_ratio · lr`` at the run's last optimizer step.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

SCHEDULES = ("constant", "linear", "cosine")


def lr_multiplier(step: int, warmup: int, total: int, schedule: str = "constant", min_ratio: float = 0.0) -> float:
    """The factor on the base learning rate before optimizer step ``step`` (0-based).

    - warm-up, ``step < warmup``: ``(step + 1) / warmup``;
    - then, with progress ``p = (step − warmup) / max(1, total − 1 − warmup)`` clamped to [0, 1]
      (``total`` steps in all, so the last one, ``total − 1``, has ``p = 1``):
      ``constant``: 1; ``linear``: ``1 − (1 − m) p``; ``cosine``: ``m + (1 − m) (1 + cos πp) / 2``,
      where ``m = min_ratio`` is the factor reached at the last step.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - 1 - warmup)))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_steps(config: Any) -> int:
    """How many optimizer steps the run takes: steps × epochs × minibatches per rollout."""
    n = config.rollout.prompts_per_step * config.rollout.group_size
    return config.train.steps * config.algo.ppo_epochs * (n // (config.algo.minibatch_size or n))


def adamw_kernel(params: list[torch.Tensor], fused: bool = True) -> dict[str, bool]:
    """AdamW's implementation: the fused kernel (one launch for every parameter) when
    ``fused`` and every parameter is a plain CUDA tensor; otherwise torch's default
    (``foreach`` on accelerators, the per-parameter loop on CPU)."""
    plain_cuda = bool(params) and all(p.is_cuda and type(p.data) is torch.Tensor for p in params)
    return {"fused": True} if fused and plain_cuda else {}


def build_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, config: Any
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` (those that require a gradient) and its schedule (``optim.*``)."""
    o = config.optim
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=o.betas, weight_decay=o.weight_decay,
                                  **adamw_kernel(params, o.fused))
    total = optimizer_steps(config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, o.warmup_steps, total, o.lr_schedule, o.min_lr_ratio)
    )
    return optimizer, scheduler
