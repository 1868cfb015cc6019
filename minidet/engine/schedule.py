"""Learning-rate schedule: linear warmup, then step decay or cosine annealing (per iteration)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def lr_factor(it: int, total: int, warmup: int, schedule: str = "cosine", steps: Sequence[float] = (8 / 12, 11 / 12),
              gamma: float = 0.1, warmup_ratio: float = 0.001, min_ratio: float = 0.01) -> float:
    """Multiplier of the base lr at iteration ``it`` of ``total``.

    Warmup rises linearly from ``warmup_ratio`` to 1 over ``warmup`` iterations; "step" then
    multiplies by ``gamma`` at each fraction in ``steps`` of the run; "cosine" decays to
    ``min_ratio``; "constant" stays at 1."""
    if schedule == "step":
        factor = gamma ** sum(it >= s * total for s in steps)
    elif schedule == "cosine":
        progress = min(1.0, it / max(1, total))
        factor = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose step, cosine or constant")
    if it < warmup:
        factor *= warmup_ratio + (1 - warmup_ratio) * it / warmup
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup: int, schedule: str,
                    steps: Sequence[float] = (8 / 12, 11 / 12)) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per iteration; ``steps``: fractions of the run where "step"
    multiplies the lr by 0.1 (default: the 1x schedule's epochs 8 and 11 of 12)."""
    steps = tuple(steps)
    lr_factor(0, total, warmup, schedule, steps)  # validates the name
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, warmup, schedule, steps))
