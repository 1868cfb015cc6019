"""The forward of a training step as one module."""

from __future__ import annotations

from torch import nn

__all__ = ["_LossStep"]


class _LossStep(nn.Module):
    """model.loss as a module, so that DDP wraps the whole forward including the criterion."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.criterion = model.criterion  # registered here so that DDP also averages the loss's gradients

    def forward(self, images, targets):
        return self.model.loss(images, targets)
