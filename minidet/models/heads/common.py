"""Helpers shared by the heads."""

from torch import Tensor


def flatten_level(x: Tensor, per_location: int) -> Tensor:
    """[B, K * D, H, W] -> [B, H * W * K, D]: location-major (row-major), then prior k."""
    b, kd, h, w = x.shape
    d = kd // per_location
    return x.view(b, per_location, d, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * per_location, d)
