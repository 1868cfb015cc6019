"""The run's length, worked out once from the resolved configuration and the batches per epoch:
a value the trainer reads, saved beside the configuration (``RunPlan.saved_values``), never
written into it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..configuration import ConfigError
from .schedule import WARMUP_MAX_FRACTION, capped_warmup, short_run_warning

__all__ = ["RunPlan", "plan_run"]


@dataclass(frozen=True)
class RunPlan:
    """``total_iters`` optimizer steps in ``epochs`` epochs of ``batches_per_epoch`` batches; with
    ``iters`` set the run's length is that many applied steps (the last epoch ends early);
    ``warmup_iters`` (capped) and the evaluation every ``eval_interval`` epochs."""

    batches_per_epoch: int
    total_iters: int
    epochs: int
    iters: int | None
    warmup_iters: int
    eval_interval: int

    def saved_values(self) -> dict:
        """What the saved configuration holds for the run's length (resume repeats the plan)."""
        return {"epochs": self.epochs, "iters": self.iters, "eval_interval": self.eval_interval}

    def done(self, epoch: int, iteration: int) -> bool:
        """Whether the run has its length: ``total_iters`` applied steps with ``iters`` (an epoch
        more when skipped steps left it short), else ``epochs`` epochs."""
        return iteration >= self.total_iters if self.iters else epoch >= self.epochs


def plan_run(cfg, batches_per_epoch: int) -> tuple[RunPlan, list[str]]:
    """The plan of a resolved configuration ``cfg`` (namespace) for ``batches_per_epoch``
    (``data.loader.train_batches``, >= 1) and the lines the main process prints about it: the
    derived epochs of ``--iters`` (ceil(iters / batches per epoch)), custom data raised to
    ``min_iters`` steps, the warmup cap and a run too short to learn (``short_run_warning``)."""
    lines, iters, epochs = [], cfg.iters, cfg.epochs
    if not iters and cfg.min_iters and epochs * batches_per_epoch < cfg.min_iters:
        lines.append(f"run length: {epochs} epochs of {batches_per_epoch} batches are {epochs * batches_per_epoch} "
                     f"optimizer steps; training {cfg.min_iters} (custom data from scratch: 12 epochs or "
                     f"{cfg.min_iters} steps, whichever is longer; --epochs / --iters to choose)")
        iters = cfg.min_iters
    if iters:
        total, epochs = iters, math.ceil(iters / batches_per_epoch)
        if cfg.lr_steps and not all(0 < s * batches_per_epoch <= iters for s in cfg.lr_steps):
            raise ConfigError(f"--lr-steps must lie in (0, {iters / batches_per_epoch:g}] epochs of {batches_per_epoch} "
                              f"batches with --iters {iters}, got {cfg.lr_steps}")
        rest = iters - (epochs - 1) * batches_per_epoch
        end = "" if rest == batches_per_epoch else f", the last one ending after {rest} of them"
        lines.append(f"--iters {iters}: {epochs} epoch(s) of {batches_per_epoch} batches{end}")
    else:
        total = epochs * batches_per_epoch
    warmup = capped_warmup(cfg.warmup_iters, total)
    interval = max(1, math.ceil(epochs / 10)) if cfg.eval_interval == "auto" else cfg.eval_interval  # ~10 per run
    if warmup < cfg.warmup_iters and total > 0:
        lines.append(f"warmup: {cfg.warmup_iters} -> {warmup} iterations (at most {WARMUP_MAX_FRACTION:.0%} of the "
                     f"{total}-iteration run)")
    warning = short_run_warning(total, batches_per_epoch, epochs, bool(iters),
                                from_scratch=not cfg.pretrained and not cfg.weights)
    if warning:
        lines.append(warning)
    return RunPlan(batches_per_epoch, total, epochs, iters, warmup, interval), lines
