"""Cheap training diagnostics the loss papers plot.

- ``grad_ratio_hook``: summed |gradient| on negative over positive classification entries
  (aLRP paper, Fig. 4), measured during backward.
- ``pearson`` / ``spearman``: correlation of positives' classification scores with the IoU of
  their boxes (aLRP's ranking correlation rho).
- ``WindowStats``: mean and sample std of each loss component per window of steps (ALWA,
  Fig. 3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["grad_ratio_hook", "pearson", "spearman", "WindowStats"]


def grad_ratio_hook(logits: Tensor, positive: Tensor, negative: Tensor, store: dict, key: str = "grad_ratio"):
    """Register a hook on ``logits`` that writes sum|g| over negatives / sum|g| over positives
    into ``store[key]`` when the gradient arrives. positive, negative: bool masks like logits."""

    def hook(grad: Tensor) -> None:
        g = grad.detach().abs().float()
        pos = float(g[positive].sum())
        neg = float(g[negative].sum())
        store[key] = neg / pos if pos > 0 else math.nan

    return logits.register_hook(hook)


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of two 1-D tensors (nan for fewer than 2 values or no spread)."""
    x, y = x.detach().double().flatten(), y.detach().double().flatten()
    if x.numel() < 2:
        return math.nan
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    return float((xc * yc).sum()) / den if den > 0 else math.nan


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..n with ties given their average rank."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x, dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    return ranks


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    x, y = x.detach().double().flatten(), y.detach().double().flatten()
    if x.numel() < 2:
        return math.nan
    return pearson(_average_ranks(x), _average_ranks(y))


class WindowStats:
    """Collects per-step float values of named components; every ``window`` steps ``update``
    returns {name: (mean, sample std)} for the window just closed, else None."""

    def __init__(self, window: int = 100) -> None:
        self.window = window
        self.values: dict[str, list[float]] = {}

    def update(self, components: dict[str, float]) -> dict[str, tuple[float, float]] | None:
        for k, v in components.items():
            self.values.setdefault(k, []).append(float(v))
        n = max((len(v) for v in self.values.values()), default=0)
        if n < self.window:
            return None
        out = {}
        for k, vals in self.values.items():
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            out[k] = (mean, std)
        self.values = {}
        return out
