"""minidet.boxes against torchvision.ops and hand-computed values."""

import math

import pytest
import torch
import torchvision.ops as tvo
from conftest import random_boxes

from minidet import boxes as B

PAIRWISE = [
    (B.box_iou, tvo.box_iou),
    (B.generalized_box_iou, tvo.generalized_box_iou),
    (B.distance_box_iou, tvo.distance_box_iou),
    (B.complete_box_iou, tvo.complete_box_iou),
]
ALIGNED = [
    (B.aligned_box_iou, tvo.box_iou),
    (B.aligned_generalized_box_iou, tvo.generalized_box_iou),
    (B.aligned_distance_box_iou, tvo.distance_box_iou),
    (B.aligned_complete_box_iou, tvo.complete_box_iou),
]


def test_box_area(gen):
    b = random_boxes(500, gen)
    torch.testing.assert_close(B.box_area(b), tvo.box_area(b))
    assert B.box_area(torch.tensor([[1.0, 1.0, 1.0, 5.0]])).item() == 0.0
    assert B.box_area(b.half()).dtype == torch.float32


@pytest.mark.parametrize("ours, ref", PAIRWISE, ids=lambda f: getattr(f, "__name__", ""))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_matches_torchvision(ours, ref, dtype, gen):
    for scale, size in [(100, 50), (10, 30), (1000, 20)]:  # heavy, moderate and little overlap
        a = random_boxes(300, gen, scale, size, dtype)
        b = random_boxes(250, gen, scale, size, dtype)
        out = ours(a, b)
        assert out.shape == (300, 250) and out.dtype == dtype
        torch.testing.assert_close(out, ref(a, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ours, ref", PAIRWISE, ids=lambda f: getattr(f, "__name__", ""))
def test_pairwise_gradients_match_torchvision(ours, ref, gen):
    a = random_boxes(40, gen, 50, 40, torch.float64)
    b = random_boxes(30, gen, 50, 40, torch.float64)
    w = torch.randn(40, 30, generator=gen, dtype=torch.float64)
    grads = []
    for f in (ours, ref):
        a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
        (f(a_, b_) * w).sum().backward()
        grads.append((a_.grad, b_.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


@pytest.mark.parametrize("ours, ref", ALIGNED, ids=lambda f: getattr(f, "__name__", ""))
def test_aligned_is_the_diagonal_of_torchvision_pairwise(ours, ref, gen):
    a = random_boxes(400, gen, 60, 40)
    b = random_boxes(400, gen, 60, 40)
    torch.testing.assert_close(ours(a, b), torch.diagonal(ref(a, b)), rtol=1e-5, atol=1e-6)
    # leading batch dimensions are fine for aligned inputs
    assert ours(a.view(20, 20, 4), b.view(20, 20, 4)).shape == (20, 20)


def test_hand_computed_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # inter 1, union 7; enclosing box 3x3 = 9 -> GIoU = 1/7 - 2/9
    assert B.box_iou(a, b).item() == pytest.approx(1 / 7)
    assert B.generalized_box_iou(a, b).item() == pytest.approx(1 / 7 - 2 / 9)
    # centres (1,1), (2,2): rho^2 = 2; enclosing diagonal^2 = 18
    assert B.distance_box_iou(a, b).item() == pytest.approx(1 / 7 - 2 / 18, abs=1e-6)
    # same aspect ratio: v = 0, CIoU = DIoU
    assert B.complete_box_iou(a, b).item() == pytest.approx(1 / 7 - 2 / 18, abs=1e-6)
    # different aspect ratios: v = 4/pi^2 (atan(2) - atan(1))^2
    c = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    v = 4 / math.pi**2 * (math.atan(2) - math.atan(1)) ** 2
    iou = 4 / 8
    alpha = v / (1 - iou + v)
    diou = iou - (1.0**2) / (4**2 + 2**2)
    assert B.complete_box_iou(c, a).item() == pytest.approx(diou - alpha * v, abs=1e-6)


def test_identical_disjoint_and_touching_boxes():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    iou = B.box_iou(a, a)
    assert torch.equal(torch.diagonal(iou), torch.ones(3))
    assert iou[0, 1].item() == 0.0 and iou[0, 2].item() == 0.0  # disjoint, touching
    # disjoint boxes: GIoU = 0 - (300 - 200) / 300
    assert B.generalized_box_iou(a, a)[0, 1].item() == pytest.approx(-1 / 3)


@pytest.mark.parametrize("fn", [f for f, _ in PAIRWISE])
def test_degenerate_boxes_are_finite_with_finite_gradients(fn):
    boxes = torch.tensor(
        [
            [1.0, 1.0, 1.0, 1.0],  # a point
            [1.0, 1.0, 1.0, 1.0],  # the same point
            [2.0, 2.0, 2.0, 5.0],  # a vertical segment
            [0.0, 0.0, 4.0, 0.0],  # a horizontal segment
            [0.0, 0.0, 4.0, 4.0],  # a normal box
        ],
        requires_grad=True,
    )
    out = fn(boxes, boxes)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(boxes.grad).all()
    assert B.box_iou(boxes, boxes)[0, 1].item() == 0.0  # torchvision gives NaN here


# CIoU is left out: its alpha is a constant in backward by definition, so finite differences
# disagree on purpose; its gradient is checked against torchvision's above.
@pytest.mark.parametrize("fn", [B.aligned_box_iou, B.aligned_generalized_box_iou, B.aligned_distance_box_iou])
def test_aligned_gradcheck_float64(fn, gen):
    a = random_boxes(6, gen, 10, 10, torch.float64).requires_grad_()
    b = random_boxes(6, gen, 10, 10, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(fn, (a, b))


def test_empty_inputs():
    e = torch.zeros(0, 4)
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    for fn, _ in PAIRWISE:
        assert fn(e, b).shape == (0, 1)
        assert fn(b, e).shape == (1, 0)
    for fn, _ in ALIGNED:
        assert fn(e, e).shape == (0,)


def test_dtype_preserved_and_half_precision_is_safe(gen):
    a = random_boxes(50, gen, 800, 400)  # large pixel areas overflow float16 if computed there
    b = random_boxes(50, gen, 800, 400)
    ref = tvo.generalized_box_iou(a, b)
    out = B.generalized_box_iou(a.half(), b.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=1e-2)
    assert B.box_iou(a.double(), b.double()).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = B.aligned_complete_box_iou(a, b)
    torch.testing.assert_close(out, torch.diagonal(tvo.complete_box_iou(a, b)), rtol=1e-5, atol=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="last dimension of 4"):
        B.box_iou(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="equal shapes"):
        B.aligned_box_iou(torch.zeros(3, 4), torch.zeros(2, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(gen):
    a, b = random_boxes(200, gen), random_boxes(100, gen)
    for fn, _ in PAIRWISE:
        out = fn(a.cuda(), b.cuda())
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), fn(a, b), rtol=1e-5, atol=1e-6)


def test_clip_and_centres():
    b = torch.tensor([[-5.0, 10.0, 120.0, 90.0]])
    assert torch.equal(B.clip_boxes_to_image(b, (80, 100)), torch.tensor([[0.0, 10.0, 100.0, 80.0]]))
    assert torch.equal(B.box_centers(b), torch.tensor([[57.5, 50.0]]))


def test_large_pairwise_iou_in_blocks_matches_torchvision(gen):
    a = random_boxes(700, gen, 300, 80)
    b = random_boxes(900, gen, 300, 80)  # 630k pairs: the blocked no-grad path
    torch.testing.assert_close(B.box_iou(a, b), tvo.box_iou(a, b), rtol=0, atol=0)
    torch.testing.assert_close(B.box_iou(b, a), tvo.box_iou(b, a), rtol=0, atol=0)
