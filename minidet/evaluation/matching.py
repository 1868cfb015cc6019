"""COCO-style greedy matching of detections to ground truth, vectorised over images and
categories, with exactly pycocotools' ``COCOeval.evaluateImg`` semantics:

- per (image, category): detections by decreasing score (stable), at most ``max_det``; gts
  with the non-ignored ones first (stable);
- at each IoU threshold t every detection takes, among the gts not yet taken (crowd gts may be
  taken again), the one with the highest IoU >= t — the last one in gt order on exact ties;
  non-ignored gts win over ignored ones (ignored = crowd or outside the area range);
- a detection matched to an ignored gt is ignored; an unmatched detection outside the area
  range is ignored; crowd IoU = intersection / detection area.

Only (detection, gt) pairs with IoU >= the lowest threshold can ever match, so the greedy loop
runs on those candidate pairs alone, batched over all groups that have any.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Boxes", "match", "MatchResult", "pairwise_iou_xywh"]


@dataclass
class Boxes:
    """A flat set of boxes: image index, category index, xywh box, area, plus score (dts)
    or crowd flag (gts). Image / category indices are positions in the evaluated id lists."""

    image: np.ndarray
    category: np.ndarray
    xywh: np.ndarray
    area: np.ndarray
    score: np.ndarray | None = None
    crowd: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image)


@dataclass
class MatchResult:
    """Per detection: rank in its (image, category) group, whether kept (rank < max_det),
    and per (area range, IoU threshold) the matched gt (-1: none), its IoU and the ignore
    flag. Per gt and area range: the ignore flag."""

    dt_rank: np.ndarray  # [D]
    dt_matched: np.ndarray  # [R, T, D] gt index or -1
    dt_iou: np.ndarray  # [R, T, D] IoU with the matched gt (0 when unmatched)
    dt_ignore: np.ndarray  # [R, T, D] bool
    gt_ignore: np.ndarray  # [R, G] bool


def pairwise_iou_xywh(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU [..., D, G] of xywh boxes d [..., D, 4] and g [..., G, 4], as pycocotools'
    maskUtils.iou for boxes: crowd gts use the detection's area as the union."""
    dx1, dy1 = d[..., :, None, 0], d[..., :, None, 1]
    dx2, dy2 = dx1 + d[..., :, None, 2], dy1 + d[..., :, None, 3]
    gx1, gy1 = g[..., None, :, 0], g[..., None, :, 1]
    gx2, gy2 = gx1 + g[..., None, :, 2], gy1 + g[..., None, :, 3]
    iw = np.minimum(dx2, gx2) - np.maximum(dx1, gx1)
    ih = np.minimum(dy2, gy2) - np.maximum(dy1, gy1)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    da = d[..., :, None, 2] * d[..., :, None, 3]
    ga = g[..., None, :, 2] * g[..., None, :, 3]
    union = np.where(crowd[..., None, :], da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _group_ranges(keys: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and count of each group in a key-sorted array."""
    counts = np.bincount(keys, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return starts, counts


def match(dts: Boxes, gts: Boxes, n_categories: int, iou_thrs: np.ndarray, area_rngs: np.ndarray,
          max_det: int) -> MatchResult:
    """Match detections to gts for every area range and IoU threshold (see module docstring)."""
    n_r, n_t = len(area_rngs), len(iou_thrs)
    # --- detections: group (image, category), by decreasing score, stable in input order
    d_key = dts.image.astype(np.int64) * n_categories + dts.category
    d_order = np.lexsort((np.arange(len(dts)), -dts.score, d_key))
    d_key_sorted = d_key[d_order]
    uniq_d, d_inv = np.unique(d_key_sorted, return_inverse=True)
    d_start = np.searchsorted(d_key_sorted, uniq_d)
    rank_sorted = np.arange(len(dts)) - d_start[d_inv]
    dt_rank = np.empty(len(dts), np.int64)
    dt_rank[d_order] = rank_sorted

    gt_out_of_range = (gts.area[None, :] < area_rngs[:, :1]) | (gts.area[None, :] > area_rngs[:, 1:])
    gt_ignore = gt_out_of_range | gts.crowd[None, :].astype(bool)  # [R, G]
    dt_matched = np.full((n_r, n_t, len(dts)), -1, np.int32)
    dt_iou = np.zeros((n_r, n_t, len(dts)))

    kept = d_order[rank_sorted < max_det]  # detections taking part, grouped and by score
    g_key = gts.image.astype(np.int64) * n_categories + gts.category
    g_order = np.argsort(g_key, kind="stable")
    g_key_sorted = g_key[g_order]
    k_key = d_key[kept]
    # groups holding both kept detections and gts
    shared = np.intersect1d(np.unique(k_key), np.unique(g_key_sorted))
    if len(shared):
        _match_groups(dts, gts, kept, k_key, g_order, g_key_sorted, shared, gt_ignore, iou_thrs, dt_matched, dt_iou)

    dt_out = (dts.area[None, :] < area_rngs[:, :1]) | (dts.area[None, :] > area_rngs[:, 1:])  # [R, D]
    matched_gt_ignored = np.zeros_like(dt_matched, dtype=bool)
    has = dt_matched >= 0
    r_idx = np.broadcast_to(np.arange(n_r)[:, None, None], dt_matched.shape)
    matched_gt_ignored[has] = gt_ignore[r_idx[has], dt_matched[has]]
    dt_ignore = matched_gt_ignored | (~has & dt_out[:, None, :])
    return MatchResult(dt_rank, dt_matched, dt_iou, dt_ignore, gt_ignore)


def _match_groups(dts, gts, kept, k_key, g_order, g_key_sorted, shared, gt_ignore, iou_thrs, dt_matched, dt_iou):
    """Greedy matching in every shared group, batched over groups of similar size."""
    n_r, n_t = gt_ignore.shape[0], len(iou_thrs)
    # kept detections of shared groups, in group order then score order
    in_shared = np.isin(k_key, shared)
    k = kept[in_shared]
    k_grp = np.searchsorted(shared, k_key[in_shared])
    k_start, k_count = _group_ranges(k_grp, len(shared))
    g_lo = np.searchsorted(g_key_sorted, shared, side="left")
    g_count = np.searchsorted(g_key_sorted, shared, side="right") - g_lo
    # bucket groups by (detections, gts) rounded up to powers of two to bound padding
    size_class = np.ceil(np.log2(np.maximum(k_count, 1))).astype(int) * 64 + np.ceil(np.log2(np.maximum(g_count, 1))).astype(int)
    for sc in np.unique(size_class):
        groups = np.nonzero(size_class == sc)[0]
        n_d, n_g = int(k_count[groups].max()), int(g_count[groups].max())
        n = len(groups)
        d_slot = np.arange(n_d)
        d_valid = d_slot[None, :] < k_count[groups, None]
        d_idx = np.where(d_valid, k[np.minimum(k_start[groups, None] + d_slot, len(k) - 1)], 0)  # [n, n_d]
        g_slot = np.arange(n_g)
        g_valid = g_slot[None, :] < g_count[groups, None]
        g_idx = np.where(g_valid, g_order[np.minimum(g_lo[groups, None] + g_slot, len(g_order) - 1)], 0)  # [n, n_g]
        crowd = gts.crowd[g_idx].astype(bool) & g_valid
        ious = pairwise_iou_xywh(dts.xywh[d_idx], gts.xywh[g_idx], crowd)  # [n, n_d, n_g]
        ious = np.where(d_valid[:, :, None] & g_valid[:, None, :], ious, -1.0)
        for r in range(n_r):
            # gts ordered non-ignored first (stable): a permutation of the slots per group
            ign = gt_ignore[r][g_idx] | ~g_valid
            perm = np.argsort(ign, axis=1, kind="stable")
            ign_p = np.take_along_axis(ign, perm, 1) & g_valid[np.arange(n)[:, None], perm]
            valid_p = np.take_along_axis(g_valid, perm, 1)
            crowd_p = np.take_along_axis(crowd, perm, 1)
            ious_p = np.take_along_axis(ious, perm[:, None, :], 2)
            taken = np.zeros((n, n_t, n_g), bool)
            thr = np.minimum(iou_thrs, 1 - 1e-10)[None, :, None]
            for j in range(n_d):
                iou_j = ious_p[:, j, None, :]  # [n, 1, n_g]
                avail = valid_p[:, None, :] & ~(taken & ~crowd_p[:, None, :]) & (iou_j >= thr)
                best = _last_argmax(np.where(avail & ~ign_p[:, None, :], iou_j, -1.0))
                best_ig = _last_argmax(np.where(avail & ign_p[:, None, :], iou_j, -1.0))
                has_non_ig = (avail & ~ign_p[:, None, :]).any(-1)
                has_ig = (avail & ign_p[:, None, :]).any(-1)
                m = np.where(has_non_ig, best, np.where(has_ig, best_ig, -1))  # [n, T] slot or -1
                ok = (m >= 0) & d_valid[:, j, None]
                rows, ts = np.nonzero(ok)
                slots = m[rows, ts]
                taken[rows, ts, slots] = True
                dets = d_idx[rows, j]
                dt_matched[r, ts, dets] = g_idx[rows, perm[rows, slots]]
                dt_iou[r, ts, dets] = ious_p[rows, j, slots]


def _last_argmax(x: np.ndarray) -> np.ndarray:
    """Index of the maximum along the last axis, the last one on ties."""
    flipped = x[..., ::-1]
    return x.shape[-1] - 1 - np.argmax(flipped, axis=-1)
