"""Anchor / prior assignment: which gt box (if any) each prior learns from.

Four assigners, each batched over images with gts padded to a common count G:

- ``MaxIoUAssigner``: RetinaNet / Faster R-CNN matching by IoU thresholds, plus low-quality
  matches (each gt also claims its best prior(s)).
- ``ATSSAssigner``: adaptive training sample selection (Zhang et al., 2020), with the rule of
  mmdetection's ATSSAssigner as written out in its docstring.
- ``SSDMatcher``: each gt forced onto its best default box, then IoU >= threshold.
- ``YOLOGridAssigner``: YOLO v1's responsible predictor of the cell holding the gt centre.

Entry point: ``assign_batch(priors [A,4], num_per_level, gt_boxes [B,G,4], gt_labels [B,G],
gt_valid [B,G], ignore=(boxes [B,M,4], valid [B,M]))`` for a padded batch.
Priors mostly inside an ignore region (crowd / difficult, any class; intersection over the
prior's area > ``ignore_iof_thr``, default 0.5) that are not positive become ignored, as
mmdetection's ``ignore_iof_thr`` does — torchvision's and detectron2's references instead
drop crowd boxes, training those pixels as background (``ignore_iof_thr=None``). Results use the Criterion contract: ``gt_inds`` is -1 for
ignored priors, 0 for background and k > 0 for "matched to gt k - 1"; ``labels`` holds the
matched gt's class for positives and -1 elsewhere; ``max_iou`` the prior's best IoU with a gt.
Images without gts give all-background; padding and zero-area gts never claim a prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .boxes import aligned_box_iou, box_area, box_centers, box_iou

__all__ = [
    "AssignResult",
    "MaxIoUAssigner",
    "ATSSAssigner",
    "SSDMatcher",
    "YOLOGridAssigner",
    "pad_gts",
    "ignore_inside_regions",
    "ASSIGNERS",
    "build_assigner",
    "constructor_options",
    "checked_options",
]


@dataclass
class AssignResult:
    """gt_inds, labels (int64) and max_iou (float), each [B, A]; pred_boxes
    [B, A, 4]: the decoded predictions an assignment by prediction used (YOLO), else None."""

    gt_inds: Tensor
    labels: Tensor
    max_iou: Tensor
    pred_boxes: Tensor | None = None

    @property
    def positive(self) -> Tensor:
        return self.gt_inds > 0

    @property
    def ignored(self) -> Tensor:
        return self.gt_inds < 0

    def matched_boxes(self, gt_boxes: Tensor) -> Tensor:
        """Boxes [B, A, 4] of the gt each prior is matched to (zeros where none); gt_boxes [B,G,4]."""
        if gt_boxes.shape[1] == 0:
            return gt_boxes.new_zeros(*self.gt_inds.shape, 4)
        idx = (self.gt_inds - 1).clamp(min=0)
        boxes = torch.gather(gt_boxes, 1, idx[..., None].expand(*idx.shape, 4))
        return boxes * self.positive[..., None]


def pad_gts(boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Pad per-image gts to [B, G, 4] boxes, [B, G] labels and a [B, G] validity mask."""
    b = len(boxes)
    g = max((len(x) for x in boxes), default=0)
    device = boxes[0].device if b else torch.device("cpu")
    dtype = boxes[0].dtype if b and boxes[0].is_floating_point() else torch.float32
    out_boxes = torch.zeros(b, g, 4, dtype=dtype, device=device)
    out_labels = torch.full((b, g), -1, dtype=torch.int64, device=device)
    valid = torch.zeros(b, g, dtype=torch.bool, device=device)
    for i, (bx, lb) in enumerate(zip(boxes, labels, strict=True)):
        n = len(bx)
        # non_blocking: inputs still on the CPU (e.g. the labels of ignore regions) are copied
        # without a stream sync; a no-op for inputs already on the device
        out_boxes[i, :n] = bx.to(device=device, dtype=dtype, non_blocking=True)
        out_labels[i, :n] = lb.to(device=device, dtype=torch.int64, non_blocking=True)
        valid[i, :n] = True
    return out_boxes, out_labels, valid


