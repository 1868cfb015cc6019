"""Detection confusion matrix (the Ultralytics / YOLOv5 kind) from a COCO ground-truth dict and a
COCO results list: the inputs the COCO evaluation already scored.

Layout: ``matrix[predicted, true]``, shape [C + 1, C + 1], classes in increasing category id
order (the order of COCOeval's precision array); index C is background. Column C counts false
positives (a detection matching no object), row C missed objects (an object no detection
matches).

Rule, per image:
1. keep the detections with score >= ``score_thresh`` (default 0.25, as Ultralytics);
2. match detections to the image's (non-crowd) objects one to one, whatever their classes,
   greedily by decreasing IoU over the pairs with IoU >= ``iou_thresh`` (default 0.45, as
   Ultralytics; it thresholds with ">" and resolves conflicts per detection, then per object);
3. a matched pair adds 1 at [detected class, true class] (the diagonal when they agree);
   an unmatched object adds 1 at [C, its class];
4. an unmatched detection lying in a crowd / ignore region (``iscrowd: 1``: COCO crowds, VOC
   difficult objects) of any class, i.e. intersection / detection area >= ``iou_thresh``
   (pycocotools' crowd IoU), is not counted; any other adds 1 at [its class, C]. Crowd regions
   are never missed objects.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .matching import pairwise_iou_xywh

__all__ = ["CONF_IOU_THRESH", "CONF_SCORE_THRESH", "confusion_matrix"]

CONF_IOU_THRESH = 0.45
CONF_SCORE_THRESH = 0.25


def _greedy_match(iou: np.ndarray, thresh: float) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs with iou >= thresh, taken by decreasing IoU."""
    rows, cols = np.nonzero(iou >= thresh)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r, used_c, pairs = set(), set(), []
    for r, c in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


def confusion_matrix(gt: dict, results: Sequence[dict], iou_thresh: float = CONF_IOU_THRESH,
                     score_thresh: float = CONF_SCORE_THRESH) -> np.ndarray:
    """Counts [C + 1, C + 1] (int64), ``[predicted, true]`` with background last; see the module
    docstring for the rule. ``gt``: a COCO dict (images, annotations with xywh ``bbox``,
    ``category_id``, optional ``iscrowd``, categories); ``results``: [{"image_id",
    "category_id", "bbox" xywh, "score"}]."""
    cat_index = {c: i for i, c in enumerate(sorted({int(c["id"]) for c in gt["categories"]}))}
    n = len(cat_index)
    matrix = np.zeros((n + 1, n + 1), np.int64)
    objects: dict = defaultdict(list)  # image id -> [(bbox, class)]
    crowds: dict = defaultdict(list)
    for a in gt.get("annotations", []):
        (crowds if a.get("iscrowd", 0) else objects)[a["image_id"]].append((a["bbox"], cat_index[int(a["category_id"])]))
    dets: dict = defaultdict(list)
    for r in results:
        if r["score"] >= score_thresh:
            dets[r["image_id"]].append((r["bbox"], cat_index[int(r["category_id"])]))
    for image_id in {im["id"] for im in gt["images"]}:
        g, d, c = objects.get(image_id, []), dets.get(image_id, []), crowds.get(image_id, [])
        g_box = np.array([b for b, _ in g], np.float64).reshape(-1, 4)
        g_cls = np.array([k for _, k in g], np.int64)
        d_box = np.array([b for b, _ in d], np.float64).reshape(-1, 4)
        d_cls = np.array([k for _, k in d], np.int64)
        pairs = _greedy_match(pairwise_iou_xywh(d_box, g_box, np.zeros(len(g), bool)), iou_thresh)
        for di, gi in pairs:
            matrix[d_cls[di], g_cls[gi]] += 1
        g_free = np.ones(len(g), bool)
        d_free = np.ones(len(d), bool)
        for di, gi in pairs:
            d_free[di], g_free[gi] = False, False
        np.add.at(matrix, (n, g_cls[g_free]), 1)
        if c and d_free.any():  # pycocotools' crowd IoU: intersection / detection area
            crowd_box = np.array([b for b, _ in c], np.float64).reshape(-1, 4)
            covered = pairwise_iou_xywh(d_box, crowd_box, np.ones(len(c), bool))
            d_free &= ~(covered >= iou_thresh).any(1)
        np.add.at(matrix, (d_cls[d_free], n), 1)
    return matrix
