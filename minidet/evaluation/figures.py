"""The figures of an evaluation, written after the final evaluation of a training run (into the
run folder) and by ``python -m minidet.eval --weights`` (into --out):

- ``pr_curves.png``: per-class precision-recall curves at IoU 0.5 and their mean, COCOeval's
  own precision array (area all, 100 detections) — no recomputation;
- ``confusion_matrix.png``: ``minidet.evaluation.confusion`` at IoU 0.45, score 0.25;
- ``val_labels.jpg`` / ``val_predictions.jpg``: the first 16 images of the evaluated split, each
  scaled to 400 px on its long side, with the ground truth (ignore regions labelled "<class>
  ignore") and with the detections of score >= 0.25.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .confusion import CONF_IOU_THRESH, CONF_SCORE_THRESH, confusion_matrix
from .detector_eval import DetectorEvaluation, _plain, coco_ground_truth

if TYPE_CHECKING:
    from ..data.dataset import DetectionDataset

__all__ = ["MOSAIC_IMAGES", "MOSAIC_SCORE_THRESH", "MOSAIC_TILE", "write_evaluation_figures"]

MOSAIC_IMAGES = 16
MOSAIC_TILE = 400  # px, long side of each mosaic image
MOSAIC_SCORE_THRESH = 0.25


def _scaled(image: np.ndarray, boxes: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The image resized to ``side`` px on its long side, and xyxy boxes [K, 4] with it."""
    h, w = image.shape[:2]
    f = side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    out = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR if f > 1 else cv2.INTER_AREA)
    return out, np.asarray(boxes, np.float64).reshape(-1, 4) * f


def mosaic_tiles(evaluation: DetectorEvaluation, dataset: DetectionDataset, n: int = MOSAIC_IMAGES,
                 score_thresh: float = MOSAIC_SCORE_THRESH, side: int = MOSAIC_TILE
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(ground-truth tiles, prediction tiles) of the first ``n`` images of ``dataset``: RGB
    [<= side, <= side, 3], drawn with ``minidet.visualize.draw_detections``."""
    from ..visualize import draw_detections

    names = list(dataset.class_names)
    label_of = {int(c): i for i, c in enumerate(dataset.category_ids)}
    by_image: dict = defaultdict(list)
    for r in evaluation.results:
        if r["score"] >= score_thresh:
            by_image[r["image_id"]].append(r)
    labels_tiles, pred_tiles = [], []
    for i in range(min(n, len(dataset))):
        record = dataset.records[i]
        image = dataset.load(i)["image"]
        gt_boxes = np.concatenate([np.asarray(record.boxes, np.float64).reshape(-1, 4),
                                   np.asarray(record.ignore_boxes, np.float64).reshape(-1, 4)])
        # ignore regions get their own names ("<class> ignore") and colours: labels C..2C-1
        gt_labels = np.concatenate([np.asarray(record.labels, np.int64).reshape(-1),
                                    np.asarray(record.ignore_labels, np.int64).reshape(-1) + len(names)])
        img, b = _scaled(image, gt_boxes, side)
        labels_tiles.append(draw_detections(img, b, None, gt_labels, names + [f"{c} ignore" for c in names]))
        dets = by_image.get(_plain(record.image_id), [])
        xywh = np.array([d["bbox"] for d in dets], np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        img, b = _scaled(image, xyxy, side)
        pred_tiles.append(draw_detections(img, b, np.array([d["score"] for d in dets], np.float64),
                                          np.array([label_of[int(d["category_id"])] for d in dets], np.int64), names))
    return labels_tiles, pred_tiles


def write_evaluation_figures(evaluation: DetectorEvaluation, dataset: DetectionDataset, out_dir: str | Path
                             ) -> list[Path]:
    """Write pr_curves.png, confusion_matrix.png, val_labels.jpg and val_predictions.jpg (see
    the module docstring) into ``out_dir`` -> the paths written. A figure that fails is skipped
    with a warning naming it (the evaluation's numbers are never lost to a drawing problem)."""
    from ..plots import (  # matplotlib: only when drawn
        plot_confusion_matrix,
        plot_pr_curves,
        save_image_mosaic,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def attempt(name: str, draw) -> None:
        try:
            written.extend(draw())
        except Exception as err:  # noqa: BLE001 - reported, the run goes on
            print(f"warning: could not write {out / name}: {type(err).__name__}: {err}")

    attempt("pr_curves.png", lambda: [plot_pr_curves(evaluation.precision, evaluation.class_names,
                                                            out / "pr_curves.png")])
    attempt("confusion_matrix.png", lambda: [plot_confusion_matrix(
        confusion_matrix(coco_ground_truth(dataset), evaluation.results, CONF_IOU_THRESH, CONF_SCORE_THRESH),
        evaluation.class_names, out / "confusion_matrix.png", CONF_IOU_THRESH, CONF_SCORE_THRESH)])

    def mosaics() -> list[Path]:
        labels, preds = mosaic_tiles(evaluation, dataset)
        return [save_image_mosaic(labels, out / "val_labels.jpg"),
                save_image_mosaic(preds, out / "val_predictions.jpg")]

    attempt("val_labels.jpg / val_predictions.jpg", mosaics)
    return written