def _finish(gt_inds: Tensor, gt_labels: Tensor, max_iou: Tensor) -> AssignResult:
    """Fill labels from gt_inds; gt_labels [B, G]."""
    if gt_labels.shape[1] == 0:
        labels = torch.full_like(gt_inds, -1)
    else:
        labels = torch.gather(gt_labels, 1, (gt_inds - 1).clamp(min=0))
        labels = torch.where(gt_inds > 0, labels, torch.full_like(labels, -1))
    return AssignResult(gt_inds, labels, max_iou.clamp(min=0))


def _all_background(b: int, a: int, device: torch.device) -> AssignResult:
    zeros = torch.zeros(b, a, dtype=torch.int64, device=device)
    return AssignResult(zeros, torch.full_like(zeros, -1), torch.zeros(b, a, device=device))


def _batched_iou(gt_boxes: Tensor, priors: Tensor, gt_valid: Tensor) -> Tensor:
    """IoU [B, G, A] of every gt with every prior; padding gts get -1."""
    b, g = gt_valid.shape
    iou = box_iou(gt_boxes.reshape(b * g, 4), priors).view(b, g, -1)
    return iou.masked_fill(~gt_valid[..., None], -1.0)


class _Assigner:
    """The shared entry point: a padded batch, then ignore regions.

    ``ignore_iof_thr``: a prior whose intersection over its own area with some ignore region
    (COCO crowd, VOC difficult; of any class) exceeds this is ignored instead of background,
    mmdetection's ``ignore_iof_thr``; positives keep priority. None turns it off.
    """

    ignore_iof_thr: float | None = 0.5

    @torch.no_grad()
    def assign_batch(self, priors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor, gt_labels: Tensor,
                     gt_valid: Tensor, ignore: tuple[Tensor, Tensor] | None = None, **kwargs) -> AssignResult:
        """A padded batch: gt_boxes [B, G, 4], gt_labels / gt_valid [B, G]; ``ignore`` = (boxes
        [B, M, 4], valid [B, M]) -> results of shape [B, A]."""
        result = self._match(priors, num_per_level, gt_boxes, gt_labels, gt_valid, **kwargs)
        if ignore is not None and self.ignore_iof_thr is not None:
            result = ignore_inside_regions(result, priors, *ignore, self.ignore_iof_thr)
        return result

    def _match(self, priors, num_per_level, gt_boxes, gt_labels, gt_valid, **kwargs) -> AssignResult:
        raise NotImplementedError


