"""Pascal VOC mAP at IoU 0.5: the VOC2007 11-point metric and the VOC2010+ all-point metric,
with the devkit's semantics (``VOCevaldet``, as in the widely used Python port ``voc_eval``):

- per class, over all images, detections sorted by decreasing confidence (stable: ties keep
  their input order; the devkit's unstable argsort leaves that order unspecified);
- each detection takes the gt of its class in its image with the largest IoU (difficult ones
  included; on an exact tie the first one, non-difficult gts before difficult ones here, the
  XML order in the devkit). If that IoU > 0.5 (strictly): a difficult gt -> the detection is
  ignored (neither TP nor FP); a gt not matched yet -> TP, and the gt is marked; an already
  matched gt -> FP. Otherwise (including images without gts of the class) -> FP;
- recall is over the non-difficult gts (npos); precision tp / max(tp + fp, eps);
- VOC2007: mean over t = 0, 0.1, ..., 1 of the max precision at recall >= t; VOC2010+: area under
  the precision envelope (running max from the right) at every recall change. Classes without
  non-difficult gts get nan and are left out of the mean (the devkit would divide by zero).

Pixel convention: boxes are continuous xyxy. minidet's VOC reader turns the XML's 1-based,
inclusive pixel indices into x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax, so a width
x2 - x1 equals the devkit's xmax - xmin + 1 and the plain continuous IoU computed here equals the
devkit's "+1" IoU on the XML values (a detection [x1, y1, x2, y2] is the devkit detection
[x1 + 1, y1 + 1, x2, y2]). No "+1" appears here.

On a dataset (``minidet.evaluation.detector_eval.voc_evaluate``) the difficult gts are the
records' ignore regions: VOC difficult objects, and for COCO data the crowd regions (with plain
IoU here, not pycocotools' intersection over the detection's area).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["voc_ap", "VOCEvaluator"]


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from a precision/recall curve: 11-point (VOC2007) or area under the envelope."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = precision[recall >= t].max() if np.any(recall >= t) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class VOCEvaluator:
    """update(predictions, targets) per batch, compute() -> {"mAP", "AP": {class name: AP}}.

    predictions: [{"boxes" [K, 4] xyxy, "scores" [K], "labels" [K]}]; targets: [{"boxes" [N, 4]
    xyxy, "labels" [N], optional "difficult" [N] bool, optional "ignore_boxes" [M, 4] with
    optional "ignore_labels" [M]: more difficult objects, each of its class (one without a label,
    or with a label < 0, is a difficult object of every class)}]; continuous pixels (see the
    module docstring); images are numbered in the order seen. Classes without non-difficult gts
    get AP nan and are left out of the mean.
    """

    def __init__(self, num_classes: int, iou_thr: float = 0.5, use_07_metric: bool = False,
                 class_names: Sequence[str] | None = None) -> None:
        self.num_classes, self.iou_thr, self.use_07_metric = num_classes, iou_thr, use_07_metric
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.dets: list[tuple[int, int, float, np.ndarray]] = []
        self.gts: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.n_images = 0

    def update(self, predictions: Sequence[dict], targets: Sequence[dict]) -> None:
        for p, t in zip(predictions, targets, strict=True):
            i = self.n_images
            self.n_images += 1
            boxes, labels = _np(t["boxes"]).reshape(-1, 4), _np(t["labels"]).astype(int)
            difficult = _np(t.get("difficult", np.zeros(len(boxes)))).astype(bool)
            if t.get("ignore_boxes") is not None and len(t["ignore_boxes"]):
                ib = _np(t["ignore_boxes"]).reshape(-1, 4)
                il = t.get("ignore_labels")
                il = np.full(len(ib), -1) if il is None else _np(il).astype(int).reshape(-1)
                if len(il) != len(ib):
                    raise ValueError(f"image {i}: {len(ib)} ignore boxes but {len(il)} ignore labels")
                # an unlabelled ignore region (label < 0) is a difficult object of every class
                ib = np.concatenate([ib[il >= 0], np.tile(ib[il < 0], (self.num_classes, 1))])
                il = np.concatenate([il[il >= 0], np.repeat(np.arange(self.num_classes), int((il < 0).sum()))])
                boxes = np.concatenate([boxes, ib])
                labels = np.concatenate([labels, il])
                difficult = np.concatenate([difficult, np.ones(len(ib), bool)])
            for c in np.unique(labels):
                sel = labels == c
                self.gts[(i, int(c))] = (boxes[sel], difficult[sel])
            for box, score, label in zip(_np(p["boxes"]).reshape(-1, 4), _np(p["scores"]), _np(p["labels"]).astype(int),
                                         strict=True):
                self.dets.append((i, int(label), float(score), box))

    def class_ap(self, c: int) -> float:
        """AP of class c (nan without non-difficult gts)."""
        npos = sum(int((~d).sum()) for (i, k), (_, d) in self.gts.items() if k == c)
        if npos == 0:
            return float("nan")
        dets = [d for d in self.dets if d[1] == c]
        dets.sort(key=lambda d: -d[2])  # stable: ties keep their order
        taken = {key: np.zeros(len(v[0]), bool) for key, v in self.gts.items() if key[1] == c}
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for j, (img, _, _, box) in enumerate(dets):
            gts, difficult = self.gts.get((img, c), (np.zeros((0, 4)), np.zeros(0, bool)))
            if len(gts) == 0:
                fp[j] = 1
                continue
            ious = _iou(box, gts)
            g = int(np.argmax(ious))
            if ious[g] > self.iou_thr:
                if difficult[g]:
                    continue
                if not taken[(img, c)][g]:
                    tp[j] = 1
                    taken[(img, c)][g] = True
                else:
                    fp[j] = 1
            else:
                fp[j] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        return voc_ap(recall, precision, self.use_07_metric)

    def compute(self) -> dict:
        aps = {name: self.class_ap(c) for c, name in enumerate(self.class_names)}
        valid = [v for v in aps.values() if not np.isnan(v)]
        return {"mAP": float(np.mean(valid)) if valid else float("nan"), "AP": aps}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
