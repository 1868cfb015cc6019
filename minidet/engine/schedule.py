"""Learning-rate schedule: linear warmup, then step decay or cosine annealing (per iteration).

The warmup is at most ``WARMUP_MAX_FRACTION`` (10%) of the run's iterations
(``capped_warmup``). Published warmups are fixed iteration counts tuned for long runs:
detectron2 1000 and mmdetection 500 of 90k iterations (about 1%), Goyal et al. 2017 (the linear
scaling rule) 5 of 90 epochs (5.6%), minidet's no-flag run 100 of 1500 (6.7%); a 10% cap leaves
all of those as they are and keeps a short run (e.g. 240 iterations) from spending most of
itself below the base learning rate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..configuration import MIN_STEPS_FROM_SCRATCH

WARMUP_MAX_FRACTION = 0.1


def capped_warmup(warmup: int, total: int) -> int:
    """The warmup iterations a run of ``total`` iterations uses: min(warmup, floor(total x
    WARMUP_MAX_FRACTION))."""
    return min(int(warmup), math.floor(total * WARMUP_MAX_FRACTION))


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


def short_run_warning(total: int, batches_per_epoch: int, epochs: int, given_iters: bool,
                      from_scratch: bool) -> str | None:
    """A one-line warning when a run from scratch takes fewer than MIN_STEPS_FROM_SCRATCH
    optimizer steps (None otherwise, also for fine-tuning / a pretrained backbone and for a run
    of 0 steps), with the --iters / --epochs that would reach it."""
    if not from_scratch or total <= 0 or total >= MIN_STEPS_FROM_SCRATCH:
        return None
    how = f"--iters {total}" if given_iters else f"{epochs} epochs x {batches_per_epoch} batches"
    return (f"warning: {total} optimizer steps ({how}) is short for a detector trained from scratch; use --iters "
            f"{MIN_STEPS_FROM_SCRATCH} or more (or --epochs {math.ceil(MIN_STEPS_FROM_SCRATCH / batches_per_epoch)})")
