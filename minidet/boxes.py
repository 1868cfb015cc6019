"""Box geometry: format conversion, areas, and the IoU family (IoU, GIoU, DIoU, CIoU).

Boxes are ``[..., 4]`` tensors; xyxy (x1, y1, x2, y2) in absolute pixels unless stated.
Every IoU-type function exists in two forms:

- pairwise: ``box_iou(a [N,4], b [M,4]) -> [N,M]`` (every box of a against every box of b),
- aligned:  ``aligned_box_iou(a [N,4], b [N,4]) -> [N]`` (row i of a against row i of b);
  the regression losses use these.

Both forms share one implementation on broadcastable inputs, so they cannot drift apart.
Degenerate boxes are safe: a zero union (two zero-area boxes) gives IoU 0 rather than NaN,
and the enclosing-box terms of GIoU/DIoU are guarded the same way, so values and gradients
stay finite. Half-precision inputs are computed in float32 (areas overflow float16) and the
result is cast back to the input dtype. Formulas follow torchvision.ops (DIoU/CIoU use the
same ``eps = 1e-7`` in the enclosing-diagonal term), so values agree to float rounding.

CPU and accelerator forms of the hot paths. Some hot paths (the large no-grad ``box_iou`` here,
the fused focal loss, NMS) have a CPU form that works in cache-sized blocks and an accelerator
form (CUDA and any other non-CPU device) that computes everything at once, without Python loops
over blocks and without host synchronisations. ``use_device_path(device)`` picks the form;
``device_paths(True / False)`` forces one (tests use it to run the accelerator form on the CPU
and compare it with the blocked one). Both forms give the same values.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "distance_box_iou",
    "complete_box_iou",
    "aligned_box_iou",
    "aligned_generalized_box_iou",
    "aligned_distance_box_iou",
    "aligned_complete_box_iou",
    "clip_boxes_to_image",
    "box_centers",
    "use_device_path",
    "device_paths",
]

_EPS = 1e-7
_CHUNK_ELEMENTS = 1 << 18  # pairs per block in the chunked no-grad box_iou (CPU form only)
_FORCE_DEVICE_PATHS: bool | None = None


def use_device_path(device: torch.device | str) -> bool:
    """True where the hot paths take their accelerator form (unblocked, no host syncs): every
    non-CPU device, unless ``device_paths`` forces a form."""
    if _FORCE_DEVICE_PATHS is not None:
        return _FORCE_DEVICE_PATHS
    return torch.device(device).type != "cpu"


@contextlib.contextmanager
def device_paths(enabled: bool | None = True) -> Iterator[None]:
    """Force the accelerator form (True) or the CPU form (False) of the hot paths on every
    device inside the block; None restores the choice by device. Not thread-safe (a module flag)."""
    global _FORCE_DEVICE_PATHS
    previous, _FORCE_DEVICE_PATHS = _FORCE_DEVICE_PATHS, enabled
    try:
        yield
    finally:
        _FORCE_DEVICE_PATHS = previous


def box_centers(boxes: Tensor) -> Tensor:
    """Centres [..., 2] (cx, cy) of xyxy boxes [..., 4]."""
    return (boxes[..., :2] + boxes[..., 2:]) * 0.5


def box_area(boxes: Tensor) -> Tensor:
    """Area [...] of xyxy boxes [..., 4]; float16/bfloat16 inputs give float32 areas."""
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip xyxy boxes [..., 4] to an image of (height, width)."""
    h, w = size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


# ----------------------------------------------------------------------------- pairwise


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: boxes1 [N,4], boxes2 [M,4] (xyxy) -> [N,M]."""
    b1, b2, dtype = _pairwise(boxes1, boxes2)
    n, m = b1.shape[0], b2.shape[1]
    if (n * m <= _CHUNK_ELEMENTS or use_device_path(b1.device)
            or (torch.is_grad_enabled() and (b1.requires_grad or b2.requires_grad))):
        return _iou_family(b1, b2, dtype, "iou")
    # Large and without gradient (anchor matching) on the CPU: cache-sized blocks are ~3x faster.
    # (On an accelerator one kernel per step over the whole matrix is faster than ~n*m / 2^18
    # launches; the values are the same, element by element.)
    out = torch.empty(n, m, dtype=dtype, device=b1.device)
    if n >= m:
        step = max(1, _CHUNK_ELEMENTS // m)
        for s in range(0, n, step):
            out[s : s + step] = _iou_family(b1[s : s + step], b2, dtype, "iou")
    else:
        step = max(1, _CHUNK_ELEMENTS // n)
        for s in range(0, m, step):
            out[:, s : s + step] = _iou_family(b1, b2[:, s : s + step], dtype, "iou")
    return out


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU = IoU - |C \\ (A u B)| / |C| of every pair: [N,4] x [M,4] -> [N,M], in [-1, 1]."""
    return _iou_family(*_pairwise(boxes1, boxes2), "giou")


