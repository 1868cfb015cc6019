"""Validation during training: the (EMA) model scored on the validation split, the function
``python -m minidet.eval --weights`` uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import torch

from ..distributed import is_main
from ..evaluation.detector_eval import DetectorEvaluation, evaluate_detector
from .interrupts import InterruptFlag

__all__ = ["Validation"]


def _stop_now() -> NoReturn:
    print("\ninterrupted during the evaluation")
    raise SystemExit(130)


class Validation:
    """``evaluate()`` -> the 12 COCO stats of ``ema.module`` (or ``model``) on ``val_set``: every
    process predicts its shard, the detections are gathered to rank 0, which alone scores them
    against the dataset's own ground truth, and its stats are broadcast to the others
    (``evaluate_detector``): every process returns the same stats. ``last_evaluation`` keeps the
    full result on rank 0 (including the COCO results list that was scored), the stats only on
    the others.

    A Ctrl-C during it (``interrupt``) lets it finish; an evaluation that fails because the
    Ctrl-C also stopped its DataLoader workers calls ``on_interrupt`` (default: exit with 130)."""

    def __init__(self, *, model: torch.nn.Module, ema, val_set, val_loader, device: torch.device,
                 amp_dtype: torch.dtype | None = None, quiet: bool = True, interrupt: InterruptFlag | None = None,
                 on_interrupt: Callable[[], NoReturn] = _stop_now) -> None:
        self.model, self.ema, self.val_set, self.val_loader = model, ema, val_set, val_loader
        self.device, self.amp_dtype, self.quiet = device, amp_dtype, quiet
        self.interrupt = interrupt if interrupt is not None else InterruptFlag()
        self.on_interrupt = on_interrupt
        self.last_evaluation: DetectorEvaluation | None = None

    @torch.no_grad()
    def evaluate(self, stop_if_interrupted: bool = True) -> dict:
        """The stats; ``stop_if_interrupted``: a Ctrl-C seen during a complete evaluation calls
        ``on_interrupt`` as well (a training loop checks the flag itself)."""
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        with self.interrupt.installed():
            try:
                self.last_evaluation = evaluate_detector(model, self.val_set, self.val_loader, self.device,
                                                         progress=is_main() and not self.quiet, desc="val",
                                                         amp_dtype=self.amp_dtype)
            except Exception:
                if not self.interrupt.requested:
                    raise
                self.on_interrupt()
            finally:
                model.train()
            if self.interrupt.requested and stop_if_interrupted:
                self.on_interrupt()
        return self.last_evaluation.stats