def ignore_inside_regions(result: AssignResult, priors: Tensor, ignore_boxes: Tensor, ignore_valid: Tensor,
                          iof_thr: float) -> AssignResult:
    """Mark non-positive priors [A, 4] whose intersection over prior area with any valid ignore
    box (ignore_boxes [B, M, 4], ignore_valid [B, M]) exceeds ``iof_thr`` as ignored (-1)."""
    b, m = ignore_valid.shape
    if m == 0:
        return result
    lt = torch.maximum(priors[None, None, :, :2], ignore_boxes[:, :, None, :2])
    rb = torch.minimum(priors[None, None, :, 2:], ignore_boxes[:, :, None, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # [B, M, A]
    iof = inter / box_area(priors).clamp(min=1e-9)
    iof = iof.masked_fill(~ignore_valid[..., None], 0.0)
    inside = (iof.max(dim=1).values > iof_thr) & ~result.positive
    gt_inds = result.gt_inds.masked_fill(inside, -1)
    return AssignResult(gt_inds, result.labels, result.max_iou)


class MaxIoUAssigner(_Assigner):
    """IoU < neg_iou_thr: background; >= pos_iou_thr: positive for its best gt; between: ignored.

    With ``allow_low_quality`` every gt whose best IoU is > 0 and >= ``min_pos_iou`` also claims
    all priors tied at that best IoU, overriding their threshold outcome; a prior claimed by
    several gts goes to the claimer it overlaps most (lower gt index on exact ties).
    """

    def __init__(self, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4, min_pos_iou: float = 0.0,
                 allow_low_quality: bool = True, *, ignore_iof_thr: float | None = 0.5) -> None:
        self.ignore_iof_thr = ignore_iof_thr
        if neg_iou_thr > pos_iou_thr:
            raise ValueError(f"neg_iou_thr ({neg_iou_thr}) must not exceed pos_iou_thr ({pos_iou_thr})")
        self.pos_iou_thr, self.neg_iou_thr = pos_iou_thr, neg_iou_thr
        self.min_pos_iou, self.allow_low_quality = min_pos_iou, allow_low_quality

    @torch.no_grad()
    def _match(self, priors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor,
               gt_labels: Tensor, gt_valid: Tensor) -> AssignResult:
        b, g = gt_valid.shape
        if g == 0:
            return _all_background(b, priors.shape[0], priors.device)
        iou = _batched_iou(gt_boxes, priors, gt_valid)
        max_iou, best_gt = iou.max(dim=1)  # first gt on ties
        # Every step on the device, without data-dependent shapes (no host sync).
        background = torch.where(max_iou < self.neg_iou_thr, 0, -1)
        gt_inds = torch.where(max_iou >= self.pos_iou_thr, best_gt + 1, background)
        if self.allow_low_quality:
            gt_max = iou.max(dim=2, keepdim=True).values  # [B, G, 1]
            can_claim = (gt_max > 0) & (gt_max >= self.min_pos_iou)
            # A claim's IoU is its gt's best IoU, > 0; every other entry becomes -1 (in place: the
            # IoUs are not needed any more). Per prior the highest claiming IoU wins, the first
            # (lowest) gt on ties: a max over the gts.
            claim = iou == gt_max
            claim &= can_claim
            claim_iou = iou.masked_fill_(claim.logical_not_(), -1.0)
            win_iou, win_gt = claim_iou.max(dim=1)  # [B, A]
            gt_inds = torch.where(win_iou > 0, win_gt + 1, gt_inds)
        return _finish(gt_inds, gt_labels, max_iou)


def _best_claims(claim_prior: Tensor, claim_iou: Tensor, claim_ok: Tensor, num_priors: int) -> Tensor:
    """Per prior, the winning claim among claims [B, G] (gt g of image b claims prior
    ``claim_prior[b, g]`` with IoU ``claim_iou[b, g]`` where ``claim_ok``): the highest IoU, the
    lowest gt index on ties. -> [B, num_priors] winning gt index, -1 where no claim. Two scatter
    reductions on the device (no host sync)."""
    b, g = claim_iou.shape
    val = claim_iou.masked_fill(~claim_ok, -torch.inf)
    best = torch.full((b, num_priors), -torch.inf, dtype=val.dtype, device=val.device)
    best = best.scatter_reduce(1, claim_prior, val, reduce="amax", include_self=True)
    top = claim_ok & (val == best.gather(1, claim_prior))  # the claims achieving their prior's best
    gt_index = torch.arange(g, device=val.device).expand(b, g)
    first = torch.full((b, num_priors), g, dtype=torch.int64, device=val.device)
    first = first.scatter_reduce(1, claim_prior, torch.where(top, gt_index, g), reduce="amin", include_self=True)
    return torch.where(first < g, first, -1)


class ATSSAssigner(_Assigner):
    """ATSS with mmdetection's rule (tested against a per-gt loop written from this description,
    not against mmdetection's code).

    Per level the k = min(topk, priors on the level) priors whose centres are nearest
    (Euclidean; lower index first on exact distance ties) to the gt centre are candidates;
    the IoU threshold is mean + sample std (N - 1; 0 for a single candidate) of the
    candidates' IoUs; a candidate is positive if IoU >= threshold and its centre lies inside
    the gt by more than 0.01 px on every side. A prior positive for several gts goes to the
    one it overlaps most (lower index on ties); everything else is background.
    """

    def __init__(self, topk: int = 9, centre_margin: float = 0.01, *, ignore_iof_thr: float | None = 0.5) -> None:
        self.ignore_iof_thr = ignore_iof_thr
        self.topk, self.centre_margin = topk, centre_margin

    @torch.no_grad()
    def _match(self, priors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor,
               gt_labels: Tensor, gt_valid: Tensor) -> AssignResult:
        b, g = gt_valid.shape
        a = priors.shape[0]
        if g == 0:
            return _all_background(b, a, priors.device)
        if sum(num_per_level) != a:
            raise ValueError(f"num_per_level sums to {sum(num_per_level)} but there are {a} priors")
        iou = _batched_iou(gt_boxes, priors, gt_valid)
        prior_ctr = box_centers(priors)
        gt_ctr = box_centers(gt_boxes)
        candidate = torch.zeros(b, g, a, dtype=torch.bool, device=priors.device)
        start = 0
        for n in num_per_level:
            if n > 0:
                dist = (gt_ctr[:, :, None, :] - prior_ctr[None, None, start : start + n, :]).pow(2).sum(-1).sqrt()
                candidate[:, :, start : start + n] = _k_nearest_mask(dist, min(self.topk, n))
            start += n
        k_total = sum(min(self.topk, n) for n in num_per_level if n > 0)
        cand_iou = iou.clamp(min=0) * candidate
        mean = cand_iou.sum(-1, keepdim=True) / k_total
        if k_total > 1:
            var = ((iou - mean) ** 2 * candidate).sum(-1, keepdim=True) / (k_total - 1)
            threshold = mean + var.sqrt()
        else:
            threshold = mean
        x, y = prior_ctr[:, 0], prior_ctr[:, 1]
        gx1, gy1, gx2, gy2 = (gt_boxes[..., i : i + 1] for i in range(4))
        inside = torch.minimum(torch.minimum(x - gx1, y - gy1), torch.minimum(gx2 - x, gy2 - y)) > self.centre_margin
        positive = candidate & (iou >= threshold) & inside & gt_valid[..., None]
        pos_iou = torch.where(positive, iou, torch.full_like(iou, -1.0))
        best_iou, best_gt = pos_iou.max(dim=1)
        gt_inds = torch.where(positive.any(dim=1), best_gt + 1, torch.zeros_like(best_gt))
        return _finish(gt_inds, gt_labels, iou.max(dim=1).values)


def _k_nearest_mask(dist: Tensor, k: int) -> Tensor:
    """Mask [..., n] of the k smallest entries per row, lower index first on ties."""
    kth = torch.kthvalue(dist, k, dim=-1, keepdim=True).values
    below = dist < kth
    tied = dist == kth
    room = k - below.sum(-1, keepdim=True)
    return below | (tied & (tied.cumsum(-1) <= room))


class SSDMatcher(_Assigner):
    """SSD matching: IoU >= iou_thr -> positive for the best gt; then every gt is forced onto
    its single best default box (lowest index on ties). A box forced by several gts goes to the
    one it overlaps most (lower index on ties). Only ignore regions make ignored priors."""

    def __init__(self, iou_thr: float = 0.5, *, ignore_iof_thr: float | None = 0.5) -> None:
        self.ignore_iof_thr = ignore_iof_thr
        self.iou_thr = iou_thr

    @torch.no_grad()
    def _match(self, priors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor,
               gt_labels: Tensor, gt_valid: Tensor) -> AssignResult:
        b, g = gt_valid.shape
        if g == 0:
            return _all_background(b, priors.shape[0], priors.device)
        iou = _batched_iou(gt_boxes, priors, gt_valid)
        max_iou, best_gt = iou.max(dim=1)
        gt_inds = torch.where(max_iou >= self.iou_thr, best_gt + 1, torch.zeros_like(best_gt))
        gt_best, best_prior = iou.max(dim=2)  # [B, G]; lowest prior index on ties
        forced = _best_claims(best_prior, gt_best, gt_valid & (gt_best > 0), iou.shape[2])
        gt_inds = torch.where(forced >= 0, forced + 1, gt_inds)
        return _finish(gt_inds, gt_labels, max_iou)


class YOLOGridAssigner(_Assigner):
    """YOLO v1: the grid cell containing a gt's centre is responsible for it, and of the cell's
    ``boxes_per_cell`` predictors the one whose predicted box overlaps the gt most (first on
    ties; the first when no predictions are given). A cell holds one object (YOLO v1's limit):
    when several gt centres fall in one cell, the largest gt is used. All other predictors are
    background ("no object") unless inside an ignore region. Priors are the grid cells, repeated per predictor (cell-major).
    """

    def __init__(self, boxes_per_cell: int = 2, *, ignore_iof_thr: float | None = 0.5) -> None:
        self.ignore_iof_thr = ignore_iof_thr
        self.boxes_per_cell = boxes_per_cell

    @torch.no_grad()
    def _match(self, priors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor,
               gt_labels: Tensor, gt_valid: Tensor, pred_boxes: Tensor | None = None) -> AssignResult:
        b, g = gt_valid.shape
        a = priors.shape[0]
        k = self.boxes_per_cell
        if a % k:
            raise ValueError(f"{a} priors are not a whole number of cells of {k} predictors")
        if g == 0:
            return _all_background(b, a, priors.device)
        cells = priors[::k]
        n_cells = cells.shape[0]
        x0, y0 = cells[0, 0], cells[0, 1]
        cw, ch = cells[0, 2] - cells[0, 0], cells[0, 3] - cells[0, 1]
        # The grid width as a device tensor (reading it back would be a host sync).
        s_w = torch.round((cells[:, 2].max() - x0) / cw).long()
        s_h = n_cells // s_w
        ctr = box_centers(gt_boxes)
        col = torch.minimum(((ctr[..., 0] - x0) / cw).floor().clamp(0, n_cells - 1).long(), s_w - 1)
        row = torch.minimum(((ctr[..., 1] - y0) / ch).floor().clamp(0, n_cells - 1).long(), s_h - 1)
        cell = row * s_w + col  # [B, G]
        in_cell = (cell[..., None] == torch.arange(n_cells, device=priors.device)) & gt_valid[..., None]
        area = box_area(gt_boxes)
        keep = in_cell & (area[..., None] > 0)
        owner = torch.where(keep, area[..., None], torch.full_like(area[..., None], -1.0)).argmax(dim=1)  # [B, cells]
        occupied = keep.any(dim=1)
        owner_boxes = torch.gather(gt_boxes, 1, owner[..., None].expand(b, n_cells, 4))  # [B, cells, 4]
        preds = (pred_boxes if pred_boxes is not None else priors.expand(b, a, 4)).reshape(b, n_cells, k, 4)
        ious = aligned_box_iou(preds, owner_boxes[:, :, None, :].expand(b, n_cells, k, 4))
        best_iou, best_pred = ious.max(dim=2)  # [B, cells]
        responsible = torch.zeros(b, n_cells, k, dtype=torch.bool, device=priors.device)
        responsible.scatter_(2, best_pred[..., None], occupied[..., None])
        responsible = responsible.view(b, a)
        gt_inds = torch.where(responsible, owner.repeat_interleave(k, dim=1) + 1, torch.zeros_like(responsible, dtype=torch.int64))
        max_iou = torch.where(responsible, best_iou.repeat_interleave(k, dim=1), torch.zeros(b, a, device=priors.device))
        return _finish(gt_inds, gt_labels, max_iou)


ASSIGNERS: dict[str, type] = {"maxiou": MaxIoUAssigner, "atss": ATSSAssigner, "ssd": SSDMatcher,
                              "yolo": YOLOGridAssigner}


def constructor_options(make) -> list[str]:
    """The keyword arguments ``make`` (a class or a functools.partial of one) accepts."""
    import inspect

    return [n for n, p in inspect.signature(make).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def checked_options(kind: str, name: str, make, options: dict | None) -> list[str]:
    """The keywords ``make`` accepts; a ValueError naming them when ``options`` (given with
    ``--<kind>-option``) holds another."""
    accepted = constructor_options(make)
    unknown = sorted(set(options or {}) - set(accepted))
    if unknown:
        raise ValueError(f"{kind} {name!r} has no option {', '.join(unknown)} (--{kind}-option); its options: "
                         f"{', '.join(accepted)}")
    return accepted


def build_assigner(name: str, options: dict | None = None, **model_options):
    """``ASSIGNERS[name]`` built with ``options`` (``--assigner-option KEY=VALUE``) over the model
    options its constructor names (``ignore_iof_thr``, YOLO's ``boxes_per_cell``)."""
    accepted = checked_options("assigner", name, ASSIGNERS[name], options)
    return ASSIGNERS[name](**{k: v for k, v in model_options.items() if k in accepted}, **(options or {}))
