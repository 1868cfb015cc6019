"""Prior shapes and an image size fitted to a dataset's boxes (``--anchors auto``).

Boxes are measured at the training image size: each image is resized so that its longer side is
``img_size`` (what ``TrainTransform`` / ``EvalTransform`` do before scale jitter / padding). The
fit clusters the boxes' (w, h) by k-means with the distance d = 1 - IoU(box, centroid), both
centred at the same point — YOLOv2's dimension clusters (Redmon & Farhadi, "YOLO9000: Better,
Faster, Stronger", CVPR 2017, Sec. 2), so that large boxes do not dominate as with Euclidean
distance. "Mean best IoU" is the same shape-only IoU (centres aligned) of each box with its
best-matching prior, averaged over the boxes (YOLOv2's "Avg IOU"; Ultralytics' autoanchor
reports it too); it ignores where the priors sit on the grid.

Mapping to the families (``fit_anchors``):

- RetinaNet keeps the FPN structure: base sizes ``b * 2**l`` on P3..P7 (strides 8..128: one
  doubling per level, as the default 32..512), the scales per size of the assigner (Max-IoU:
  2^0, 2^(1/3), 2^(2/3); ATSS: 1), and aspect ratios h / w.
  * ratios (Max-IoU): the aspect ratios of the k = 9 clusters, grouped into at most 3 (the
    default count) by a 1-D k-means on log ratio weighted by the clusters' box counts; each
    group's weighted geometric mean, rounded to 2 decimals; ratios within a factor 1.25 of each
    other merge (an anchor and its 1.25x-ratio twin overlap by IoU 0.89: redundant). ATSS keeps
    one square anchor per location: its paper (Zhang et al., CVPR 2020, Sec. 4.3 / Table 7)
    finds several anchors per location useless once positives are chosen adaptively.
  * base size b: the integer in [2 s, 8 s] (s = 8, the P3 stride) with the highest mean best
    IoU of the whole anchor set (all levels, scales, ratios); ties go to the smaller. The shape
    IoU ignores the grid, hence the bounds: below 2 x stride an object matched to its anchor
    holds at most one prior centre per axis (ATSS / FCOS positives need their centre inside the
    box) and a same-size gt half a stride off the anchor overlaps it by IoU < 0.4 (Max-IoU's
    negative threshold) — objects that small call for a larger ``--img-size``
    (``minidet.class_sizes.plan_img_size``), not smaller anchors; 2 x stride is also what the small preset
    tuned on the shapes data, 8 x stride ATSS's own size, the largest any default uses.
- SSD keeps its default boxes (``build_model`` takes no prior-size option); their mean best IoU
  is reported.
- YOLO v1 has no anchors (each grid cell predicts its boxes directly): nothing is fitted.

``fit_for_config`` applies the fit to a resolved training configuration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .class_sizes import plan_img_size
from .models.families import FAMILIES

__all__ = ["box_sizes", "wh_iou", "mean_best_iou", "kmeans_iou", "anchor_shapes", "fit_anchors", "AnchorFit",
           "fit_for_config"]

MAX_FIT_BOXES = 20_000  # a seeded subsample beyond this keeps the fit under a second
RATIO_MERGE = 1.25


def box_sizes(records: Sequence, img_size: int) -> np.ndarray:
    """(w, h) [N, 2] float64 of every box of ``records`` (``Record``-like: ``boxes``, ``width``,
    ``height``) at the training size: the image's longer side resized to ``img_size``."""
    out = [np.zeros((0, 2))]
    for r in records:
        b = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        if len(b):
            out.append((b[:, 2:] - b[:, :2]) * (img_size / max(r.width, r.height)))
    wh = np.concatenate(out)
    return wh[(wh > 0).all(1)]


def wh_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, K] of shapes a [N, 2] and b [K, 2] (w, h) placed at the same centre."""
    inter = np.minimum(a[:, None, 0], b[None, :, 0]) * np.minimum(a[:, None, 1], b[None, :, 1])
    return inter / (a[:, None].prod(-1) + b[None].prod(-1) - inter)


def mean_best_iou(wh: np.ndarray, shapes: np.ndarray) -> float:
    """Mean over boxes [N, 2] of the best shape IoU with any prior shape [K, 2]."""
    return float(wh_iou(wh, shapes).max(1).mean()) if len(wh) else 0.0


def kmeans_iou(wh: np.ndarray, k: int, *, seed: int = 0, iters: int = 100, restarts: int = 3
               ) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv2's k-means with d = 1 - IoU on (w, h) [N, 2]: k-means++ seeding by that distance,
    mean updates, the best of ``restarts`` runs by mean IoU. -> (centroids [k', 2] sorted by area,
    boxes per centroid [k']); k' = min(k, distinct boxes)."""
    rng = np.random.default_rng(seed)
    k = min(k, len(np.unique(wh, axis=0)))
    best = None
    for _ in range(restarts):
        c = wh[[rng.integers(len(wh))]]
        while len(c) < k:  # k-means++: the next centre with probability ~ distance^2
            d = (1 - wh_iou(wh, c).max(1)) ** 2
            c = np.concatenate([c, wh[[rng.choice(len(wh), p=d / d.sum())]]]) if d.sum() > 0 else c[:k]
        assign = None
        for _ in range(iters):
            new = wh_iou(wh, c).argmax(1)
            if assign is not None and np.array_equal(new, assign):
                break
            assign = new
            for j in range(len(c)):
                members = wh[assign == j]
                if len(members):
                    c[j] = members.mean(0)
                else:  # an empty cluster restarts at the worst-fitted box
                    c[j] = wh[wh_iou(wh, c).max(1).argmin()]
        score = mean_best_iou(wh, c)
        if best is None or score > best[0]:
            best = (score, c.copy())
    c = best[1][np.argsort(best[1].prod(1), kind="stable")]
    counts = np.bincount(wh_iou(wh, c).argmax(1), minlength=len(c))
    return c, counts


