"""Box coders: hand-computed values, torchvision's BoxCoder as a reference, round trips."""

import math

import pytest
import torch
from conftest import random_boxes
from torchvision.models.detection._utils import BoxCoder

from minidet.coders import DeltaXYWHCoder, SSDCoder, YOLOCellCoder


def test_delta_coder_hand_values():
    prior = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 25.0, 15.0]])  # centre (15, 10), size 20 x 10
    torch.testing.assert_close(DeltaXYWHCoder().encode(prior, gt), torch.tensor([[1.0, 0.5, math.log(2), 0.0]]))
    ssd = SSDCoder().encode(prior, gt)
    torch.testing.assert_close(ssd, torch.tensor([[10.0, 5.0, math.log(2) / 0.2, 0.0]]))
    means = DeltaXYWHCoder(means=(0.5, 0.5, 0.0, 0.0), stds=(0.5, 0.5, 1.0, 1.0)).encode(prior, gt)
    torch.testing.assert_close(means, torch.tensor([[1.0, 0.0, math.log(2), 0.0]]))


@pytest.mark.parametrize("coder, weights", [(DeltaXYWHCoder(), (1.0, 1.0, 1.0, 1.0)),
                                            (SSDCoder(), (10.0, 10.0, 5.0, 5.0))])
def test_matches_torchvision_box_coder(coder, weights, gen):
    priors = random_boxes(500, gen, 300, 80)
    gts = random_boxes(500, gen, 300, 80)
    ref = BoxCoder(weights)
    torch.testing.assert_close(coder.encode(priors, gts), ref.encode_single(gts, priors))
    # within the size clamp (torchvision clamps only large dw/dh, minidet clamps both sides)
    deltas = torch.randn(500, 4, generator=gen).clamp(-3, 3)
    torch.testing.assert_close(coder.decode(priors, deltas), ref.decode_single(deltas, priors))


@pytest.mark.parametrize("coder", [DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2)), SSDCoder()])
def test_round_trip(coder, gen):
    # size ratios up to 21, inside the decode clamp of 1000 / 16
    priors = random_boxes(2000, gen, 500, 200, torch.float64, min_size=10)
    gts = random_boxes(2000, gen, 500, 200, torch.float64, min_size=10)
    back = coder.decode(priors, coder.encode(priors, gts))
    assert (back - gts).abs().max().item() < 1e-5
    priors32, gts32 = priors.float(), gts.float()
    back32 = coder.decode(priors32, coder.encode(priors32, gts32))
    torch.testing.assert_close(back32, gts32, rtol=1e-5, atol=1e-3)


def test_decode_broadcasts_over_batch_and_clamps(gen):
    coder = DeltaXYWHCoder()
    priors = random_boxes(10, gen)
    deltas = torch.zeros(3, 10, 4)
    deltas[..., 2] = 100.0  # exp(100) would overflow; clamped to log(1000/16)
    out = coder.decode(priors, deltas)
    assert out.shape == (3, 10, 4) and torch.isfinite(out).all()
    pw = priors[:, 2] - priors[:, 0]
    torch.testing.assert_close(out[0, :, 2] - out[0, :, 0], pw * 1000 / 16)


def test_degenerate_gt_and_half_inputs_stay_finite():
    coder = DeltaXYWHCoder()
    prior = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    zero_w = torch.tensor([[5.0, 5.0, 5.0, 8.0]])
    assert torch.isfinite(coder.encode(prior, zero_w)).all()
    out = coder.decode(prior.half(), torch.tensor([[0.0, 0.0, 20.0, 0.0]]).half())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_yolo_cell_coder_hand_values():
    coder = YOLOCellCoder(sqrt_wh=True)
    cell = torch.tensor([[64.0, 64.0, 128.0, 128.0]])
    box = torch.tensor([[80.0, 64.0, 112.0, 96.0]])  # centre (96, 80), 32 x 32 on a 448 image
    t = coder.encode(cell, box, (448, 448))
    s = math.sqrt(32 / 448)
    torch.testing.assert_close(t, torch.tensor([[0.5, 0.25, s, s]]))
    torch.testing.assert_close(coder.decode(cell, t, (448, 448)), box)
    plain = YOLOCellCoder(sqrt_wh=False).encode(cell, box, (448, 224))
    torch.testing.assert_close(plain, torch.tensor([[0.5, 0.25, 32 / 224, 32 / 448]]))


def test_yolo_round_trip(gen):
    coder = YOLOCellCoder()
    cells = random_boxes(1000, gen, 400, 64, torch.float64)
    boxes = random_boxes(1000, gen, 400, 200, torch.float64)
    back = coder.decode(cells, coder.encode(cells, boxes, (480, 640)), (480, 640))
    assert (back - boxes).abs().max().item() < 1e-5
