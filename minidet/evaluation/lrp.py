"""LRP and optimal LRP (Oksuz et al., ECCV 2018), as the aLRP paper's tables report them.

For a class and a score threshold s, with the detections scoring >= s matched to the gts at
IoU >= tau (COCO-style greedy matching, tau = 0.5):

    LRP = ( sum over TPs of (1 - IoU) / (1 - tau) + N_FP + N_FN ) / (N_TP + N_FP + N_FN)

in [0, 1] (lower is better). oLRP is the minimum over s; its components at that s are the
localisation error mean(1 - IoU) of the TPs, the FP rate N_FP / (N_TP + N_FP) and the FN rate
N_FN / N_gt. The dataset figure (moLRP) averages over classes that have gts. Thresholds
``"grid"`` are 0.00, 0.01, ..., 1.00 as the authors' evaluation code; ``"all"`` tries every
detection score (the exact optimum). Greedy matching by score makes the matches of the
detections above s independent of those below it, so one matching serves every s.
"""

from __future__ import annotations

import numpy as np

from .matching import Boxes, match

__all__ = ["lrp_from_boxes", "LRP_NAMES"]

LRP_NAMES = ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN")
AREA_ALL = np.array([[0, 1e5**2]], dtype=np.float64)


def lrp_from_boxes(dts: Boxes, gts: Boxes, n_categories: int, tau: float = 0.5, thresholds: str = "grid",
                   max_det: int = 100) -> tuple[dict[str, float], np.ndarray]:
    """-> ({"oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN"} averaged over classes with gts,
    per-class array [K, 5] of (oLRP, loc, FP, FN, best threshold); nan rows for classes without gts)."""
    m = match(dts, gts, n_categories, np.array([tau]), AREA_ALL, max_det)
    kept = (m.dt_rank < max_det) & ~m.dt_ignore[0, 0]
    tp_all = (m.dt_matched[0, 0] >= 0) & kept
    n_gt = np.bincount(gts.category[~m.gt_ignore[0]], minlength=n_categories)
    per_class = np.full((n_categories, 5), np.nan)
    for k in range(n_categories):
        if n_gt[k] == 0:
            continue
        sel = np.nonzero(kept & (dts.category == k))[0]
        sel = sel[np.argsort(-dts.score[sel], kind="mergesort")]
        scores = dts.score[sel]
        tp = tp_all[sel].astype(float)
        loc = np.where(tp_all[sel], 1.0 - m.dt_iou[0, 0, sel], 0.0)
        n_tp = np.concatenate([[0.0], np.cumsum(tp)])  # after taking the first j detections
        n_fp = np.concatenate([[0.0], np.cumsum(1.0 - tp)])
        loc_sum = np.concatenate([[0.0], np.cumsum(loc)])
        if thresholds == "grid":
            s = np.linspace(0.0, 1.0, 101)
        elif thresholds == "all":
            s = np.unique(np.concatenate([scores, [np.inf]]))
        else:
            raise ValueError(f"thresholds must be 'grid' or 'all', got {thresholds!r}")
        j = np.searchsorted(-scores, -s, side="right")  # detections with score >= s
        ntp, nfp, lsum = n_tp[j], n_fp[j], loc_sum[j]
        nfn = n_gt[k] - ntp
        lrp = (lsum / (1 - tau) + nfp + nfn) / (ntp + nfp + nfn)
        b = int(np.argmin(lrp))
        per_class[k] = [lrp[b], lsum[b] / ntp[b] if ntp[b] else np.nan,
                        nfp[b] / (ntp[b] + nfp[b]) if ntp[b] + nfp[b] else np.nan, nfn[b] / n_gt[k], s[b]]
    valid = per_class[~np.isnan(per_class[:, 0])]

    def mean(col: int) -> float:
        v = valid[:, col]
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else float("nan")

    return dict(zip(LRP_NAMES, (mean(0), mean(1), mean(2), mean(3)), strict=True)), per_class
