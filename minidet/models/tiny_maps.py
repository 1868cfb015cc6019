"""Strided convolutions on tiny maps run in float32 under CPU autocast.

oneDNN's bfloat16 backward of a stride-2 3x3 convolution whose input is 1 x 1 returns NaN or
garbage weight gradients at random (torch 2.14 on an AVX512-BF16 CPU: about half of the steps
of a 64 px RetinaNet's P7 conv and SSD's last extra layers; tests/test_precision.py). Such maps
are a negligible part of the FLOPs, so the layers that can meet them (the FPN's P6 / P7, SSD's
extra layers) compute maps smaller than their 3 x 3 kernel in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["run_tiny_in_fp32"]


def run_tiny_in_fp32(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)``; in float32 when CPU autocast is on and ``x`` is smaller than 3 x 3."""
    if x.device.type == "cpu" and min(x.shape[-2:]) < 3 and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return layer(x.float())
    return layer(x)
