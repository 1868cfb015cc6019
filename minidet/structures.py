"""Data containers shared by heads, criteria and post-processing."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class HeadOutput:
    """What every detection head returns, flattened over levels (level -> location -> prior).

    cls_logits:     [B, A, C] for sigmoid heads, [B, A, C + 1] for softmax heads (background
                    last); YOLO's: one set per grid cell, repeated for the cell's predictors
    box_regression: [B, A, 4] in the coder's space of the head (deltas, or YOLO cell offsets)
    priors:         [A, 4] xyxy pixels (anchors, default boxes or grid cells)
    num_per_level:  priors per pyramid level
    image_size:     (height, width) of the (padded) input batch
    objectness:     [B, A] confidence logits (YOLO), else None
    """

    cls_logits: Tensor
    box_regression: Tensor
    priors: Tensor
    num_per_level: list[int]
    image_size: tuple[int, int]
    objectness: Tensor | None = None
