"""Regression losses: L1, L2 and Smooth L1 on encoded offsets; IoU, GIoU, DIoU and CIoU
losses (1 - the overlap measure) on decoded xyxy boxes.

Each takes predictions and targets of equal shape ([..., 4]), an optional per-element
``weight`` and ``reduction`` in {"none", "sum", "mean"}. Offset losses are element-wise
([..., 4] unreduced); box losses give one value per box ([...] unreduced). Half-precision
inputs are computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..boxes import (
    aligned_box_iou,
    aligned_complete_box_iou,
    aligned_distance_box_iou,
    aligned_generalized_box_iou,
)
from .reduction import as_float32, reduce_loss

__all__ = ["l1_loss", "l2_loss", "smooth_l1_loss", "iou_loss", "giou_loss", "diou_loss", "ciou_loss"]


def _diff(pred: Tensor, target: Tensor) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    p = as_float32(pred)
    return p - as_float32(target).to(p.dtype)


def l1_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """|pred - target| element-wise."""
    return reduce_loss(_diff(pred, target).abs(), weight, reduction)


def l2_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """(pred - target)^2 element-wise (the mean is torch's mse_loss)."""
    return reduce_loss(_diff(pred, target) ** 2, weight, reduction)


def smooth_l1_loss(
    pred: Tensor, target: Tensor, beta: float = 1.0, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Smooth L1: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (beta = 0: L1)."""
    d = _diff(pred, target).abs()
    if beta <= 0:
        return reduce_loss(d, weight, reduction)
    loss = torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    return reduce_loss(loss, weight, reduction)


def _box_loss(overlap, pred: Tensor, target: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    loss = 1 - overlap(as_float32(pred), as_float32(target))
    return reduce_loss(loss, weight, reduction)


def iou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """1 - IoU of aligned xyxy boxes [..., 4] (0 for perfect boxes, 1 without overlap)."""
    return _box_loss(aligned_box_iou, pred, target, weight, reduction)


def giou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """1 - GIoU of aligned xyxy boxes [..., 4], in [0, 2)."""
    return _box_loss(aligned_generalized_box_iou, pred, target, weight, reduction)


def diou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """1 - DIoU of aligned xyxy boxes [..., 4]."""
    return _box_loss(aligned_distance_box_iou, pred, target, weight, reduction)


def ciou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """1 - CIoU of aligned xyxy boxes [..., 4]; the trade-off alpha is a constant in backward."""
    return _box_loss(aligned_complete_box_iou, pred, target, weight, reduction)
