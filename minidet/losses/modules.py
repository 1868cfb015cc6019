"""Losses as modules, and the name -> function tables the command line chooses from."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .classification import (
    binary_cross_entropy,
    multiclass_hinge_loss,
    sigmoid_focal_loss,
    softmax_cross_entropy,
    softmax_focal_loss,
    yolo_sse,
)
from .ranking import alrp_loss, ap_loss
from .regression import ciou_loss, diou_loss, giou_loss, iou_loss, l1_loss, l2_loss, smooth_l1_loss

CLASSIFICATION_LOSSES: dict[str, Callable] = {
    "ce": softmax_cross_entropy,
    "bce": binary_cross_entropy,
    "focal": sigmoid_focal_loss,
    "softmax_focal": softmax_focal_loss,
    "yolo_sse": yolo_sse,
    "hinge": multiclass_hinge_loss,
    "ap": ap_loss,
}
REGRESSION_LOSSES: dict[str, Callable] = {
    "l1": l1_loss,
    "l2": l2_loss,
    "smooth_l1": smooth_l1_loss,
    "iou": iou_loss,
    "giou": giou_loss,
    "diou": diou_loss,
    "ciou": ciou_loss,
}
JOINT_LOSSES: dict[str, Callable] = {"alrp": alrp_loss}
ALL_LOSSES: dict[str, Callable] = {**CLASSIFICATION_LOSSES, **REGRESSION_LOSSES, **JOINT_LOSSES}


class Loss(nn.Module):
    """A loss function with some keyword arguments fixed, as an ``nn.Module``.

    ``Loss(sigmoid_focal_loss, alpha=0.25, gamma=2.0)(logits, targets)``; keyword arguments
    given at call time override the fixed ones.
    """

    def __init__(self, fn: Callable, **kwargs) -> None:
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, *args, **kwargs):
        return self.fn(*args, **{**self.kwargs, **kwargs})

    def extra_repr(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.fn.__name__}({args})"


def build_loss(name: str, **kwargs) -> Loss:
    """The loss called ``name`` (a key of ALL_LOSSES) as a module with ``kwargs`` fixed."""
    if name not in ALL_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(sorted(ALL_LOSSES))}")
    return Loss(ALL_LOSSES[name], **kwargs)