def distance_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """DIoU = IoU - rho^2 / c^2 of every pair: [N,4] x [M,4] -> [N,M]."""
    return _iou_family(*_pairwise(boxes1, boxes2), "diou")


def complete_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """CIoU = DIoU - alpha v of every pair: [N,4] x [M,4] -> [N,M] (alpha not differentiated)."""
    return _iou_family(*_pairwise(boxes1, boxes2), "ciou")


# ------------------------------------------------------------------------------ aligned


def aligned_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of row i of boxes1 [...,4] with row i of boxes2 [...,4] -> [...]."""
    return _iou_family(*_aligned(boxes1, boxes2), "iou")


def aligned_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Element-wise GIoU: [...,4] x [...,4] -> [...]."""
    return _iou_family(*_aligned(boxes1, boxes2), "giou")


def aligned_distance_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Element-wise DIoU: [...,4] x [...,4] -> [...]."""
    return _iou_family(*_aligned(boxes1, boxes2), "diou")


def aligned_complete_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Element-wise CIoU: [...,4] x [...,4] -> [...] (alpha not differentiated)."""
    return _iou_family(*_aligned(boxes1, boxes2), "ciou")


# ------------------------------------------------------------------------- shared core


def _upcast(t: Tensor) -> Tensor:
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t.float()


def _check(boxes: Tensor, name: str) -> None:
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have a last dimension of 4 (xyxy), got {tuple(boxes.shape)}")


def _pairwise(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
    _check(boxes1, "boxes1")
    _check(boxes2, "boxes2")
    if boxes1.dim() != 2 or boxes2.dim() != 2:
        raise ValueError("pairwise IoU expects [N,4] and [M,4]; use aligned_* for batched rows")
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    return _upcast(boxes1)[:, None, :], _upcast(boxes2)[None, :, :], dtype


def _aligned(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
    _check(boxes1, "boxes1")
    _check(boxes2, "boxes2")
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"aligned IoU needs equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    return _upcast(boxes1), _upcast(boxes2), dtype


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 0 where den == 0 (and a finite gradient there)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def _iou_family(b1: Tensor, b2: Tensor, out_dtype: torch.dtype, kind: str) -> Tensor:
    """IoU / GIoU / DIoU / CIoU of broadcastable xyxy boxes b1, b2 [..., 4]."""
    if b1.dtype != b2.dtype:
        common = torch.promote_types(b1.dtype, b2.dtype)
        b1, b2 = b1.to(common), b2.to(common)
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    if kind == "iou" and not (torch.is_grad_enabled() and (b1.requires_grad or b2.requires_grad)):
        # No gradient needed: the same float operations in place (at most three [N, M]
        # temporaries alive, which matters for the unblocked accelerator form). union == 0
        # implies inter == 0, so only 0 / 0 needs fixing.
        iw = torch.minimum(b1[..., 2], b2[..., 2])
        iw.sub_(torch.maximum(b1[..., 0], b2[..., 0])).clamp_(min=0)
        ih = torch.minimum(b1[..., 3], b2[..., 3])
        ih.sub_(torch.maximum(b1[..., 1], b2[..., 1])).clamp_(min=0)
        inter = iw.mul_(ih)
        del ih
        union = torch.add(area1, area2).sub_(inter)
        return inter.div_(union).nan_to_num_(nan=0.0).to(out_dtype)
    iw = (torch.minimum(b1[..., 2], b2[..., 2]) - torch.maximum(b1[..., 0], b2[..., 0])).clamp_(min=0)
    ih = (torch.minimum(b1[..., 3], b2[..., 3]) - torch.maximum(b1[..., 1], b2[..., 1])).clamp_(min=0)
    inter = iw * ih
    union = area1 + area2 - inter
    iou = _safe_div(inter, union)
    if kind == "iou":
        return iou.to(out_dtype)

    lt_c = torch.minimum(b1[..., :2], b2[..., :2])
    rb_c = torch.maximum(b1[..., 2:], b2[..., 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    if kind == "giou":
        area_c = wh_c[..., 0] * wh_c[..., 1]
        return (iou - _safe_div(area_c - union, area_c)).to(out_dtype)

    diag_sq = wh_c[..., 0] ** 2 + wh_c[..., 1] ** 2 + _EPS
    ctr1 = (b1[..., :2] + b1[..., 2:]) * 0.5
    ctr2 = (b2[..., :2] + b2[..., 2:]) * 0.5
    dist_sq = ((ctr1 - ctr2) ** 2).sum(-1)
    diou = iou - dist_sq / diag_sq
    if kind == "diou":
        return diou.to(out_dtype)

    w1, h1 = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1]
    w2, h2 = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1]
    # atan(w / h) with h clamped away from 0 so zero-height boxes stay finite.
    v = (4 / math.pi**2) * (torch.atan(w1 / h1.clamp(min=_EPS)) - torch.atan(w2 / h2.clamp(min=_EPS))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + _EPS)
    return (diou - alpha * v).to(out_dtype)
