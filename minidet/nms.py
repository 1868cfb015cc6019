"""Exact greedy non-maximum suppression, vectorised in PyTorch.

Semantics are those of ``torchvision.ops.nms`` / ``batched_nms``: boxes are visited in
decreasing score order (ties: lower index first), a box is kept unless a previously kept box
of the same class overlaps it with IoU strictly greater than ``iou_threshold``, and the kept
indices come back sorted by decreasing score. The IoU of a pair is computed with exactly the
same float operations as torchvision's kernel, so even pairs sitting exactly on the threshold
are decided identically.

How it stays exact without a Python loop over boxes:

1. *Suppression edges.* A pair can only have IoU > t > 0 if its centres are close:
   ``|cx_i - cx_j| < min(w_i, w_j) (1 - t) / (2 t)`` (the 1-D IoU of the x-intervals bounds
   the 2-D IoU from above). Sorting boxes by centre x turns the candidate pairs of every box
   into a window of its right-hand neighbours, so the IoUs are evaluated on a dense
   ``[N, window]`` band (strided views, no gathers) instead of the ``N x N`` matrix.
2. *Greedy resolution.* The edges (higher score -> lower score) form a DAG. Rounds of
   "a box with no incoming edge from a box that is not suppressed is kept; a box with an
   incoming edge from a kept box is suppressed" decide at least one new box per round and
   reproduce the sequential greedy result exactly; typical detector outputs need < 10 rounds.
3. *Prefix pruning.* Greedy decisions for the top-M boxes do not depend on the boxes after
   them, so they are resolved first; their kept boxes then remove everything they suppress
   from the remainder at once. On dense clusters this skips most of the pairwise work, the
   same saving the sequential kernel gets from skipping suppressed boxes.

Steps 1 and 3 work in cache-sized chunks on the CPU. On an accelerator (CUDA; see
``minidet.boxes.use_device_path``) there is no prefix pruning and no cache chunking: one band
over all boxes (split only above ``_DEVICE_CHUNK_ELEMENTS`` band elements, to bound memory),
one ``nonzero`` for its edges, and the greedy rounds check for convergence after 1, 2, 4, 8, ...
rounds (extra rounds after convergence change nothing). A call then costs about
3 + log2(rounds) host syncs (the window width, the edge count, the convergence checks, the kept
count; 4 to 8 on the benchmark's inputs) instead of 7 to 90 for the CPU form's prefixes and
chunks. Both forms return the same indices (tests/test_sync_budget.py compares them).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .boxes import use_device_path

__all__ = ["nms", "batched_nms"]

# CPU form: work in chunks of about this many band/pair elements so temporaries stay in cache.
_CHUNK_ELEMENTS = 1 << 18
# Accelerator form: no cache to fit; chunk only to bound the memory of the band temporaries
# (2^25 elements: ~1 GB of temporaries at most; one chunk up to e.g. 20k boxes x 1.6k window).
_DEVICE_CHUNK_ELEMENTS = 1 << 25
# Size of the first score-ordered prefix resolved before pruning the remainder.
_FIRST_PREFIX = 256


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS. boxes [N,4] xyxy, scores [N] -> kept indices (int64) by decreasing score."""
    _check_inputs(boxes, scores)
    return _nms_impl(boxes, scores, None, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Per-category greedy NMS: boxes of different ``idxs`` [N] never suppress each other.

    Returns kept indices (int64) sorted by decreasing score, like torchvision's batched_nms.
    """
    _check_inputs(boxes, scores)
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must have shape [N] like scores, got {tuple(idxs.shape)}")
    return _nms_impl(boxes, scores, idxs, float(iou_threshold))


def _check_inputs(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores must have shape [N] with N = {boxes.shape[0]}, got {tuple(scores.shape)}"
        )


def _nms_impl(boxes: Tensor, scores: Tensor, groups: Tensor | None, thr: float) -> Tensor:
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes = boxes.detach()  # indices only: no gradient flows through NMS
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()  # half inputs: decide in float32
    order = torch.sort(scores, descending=True, stable=True)[1]
    b = boxes[order].contiguous()
    g = groups[order] if groups is not None else None
    keep = _greedy_keep_sorted(b, g, thr)
    return order[keep]


def _comparable_threshold(thr: float, dtype: torch.dtype) -> float:
    """The threshold t' in ``dtype`` with (x > thr in float64) == (x > t' in dtype) for every x.

    torchvision compares the float IoU with the threshold as a double; a float32 comparison
    with float32(thr) would differ when float32(thr) rounds up (e.g. thr = 0.6).
    """
    if dtype != torch.float32:
        return thr
    t32 = np.float32(thr)
    if float(t32) > thr:
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return float(t32)


def _greedy_keep_sorted(b: Tensor, groups: Tensor | None, thr: float) -> Tensor:
    """b [N,4] sorted by decreasing score -> sorted positions (int64) of the kept boxes."""
    t = _comparable_threshold(thr, b.dtype)
    remaining = torch.arange(b.shape[0], device=b.device)
    if use_device_path(b.device):
        # One band over every box: no prefix rounds (each would cost host syncs).
        layout = _SpatialLayout(b, groups, remaining, thr)
        keep = _resolve_greedy(b.shape[0], *layout.edges(t, _DEVICE_CHUNK_ELEMENTS), check_every_round=False)
        return torch.nonzero(keep).squeeze(1)
    kept: list[Tensor] = []
    prefix = _FIRST_PREFIX
    pruning_pays = True
    while remaining.numel() > 0:
        head, rest = remaining[:prefix], remaining[prefix:]
        head_kept = head[_band_keep(b, groups, head, thr, t)]
        if rest.numel() == 0:
            kept.append(head_kept)
            break
        both = torch.cat([head_kept, rest])
        layout = _SpatialLayout(b, groups, both, thr)
        # Prune while it is cheaper than the band and still removes a good share of the rest
        # (dense clusters); on spread-out boxes it removes little and the band wins.
        if not pruning_pays or layout.cost() <= head_kept.numel() * rest.numel():
            kept.append(both[_resolve_greedy(both.numel(), *layout.edges(t))])
            break
        kept.append(head_kept)
        remaining = rest[~_suppressed_by(b, groups, head_kept, rest, t)]
        pruning_pays = remaining.numel() < 0.75 * rest.numel()
        prefix *= 2
    return torch.cat(kept)


def _pair_cols(b: Tensor, idx: Tensor) -> list[Tensor]:
    """Columns x1, y1, x2, y2, area of the boxes b[idx] (each [len(idx)])."""
    sub = b[idx]
    x1, y1, x2, y2 = sub.unbind(1)
    return [x1, y1, x2, y2, (x2 - x1) * (y2 - y1)]


def _iou_exceeds(a: list[Tensor], c: list[Tensor], t: float) -> Tensor:
    """IoU(a, c) > t with torchvision's float operations; a, c: broadcastable column lists."""
    iw = (torch.minimum(a[2], c[2]) - torch.maximum(a[0], c[0])).clamp_(min=0)
    ih = (torch.minimum(a[3], c[3]) - torch.maximum(a[1], c[1])).clamp_(min=0)
    inter = iw.mul_(ih)
    union = (a[4] + c[4]).sub_(inter)
    return inter.div_(union) > t


