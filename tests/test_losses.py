"""Classification and regression losses against torch.nn.functional / torchvision.ops
(values AND gradients), hand-computed cases, gradcheck, and robustness."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvo
from conftest import random_boxes

from minidet import losses as L


def _grads(fn, *inputs):
    """Value and gradients of fn(*inputs).sum() w.r.t. every floating input."""
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*leaves)
    out.sum().backward()
    return out.detach(), [x.grad for x in leaves if x.requires_grad]


def _assert_same(ours, ref, *inputs, rtol=1e-5, atol=1e-6):
    v1, g1 = _grads(ours, *inputs)
    v2, g2 = _grads(ref, *inputs)
    torch.testing.assert_close(v1, v2, rtol=rtol, atol=atol)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.fixture
def cls_case(gen):
    logits = torch.randn(64, 7, generator=gen) * 3
    targets = torch.randint(0, 7, (64,), generator=gen)
    return logits, targets


# ------------------------------------------------------------------------- classification


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_softmax_cross_entropy_matches_torch(cls_case, reduction):
    logits, targets = cls_case
    _assert_same(lambda x: L.softmax_cross_entropy(x, targets, reduction=reduction),
                 lambda x: F.cross_entropy(x, targets, reduction=reduction), logits)


def test_softmax_cross_entropy_ignore_and_weight(cls_case):
    logits, targets = cls_case
    t = targets.clone()
    t[::3] = -1
    _assert_same(lambda x: L.softmax_cross_entropy(x, t), lambda x: F.cross_entropy(x, t, ignore_index=-1), logits)
    w = torch.rand(64)
    _assert_same(lambda x: L.softmax_cross_entropy(x, targets, weight=w, reduction="sum"),
                 lambda x: (F.cross_entropy(x, targets, reduction="none") * w).sum(), logits)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_binary_cross_entropy_matches_torch(gen, reduction):
    x = torch.randn(32, 5, generator=gen) * 4
    t = (torch.rand(32, 5, generator=gen) > 0.7).float()
    _assert_same(lambda a: L.binary_cross_entropy(a, t, reduction=reduction),
                 lambda a: F.binary_cross_entropy_with_logits(a, t, reduction=reduction), x)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 1.5), (-1, 2.0), (0.25, 0.0)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_sigmoid_focal_matches_torchvision(gen, alpha, gamma, reduction):
    x = torch.randn(40, 9, generator=gen) * 4
    t = (torch.rand(40, 9, generator=gen) > 0.8).float()
    _assert_same(lambda a: L.sigmoid_focal_loss(a, t, alpha, gamma, reduction=reduction),
                 lambda a: tvo.sigmoid_focal_loss(a, t, alpha, gamma, reduction=reduction), x)


def test_sigmoid_focal_hand_value():
    # p = sigmoid(0) = 0.5, target 1: 0.25 * 0.5^2 * log 2
    v = L.sigmoid_focal_loss(torch.zeros(1), torch.ones(1))
    assert v.item() == pytest.approx(0.25 * 0.25 * math.log(2))


def test_softmax_focal_loss(cls_case):
    logits, targets = cls_case
    # gamma = 0 is cross-entropy
    _assert_same(lambda x: L.softmax_focal_loss(x, targets, gamma=0.0, reduction="mean"),
                 lambda x: F.cross_entropy(x, targets), logits)

    # gamma = 2 against the formula written with torch.nn.functional
    def ref(x):
        logp = F.log_softmax(x, 1).gather(1, targets[:, None]).squeeze(1)
        return -(1 - logp.exp()) ** 2 * logp

    _assert_same(lambda x: L.softmax_focal_loss(x, targets, reduction="none"), ref, logits)
    alpha = torch.rand(7)
    _assert_same(lambda x: L.softmax_focal_loss(x, targets, alpha=alpha, reduction="none"),
                 lambda x: ref(x) * alpha[targets], logits)


def test_yolo_sse_hand_values():
    probs = torch.tensor([0.9, 0.2, 0.6])
    target = torch.tensor([0.75, 0.0, 0.0])
    obj = torch.tensor([True, False, False])
    # (0.15)^2 + 0.5 * (0.2^2 + 0.6^2)
    assert L.yolo_sse(probs, target, obj).item() == pytest.approx(0.0225 + 0.5 * 0.4)
    cls = torch.tensor([[0.7, 0.2, 0.1]])
    onehot = torch.tensor([[1.0, 0.0, 0.0]])
    assert L.yolo_sse(cls, onehot).item() == pytest.approx(0.09 + 0.04 + 0.01)
    _assert_same(lambda p: L.yolo_sse(p, target, obj, lambda_noobj=1.0),
                 lambda p: F.mse_loss(p, target, reduction="sum"), probs)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_multiclass_hinge_matches_torch(cls_case, reduction):
    logits, targets = cls_case
    _assert_same(lambda x: L.multiclass_hinge_loss(x, targets, reduction=reduction),
                 lambda x: F.multi_margin_loss(x, targets, reduction=reduction), logits)


def test_multiclass_hinge_hand_value():
    # target 0 with score 2; others 1.5 and -1: max(0, 1 - 2 + 1.5) + max(0, 1 - 2 - 1) = 0.5
    v = L.multiclass_hinge_loss(torch.tensor([[2.0, 1.5, -1.0]]), torch.tensor([0]))
    assert v.item() == pytest.approx(0.5 / 3)


# ------------------------------------------------------------------------------ regression


@pytest.mark.parametrize("ours, ref", [
    (L.l1_loss, F.l1_loss),
    (L.l2_loss, F.mse_loss),
    (L.smooth_l1_loss, F.smooth_l1_loss),
])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_offset_losses_match_torch(gen, ours, ref, reduction):
    p, t = torch.randn(50, 4, generator=gen) * 2, torch.randn(50, 4, generator=gen)
    _assert_same(lambda a: ours(a, t, reduction=reduction), lambda a: ref(a, t, reduction=reduction), p)


@pytest.mark.parametrize("beta", [0.0, 1 / 9, 1.0, 3.0])
def test_smooth_l1_beta(gen, beta):
    p, t = torch.randn(50, 4, generator=gen) * 2, torch.randn(50, 4, generator=gen)
    _assert_same(lambda a: L.smooth_l1_loss(a, t, beta=beta, reduction="sum"),
                 lambda a: F.smooth_l1_loss(a, t, beta=beta, reduction="sum"), p)


@pytest.mark.parametrize("ours, ref", [
    (L.giou_loss, tvo.generalized_box_iou_loss),
    (L.diou_loss, tvo.distance_box_iou_loss),
    (L.ciou_loss, tvo.complete_box_iou_loss),
])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_box_losses_match_torchvision(gen, ours, ref, reduction):
    p = random_boxes(200, gen, 100, 60, min_size=1.0)
    t = random_boxes(200, gen, 100, 60, min_size=1.0)
    # torchvision adds eps = 1e-7 to its denominators; minidet divides exactly
    _assert_same(lambda a: ours(a, t, reduction=reduction), lambda a: ref(a, t, reduction=reduction), p,
                 rtol=1e-4, atol=1e-5)


def test_iou_loss_against_torchvision_box_iou(gen):
    p = random_boxes(100, gen, 100, 60, min_size=1.0)
    t = random_boxes(100, gen, 100, 60, min_size=1.0)
    _assert_same(lambda a: L.iou_loss(a, t, reduction="none"),
                 lambda a: 1 - torch.diagonal(tvo.box_iou(a, t)), p)


@pytest.mark.parametrize("fn", [L.iou_loss, L.giou_loss, L.diou_loss])
def test_box_loss_gradcheck(fn, gen):
    p = random_boxes(5, gen, 10, 10, torch.float64, min_size=1.0).requires_grad_()
    t = random_boxes(5, gen, 10, 10, torch.float64, min_size=1.0)
    assert torch.autograd.gradcheck(lambda a: fn(a, t, reduction="sum"), (p,))


@pytest.mark.parametrize("fn", [L.l1_loss, L.l2_loss, L.smooth_l1_loss])
def test_offset_loss_gradcheck(fn, gen):
    p = torch.randn(6, 4, generator=gen, dtype=torch.float64).requires_grad_()
    t = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: fn(a, t, reduction="sum"), (p,))


def test_classification_gradcheck(gen):
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64).requires_grad_()
    t = torch.randint(0, 4, (6,), generator=gen)
    soft = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: L.softmax_cross_entropy(a, t), (x,))
    assert torch.autograd.gradcheck(lambda a: L.sigmoid_focal_loss(a, soft), (x,))
    assert torch.autograd.gradcheck(lambda a: L.softmax_focal_loss(a, t), (x,))
    assert torch.autograd.gradcheck(lambda a: L.binary_cross_entropy(a, soft), (x,))


# ------------------------------------------------------------------------------ robustness


def test_empty_inputs_give_zero_not_nan():
    e4 = torch.zeros(0, 4, requires_grad=True)
    for fn in (L.l1_loss, L.l2_loss, L.smooth_l1_loss, L.iou_loss, L.giou_loss, L.diou_loss, L.ciou_loss):
        v = fn(e4, e4.detach())
        assert v.item() == 0.0
        v.backward()
    ec = torch.zeros(0, 5, requires_grad=True)
    et = torch.zeros(0, dtype=torch.long)
    assert L.softmax_cross_entropy(ec, et).item() == 0.0
    assert L.sigmoid_focal_loss(ec, ec.detach(), reduction="mean").item() == 0.0
    assert L.multiclass_hinge_loss(ec, et).item() == 0.0


def test_huge_logits_are_finite():
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], requires_grad=True)
    t = torch.tensor([1, 0])
    onehot = F.one_hot(t, 3).float()
    for v in (L.softmax_cross_entropy(x, t), L.sigmoid_focal_loss(x, onehot), L.binary_cross_entropy(x, onehot),
              L.softmax_focal_loss(x, t), L.multiclass_hinge_loss(x, t)):
        assert torch.isfinite(v)
        v.backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None


def test_degenerate_boxes_are_finite():
    p = torch.tensor([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 4.0, 0.0], [1.0, 1.0, 3.0, 3.0]], requires_grad=True)
    t = torch.tensor([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 10.0, 10.0]])
    for fn in (L.iou_loss, L.giou_loss, L.diou_loss, L.ciou_loss):
        v = fn(p, t, reduction="sum")
        assert torch.isfinite(v)
        v.backward()
        assert torch.isfinite(p.grad).all()
        p.grad = None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(gen, dtype):
    x = (torch.randn(20, 6, generator=gen) * 3).to(dtype)
    t = (torch.rand(20, 6, generator=gen) > 0.8).float()
    v = L.sigmoid_focal_loss(x, t)
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, tvo.sigmoid_focal_loss(x.float(), t, reduction="sum"))
    boxes = random_boxes(20, gen, 600, 300, min_size=50.0)  # areas overflow float16
    g = L.giou_loss(boxes.to(dtype), boxes.flip(0).to(dtype), reduction="none")
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = L.softmax_cross_entropy(torch.randn(8, 5, generator=gen), torch.zeros(8, dtype=torch.long))
    assert v.dtype == torch.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        L.l1_loss(torch.zeros(2, 4), torch.zeros(2, 4), reduction="avg")
    with pytest.raises(ValueError, match="shapes differ"):
        L.giou_loss(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"logits \[N, C\]"):
        L.softmax_cross_entropy(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long))


class Loss(torch.nn.Module):
    """A loss function of minidet.losses with some keyword arguments fixed, as an ``nn.Module``;
    keyword arguments given at call time override the fixed ones."""

    def __init__(self, fn, **kwargs) -> None:
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, *args, **kwargs):
        return self.fn(*args, **{**self.kwargs, **kwargs})

    def extra_repr(self) -> str:
        return f"{self.fn.__name__}({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"


def build_loss(name: str, **kwargs) -> Loss:
    if name not in L.ALL_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(sorted(L.ALL_LOSSES))}")
    return Loss(L.ALL_LOSSES[name], **kwargs)


def test_loss_modules_and_names(gen):
    x = torch.randn(10, 3, generator=gen)
    t = (torch.rand(10, 3, generator=gen) > 0.7).float()
    focal = build_loss("focal", alpha=0.5, gamma=1.0)
    assert isinstance(focal, torch.nn.Module) and "alpha=0.5" in repr(focal)
    torch.testing.assert_close(focal(x, t), tvo.sigmoid_focal_loss(x, t, 0.5, 1.0, reduction="sum"))
    torch.testing.assert_close(focal(x, t, reduction="mean"), tvo.sigmoid_focal_loss(x, t, 0.5, 1.0, reduction="mean"))
    assert set(L.REGRESSION_LOSSES) == {"l1", "l2", "smooth_l1", "iou", "giou", "diou", "ciou"}
    with pytest.raises(ValueError, match="choose one of: .*focal.*giou"):
        build_loss("fokal")


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1, 0.0), (0.5, 1.5), (0.25, 1.0)])
def test_focal_from_labels_matches_torchvision(gen, alpha, gamma):
    x = torch.randn(3000, 7, generator=gen) * 4
    x[0, 0], x[1, 1] = 1e4, -1e4  # huge logits, positive and negative
    labels = torch.randint(-1, 7, (3000,), generator=gen)
    labels[:2] = torch.tensor([1, 1])
    weight = (torch.rand(3000, generator=gen) > 0.1).float()
    target = F.one_hot(labels.clamp(min=0), 7).float() * (labels >= 0)[:, None]
    _assert_same(lambda a: L.sigmoid_focal_loss_from_labels(a, labels, alpha, gamma, weight),
                 lambda a: (tvo.sigmoid_focal_loss(a, target, alpha, gamma, reduction="none") * weight[:, None]).sum(),
                 x, rtol=1e-5, atol=1e-4)


def test_focal_from_labels_second_backward_is_refused():
    x = torch.randn(4, 3, requires_grad=True)
    loss = L.sigmoid_focal_loss_from_labels(x, torch.tensor([0, -1, 2, 1]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()
