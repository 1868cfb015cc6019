"""Anchor, default-box and grid generators against values worked out by hand."""

import math

import pytest
import torch

from minidet.anchors import AnchorGenerator, DefaultBoxGenerator, GridCellGenerator


def test_retinanet_anchor_values_and_order():
    gen = AnchorGenerator(sizes=(32,), strides=(8,), ratios=(0.5, 1.0, 2.0), scales=(1.0, 2.0))
    anchors, per_level = gen([(2, 3)])
    assert per_level == [2 * 3 * 6] and anchors.shape == (36, 4)
    # location (y=0, x=0) is centred at (4, 4); ratio 0.5 (h/w), scale 1: w = 32/sqrt(.5)
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)
    expected = torch.tensor([4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2])
    torch.testing.assert_close(anchors[0], expected)
    # index 1: same ratio, scale 2
    torch.testing.assert_close(anchors[1], torch.tensor([4 - w, 4 - h, 4 + w, 4 + h]))
    # index 2: ratio 1, scale 1: a 32 x 32 square
    torch.testing.assert_close(anchors[2], torch.tensor([-12.0, -12.0, 20.0, 20.0]))
    # location 1 is (y=0, x=1): centre (12, 4); location 3 is (y=1, x=0): centre (4, 12)
    torch.testing.assert_close(anchors[6 + 2], torch.tensor([-4.0, -12.0, 28.0, 20.0]))
    torch.testing.assert_close(anchors[18 + 2], torch.tensor([-12.0, -4.0, 20.0, 28.0]))
    # every anchor of one (ratio, scale) has area (size * scale)^2
    area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    torch.testing.assert_close(area[1::2], torch.full((18,), 64.0**2))


def test_retinanet_default_counts_and_levels():
    gen = AnchorGenerator()
    sizes = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]  # a 512 x 512 input
    anchors, per_level = gen(sizes)
    assert per_level == [64 * 64 * 9, 32 * 32 * 9, 16 * 16 * 9, 8 * 8 * 9, 4 * 4 * 9]
    assert anchors.shape == (49104, 4)
    # first anchor of level 2 (stride 32, size 128): centre (16, 16), ratio 0.5, scale 1
    first = anchors[per_level[0] + per_level[1]]
    w, h = 128 / math.sqrt(0.5), 128 * math.sqrt(0.5)
    torch.testing.assert_close(first, torch.tensor([16 - w / 2, 16 - h / 2, 16 + w / 2, 16 + h / 2]))


def test_atss_style_single_anchor():
    gen = AnchorGenerator(sizes=(64, 128), strides=(8, 16), ratios=(1.0,), scales=(1.0,))
    anchors, per_level = gen([(1, 1), (1, 1)])
    assert per_level == [1, 1]
    assert anchors.tolist() == [[-28.0, -28.0, 36.0, 36.0], [-56.0, -56.0, 72.0, 72.0]]


def test_anchor_cache_returns_the_same_tensor():
    gen = AnchorGenerator()
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    a1, _ = gen(sizes)
    a2, _ = gen(sizes)
    assert a1 is a2
    a3, _ = gen(sizes, dtype=torch.float64)
    assert a3.dtype == torch.float64 and a3 is not a1
    with pytest.raises(ValueError, match="expected 5 feature maps"):
        gen([(8, 8)])


def test_ssd300_default_boxes():
    gen = DefaultBoxGenerator()  # SSD300 ratios, s_min 0.2, s_max 0.9
    sizes = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    boxes, per_level = gen(sizes, (300, 300))
    assert boxes.shape == (8732, 4)  # the paper's count
    assert per_level == [38 * 38 * 4, 19 * 19 * 6, 10 * 10 * 6, 5 * 5 * 6, 3 * 3 * 4, 1 * 1 * 4]
    assert gen.scales == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.0])
    # level 0, location (0, 0): centre 0.5/38 * 300; square of side 0.2 * 300 = 60, clipped
    c = 0.5 / 38 * 300
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, c + 30, c + 30]))
    # second box: side sqrt(0.2 * 0.34) * 300
    s2 = math.sqrt(0.2 * 0.34) * 300
    torch.testing.assert_close(boxes[1], torch.tensor([0.0, 0.0, c + s2 / 2, c + s2 / 2]))
    # third and fourth: ratio 2 -> w = 60 sqrt 2, h = 60 / sqrt 2, then transposed
    w, h = 60 * math.sqrt(2), 60 / math.sqrt(2)
    torch.testing.assert_close(boxes[2], torch.tensor([0.0, 0.0, c + w / 2, c + h / 2]))
    torch.testing.assert_close(boxes[3], torch.tensor([0.0, 0.0, c + h / 2, c + w / 2]))
    # last level: one location at the centre, the square of side 0.9 * 300 is inside the image
    last = boxes[-4]
    torch.testing.assert_close(last, torch.tensor([150 - 135.0, 150 - 135.0, 150 + 135.0, 150 + 135.0]))


def test_ssd_boxes_scale_with_non_square_images_and_unclipped():
    gen = DefaultBoxGenerator(aspect_ratios=[[2]], min_scale=0.5, clip=False)
    boxes, per_level = gen([(1, 2)], (100, 200))
    assert per_level == [8]
    # location x=0: centre (50, 50); square: w = 0.5 * 200, h = 0.5 * 100
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 25.0, 100.0, 75.0]))
    with pytest.raises(ValueError, match="scales"):
        DefaultBoxGenerator(aspect_ratios=[[2], [2]], scales=[0.1, 0.2])


def test_yolo_grid_cells():
    gen = GridCellGenerator(boxes_per_cell=2)
    cells, per_level = gen((7, 7), (448, 448))
    assert per_level == [98] and cells.shape == (98, 4)
    # cell (row 1, col 2) is the 10th cell; its two predictors are entries 18 and 19
    assert cells[18].tolist() == [128.0, 64.0, 192.0, 128.0] == cells[19].tolist()
    cells, _ = GridCellGenerator(1)((2, 3), (100, 150))
    assert cells[-1].tolist() == [100.0, 50.0, 150.0, 100.0]
