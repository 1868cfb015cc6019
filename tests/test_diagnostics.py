"""Diagnostics against numpy-free hand values and torch's own statistics."""

import math

import pytest
import torch

from minidet.diagnostics import WindowStats, grad_ratio_hook, pearson, spearman


def test_pearson_and_spearman():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    y = torch.tensor([2.0, 1.0, 4.0, 3.0, 10.0])
    ref = torch.corrcoef(torch.stack([x, y]))[0, 1].item()
    assert pearson(x, y) == pytest.approx(ref)
    # ranks of y: 2, 1, 4, 3, 5 -> Pearson of ranks = 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman(x, y) == pytest.approx(0.8)
    # ties get average ranks: y = (1, 1, 2) -> ranks (1.5, 1.5, 3)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 2.0])) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(pearson(torch.tensor([1.0]), torch.tensor([2.0])))


def test_grad_ratio_hook():
    logits = torch.zeros(4, requires_grad=True)
    store = {}
    grad_ratio_hook(logits, torch.tensor([True, False, False, False]), torch.tensor([False, True, True, False]), store)
    (logits * torch.tensor([-2.0, 1.0, 3.0, 100.0])).sum().backward()
    assert store["grad_ratio"] == pytest.approx(2.0)


def test_window_stats():
    ws = WindowStats(window=3)
    assert ws.update({"cls": 1.0, "reg": 2.0}) is None
    assert ws.update({"cls": 2.0, "reg": 2.0}) is None
    out = ws.update({"cls": 3.0, "reg": 2.0})
    assert out["cls"] == pytest.approx((2.0, 1.0)) and out["reg"] == pytest.approx((2.0, 0.0))
