"""Shared helpers of the loss functions: float32 upcasting and weighted reduction."""

from __future__ import annotations

from torch import Tensor

REDUCTIONS = ("none", "sum", "mean")


def as_float32(t: Tensor) -> Tensor:
    """Half-precision tensors -> float32 (losses are computed in float32 even under autocast);
    float32/float64 pass through unchanged."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def reduce_loss(loss: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Multiply by an optional per-element ``weight`` (broadcastable) and reduce.

    "mean" averages over all elements; the mean of an empty tensor is 0 (kept in the graph),
    not NaN, so batches without positives are harmless.
    """
    if weight is not None:
        loss = loss * as_float32(weight)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() if loss.numel() == 0 else loss.mean()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