def anchor_shapes(sizes: Sequence[float], ratios: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """(w, h) [L * R * S, 2] of RetinaNet anchors, ``AnchorGenerator``'s convention: size s,
    scale k, ratio r = h / w -> w = s k / sqrt(r), h = s k sqrt(r)."""
    s = np.asarray(sizes, np.float64)[:, None, None] * np.asarray(scales, np.float64)[None, None, :]
    r = np.sqrt(np.asarray(ratios, np.float64))[None, :, None]
    return np.stack([(s / r).reshape(-1), (s * r).reshape(-1)], 1)


def _group_ratios(centroids: np.ndarray, counts: np.ndarray, groups: int) -> tuple[float, ...]:
    """Cluster aspect ratios -> at most ``groups`` ratios (weighted 1-D k-means on log ratio,
    then near-duplicates merged); see the module docstring."""
    keep = counts > 0
    logr, w = np.log(centroids[keep, 1] / centroids[keep, 0]), counts[keep].astype(np.float64)
    order = np.argsort(logr)
    logr, w = logr[order], w[order]
    cum = (np.cumsum(w) - w / 2) / w.sum()
    centres = np.unique(np.interp((np.arange(groups) + 0.5) / groups, cum, logr))  # weighted quantiles
    for _ in range(50):
        assign = np.abs(logr[:, None] - centres[None]).argmin(1)
        centres = np.array([np.average(logr[assign == j], weights=w[assign == j]) if (assign == j).any() else c
                            for j, c in enumerate(centres)])
    assign = np.abs(logr[:, None] - centres[None]).argmin(1)
    weights = np.array([w[assign == j].sum() for j in range(len(centres))])
    merged: list[list[float]] = []  # [log ratio, weight], ascending
    for c, wt in sorted(zip(centres.tolist(), weights.tolist(), strict=True)):
        if wt <= 0:
            continue
        if merged and c - merged[-1][0] < math.log(RATIO_MERGE):
            m = merged[-1]
            m[0], m[1] = (m[0] * m[1] + c * wt) / (m[1] + wt), m[1] + wt
        else:
            merged.append([c, wt])
    return tuple(dict.fromkeys(round(math.exp(c), 2) for c, _ in merged))


@dataclass
class AnchorFit:
    """What ``fit_anchors`` found: the options to give ``build_model`` (None: not fitted, the
    family's / given value stays) and the quality numbers of the summary."""

    family: str
    num_boxes: int
    img_size: int
    anchor_sizes: tuple[int, ...] | None = None
    anchor_ratios: tuple[float, ...] | None = None
    fitted_iou: float | None = None
    default_iou: float | None = None
    clusters: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    clusters_iou: float | None = None
    note: str = ""

    def summary(self) -> str:
        """One printable line, e.g. ``anchors auto: fitted to 812 boxes at 512 px: sizes 24 48 96
        192 384, ratios 0.5 1 2; mean best IoU 0.71 (default anchors 0.52)``."""
        head = f"anchors auto ({self.family}): "
        if self.note and self.fitted_iou is None:
            return head + self.note
        fitted = []
        if self.anchor_sizes is not None:
            fitted.append("sizes " + " ".join(str(s) for s in self.anchor_sizes))
        if self.anchor_ratios is not None:
            fitted.append("ratios h/w " + " ".join(f"{r:g}" for r in self.anchor_ratios))
        clusters = (f"the {len(self.clusters)} k-means clusters "
                    + " ".join(f"{w:.0f}x{h:.0f}" for w, h in self.clusters) + f" themselves {self.clusters_iou:.2f}")
        if not fitted:  # SSD, or every anchor option given
            return (head + (f"{self.note}; " if self.note else "nothing left to fit; ") + f"{self.num_boxes} boxes at "
                    f"{self.img_size} px: mean best IoU {self.fitted_iou:.2f} ({clusters})")
        return (head + f"fitted to {self.num_boxes} boxes at {self.img_size} px: {', '.join(fitted)}; mean best IoU "
                f"{self.fitted_iou:.2f} (default anchors {self.default_iou:.2f}; {clusters})")


def fit_anchors(wh: np.ndarray, *, family: str = "retinanet", assigner: str = "maxiou", img_size: int = 512,
                sizes: Sequence[float] | None = None, ratios: Sequence[float] | None = None,
                scales: Sequence[float] | None = None, default: tuple | None = None, k: int = 9,
                num_ratios: int = 3, seed: int = 0, backbone: str = "tiny") -> AnchorFit:
    """Fit priors of ``family`` to box shapes wh [N, 2] at ``img_size`` (see the module docstring).

    sizes / ratios / scales: values given by the user — kept, the others are fitted (scales are
    never fitted: the assigner's). default: (sizes, ratios, scales) the run would use without
    the fit, for the comparison (default: the family's)."""
    fit = AnchorFit(family=family, num_boxes=len(wh), img_size=img_size)
    fam = FAMILIES[family]
    if fam.anchors is None and fam.prior_shapes is None:
        fit.note = fam.label + fam.priors_note
        return fit
    if len(wh) == 0:
        fit.note = "no boxes in the training split; the default priors stay"
        return fit
    rng = np.random.default_rng(seed)
    if len(wh) > MAX_FIT_BOXES:
        wh = wh[np.sort(rng.choice(len(wh), MAX_FIT_BOXES, replace=False))]
    fit.clusters, counts = kmeans_iou(wh, k, seed=seed)
    fit.clusters_iou = mean_best_iou(wh, fit.clusters)
    if fam.anchors is None:
        fit.fitted_iou = fit.default_iou = mean_best_iou(wh, fam.prior_shapes(backbone, img_size))
        fit.note = fam.label + fam.priors_note
        return fit
    fam_sizes, fam_ratios, fam_scales = fam.anchors(assigner)
    default = default or (fam_sizes, fam_ratios, fam_scales)
    scales = tuple(scales or fam_scales)
    if ratios is None and assigner != "atss":
        ratios = fit.anchor_ratios = _group_ratios(fit.clusters, counts, num_ratios)
    ratios = tuple(ratios or fam_ratios)
    if sizes is None:
        stride = fam.strides[0]
        bases = np.arange(2 * stride, 8 * stride + 1)
        levels = 2.0 ** np.arange(len(fam.strides))
        scores = [mean_best_iou(wh, anchor_shapes(b * levels, ratios, scales)) for b in bases]
        b = int(bases[int(np.argmax(scores))])
        sizes = fit.anchor_sizes = tuple(int(b * m) for m in levels)
    fit.fitted_iou = mean_best_iou(wh, anchor_shapes(sizes, ratios, scales))
    fit.default_iou = mean_best_iou(wh, anchor_shapes(*default))
    return fit


def fit_for_config(cfg: dict, records: Sequence, preset: Mapping | None = None,
                   class_names: Sequence[str] = ()) -> str:
    """``--anchors auto``: fit on the training ``records`` and store the fitted ``anchor_sizes`` /
    ``anchor_ratios`` in the resolved configuration ``cfg`` (only those left unset: given values
    stay), so that resume and evaluation rebuild the same model. ``preset``: the preset's own
    values for the family (``configuration.preset_values``), whose anchors are the default the
    fit is compared with. -> the printable summary, with a hint when ``--img-size auto``'s rule
    (``minidet.class_sizes.plan_img_size`` over the records' ``class_names``, when given) picks a
    larger size."""
    family, img_size = cfg["model"], int(cfg["img_size"])
    wh = box_sizes(records, img_size)
    if FAMILIES[family].anchors is None:
        fit = fit_anchors(wh, family=family, img_size=img_size, seed=cfg.get("seed") or 0,
                          backbone=cfg.get("backbone", "tiny"))
    else:
        preset = preset or {}
        fam = FAMILIES[family].anchors(cfg["assigner"])
        default = tuple(cfg.get(k) or preset.get(k) or f
                        for k, f in zip(("anchor_sizes", "anchor_ratios", "anchor_scales"), fam, strict=True))
        fit = fit_anchors(wh, family=family, assigner=cfg["assigner"], img_size=img_size, sizes=cfg.get("anchor_sizes"),
                          ratios=cfg.get("anchor_ratios"), scales=cfg.get("anchor_scales"), default=default,
                          seed=cfg.get("seed") or 0)
        if fit.anchor_sizes is not None:
            cfg["anchor_sizes"] = list(fit.anchor_sizes)
        if fit.anchor_ratios is not None:
            cfg["anchor_ratios"] = list(fit.anchor_ratios)
    text = fit.summary()
    if len(wh) and class_names:
        stride = FAMILIES[family].strides[0]
        plan = plan_img_size(records, class_names, stride=stride)
        if plan.size > img_size:
            small = np.percentile(np.sqrt(wh.prod(1)), 10)
            text += (f"\nnote: 10% of the training boxes are under {small:.0f} px (sqrt(w h)) at --img-size {img_size}; "
                     f"consider --img-size {plan.size} (what --img-size auto picks: every class's median box and the "
                     f"10th-percentile box at {2 * stride} px, 2 x the smallest stride, within {plan.cap_reason})")
    return text
