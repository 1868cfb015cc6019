"""The forward of a training step as one module."""

from __future__ import annotations

from torch import nn

__all__ = ["_LossStep"]


class _LossStep(nn.Module):
    """model.loss as a module, so that DDP wraps the whole forward including the criterion."""

    def __init__(self, model: nn.Module, *, sync_normalizer: bool = False) -> None:
        super().__init__()
        self.model = model
        self.criterion = model.criterion  # registered here so that DDP also averages the loss's gradients
        self.sync_normalizer = sync_normalizer  # under DDP: #positives averaged over processes

    def forward(self, images, targets):
        with self.criterion.normalizer_synced(self.sync_normalizer):
            return self.model.loss(images, targets)