def _suppressed_by(
    b: Tensor, groups: Tensor | None, kept: Tensor, rest: Tensor, t: float
) -> Tensor:
    """Mask over ``rest`` of boxes that some box in ``kept`` overlaps with IoU > t."""
    kc = [c[:, None] for c in _pair_cols(b, kept)]
    rc = _pair_cols(b, rest)
    kg = groups[kept][:, None] if groups is not None else None
    rg = groups[rest] if groups is not None else None
    step = max(1, _CHUNK_ELEMENTS // max(1, kept.numel()))
    out = []
    for s in range(0, rest.numel(), step):
        hit = _iou_exceeds(kc, [c[None, s : s + step] for c in rc], t)
        if kg is not None:
            hit &= kg == rg[None, s : s + step]
        out.append(hit.any(0))
    return torch.cat(out)


def _band_keep(
    b: Tensor, groups: Tensor | None, idx: Tensor, thr: float, t: float
) -> Tensor:
    """Exact greedy NMS among b[idx] (idx ascending = score order) -> keep mask [len(idx)]."""
    return _resolve_greedy(idx.numel(), *_SpatialLayout(b, groups, idx, thr).edges(t))


class _SpatialLayout:
    """Boxes b[idx] sorted by centre x (groups kept apart), with the window of right-hand
    neighbours that can hold every pair whose IoU may exceed ``thr``."""

    def __init__(self, b: Tensor, groups: Tensor | None, idx: Tensor, thr: float) -> None:
        n = idx.numel()
        sub = b[idx]
        cx = (sub[:, 0].double() + sub[:, 2].double()) * 0.5
        if thr > 0:
            w = sub[:, 2].double() - sub[:, 0].double()
            reach = (w * ((1.0 - thr) / (2.0 * thr))).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            reach.clamp_(min=0)
        else:
            reach = torch.full_like(cx, math.inf)  # thr <= 0: any pair may suppress
        cx = cx.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        g = groups[idx] if groups is not None else None
        # The same float64 operations as Python floats would do, on 0-dim tensors (no host sync).
        if g is not None and n > 0:
            finite_max = torch.where(reach.isfinite(), reach, torch.zeros_like(reach)).max()  # reach >= 0
            gap = (cx.max() - cx.min()) + finite_max
            cx = cx + g.double() * (gap + 1.0)
        # Slack for the float64 rounding of the key sums; the exact IoU test follows anyway.
        if n > 0:
            reach = reach * (1 + 1e-9) + (1e-14 * cx.abs().max() + 1e-9)
        key, self.spatial = torch.sort(cx)
        end = torch.searchsorted(key, key + reach[self.spatial], right=True)
        last = torch.arange(1, n + 1, device=b.device)
        self.window = int((end - last).max()) if n > 0 else 0
        self.window = max(1, min(self.window, n - 1))
        self.boxes = sub[self.spatial]
        self.groups = g[self.spatial] if g is not None else None

    def cost(self) -> int:
        return self.boxes.shape[0] * self.window

    def edges(self, t: float, chunk_elements: int = _CHUNK_ELEMENTS) -> tuple[Tensor, Tensor]:
        """All pairs (i, j), i < j positions in idx, with IoU > t (and equal groups); the band is
        evaluated in chunks of about ``chunk_elements`` elements (one ``nonzero`` each)."""
        n, window, device = self.boxes.shape[0], self.window, self.boxes.device
        cols = [*self.boxes.unbind(1)]
        cols.append((cols[2] - cols[0]) * (cols[3] - cols[1]))
        pad = torch.full((window,), math.nan, dtype=self.boxes.dtype, device=device)
        padded = [torch.cat([c, pad]) for c in cols]  # NaN neighbours: IoU NaN, no edge
        gs = self.groups
        gpad = torch.cat([gs, gs.new_full((window,), -1)]) if gs is not None else None
        rows = max(1, chunk_elements // window)
        srcs, dsts = [self.spatial[:0]], [self.spatial[:0]]
        for s in range(0, n, rows):
            e = min(n, s + rows)
            own = [c[s:e, None] for c in cols]
            nbr = [c[s + 1 : e + window].unfold(0, window, 1) for c in padded]  # [e-s, window]
            hit = _iou_exceeds(own, nbr, t)
            if gs is not None:
                hit &= gs[s:e, None] == gpad[s + 1 : e + window].unfold(0, window, 1)
            p, k = torch.nonzero(hit, as_tuple=True)
            p = p + s
            a, c = self.spatial[p], self.spatial[p + 1 + k]
            srcs.append(torch.minimum(a, c))
            dsts.append(torch.maximum(a, c))
        return torch.cat(srcs), torch.cat(dsts)


def _resolve_greedy(n: int, src: Tensor, dst: Tensor, check_every_round: bool = True) -> Tensor:
    """Greedy outcome on the suppression DAG src -> dst (src < dst) -> keep mask [n].

    ``check_every_round=False`` (accelerator form) tests for convergence (a host sync) only
    after rounds 1, 2, 4, 8, ...: once every box is decided a further round changes nothing
    (``keep`` only grows, and a suppressed box stays hit by the kept box that suppressed it).
    """
    device = src.device
    if src.numel() == 0:
        return torch.ones(n, dtype=torch.bool, device=device)
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    decided = torch.zeros(n, dtype=torch.bool, device=device)
    zeros = torch.zeros(n, dtype=torch.float32, device=device)
    rounds, next_check = 0, 1
    while True:
        # Kept: undecided boxes without an incoming edge from a box not (yet) suppressed.
        suppressed = decided & ~keep
        live = (~suppressed).index_select(0, src).float()
        blocked = zeros.index_add(0, dst, live) > 0
        keep |= ~decided & ~blocked
        # Suppressed: boxes with an incoming edge from a kept box.
        hit = zeros.index_add(0, dst, keep.index_select(0, src).float()) > 0
        decided = keep | hit
        rounds += 1
        if not check_every_round and rounds < next_check:
            continue
        next_check *= 2
        if bool(decided.all()):
            return keep
