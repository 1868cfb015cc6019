"""Evaluate a detector on a dataset: the one path that ``python -m minidet.eval --weights`` and
train-time validation (``Trainer.evaluate``) share.

1. Every process predicts its share of the images (``predict_detections``; boxes in original
   image pixels), the detections are gathered to rank 0 (``gather_to_main``), which alone
   scores them (steps 2 and 3) and broadcasts the stats to the other processes; they are put in
   dataset order (the first prediction of an image id counts).
2. They become a COCO results list (``results_from_detections``: ``category_id =
   dataset.category_ids[label]``, bbox xywh, score; full-precision floats) and are scored against
   the dataset's COCO ground-truth dict (``coco_ground_truth``) through the same code as
   ``--gt/--results`` (``load_coco_boxes`` + ``evaluate_boxes``), so pycocotools run on the
   dataset's annotation file and on this results list (``predictions.json``) gives the same
   12 numbers.
3. Optionally LRP (``lrp_from_boxes`` on the same boxes) and VOC mAP (``VOCEvaluator`` on the
   records: ignore regions, i.e. VOC "difficult" objects or COCO crowd regions, are its
   difficult objects).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..distributed import broadcast_from_main, gather_to_main, is_main, world_size
from ..progress import progress_bar
from .coco import ap_per_iou, evaluate_boxes, load_coco_boxes, per_class_ap
from .lrp import lrp_from_boxes
from .voc import VOCEvaluator

if TYPE_CHECKING:
    from torch import nn

    from ..data.dataset import DetectionDataset

__all__ = ["ImageDetections", "DetectorEvaluation", "coco_ground_truth", "predict_detections",
           "results_from_detections", "evaluate_detections", "evaluate_detector", "voc_evaluate"]

# (image_id, boxes [K, 4] xyxy float64 original pixels, scores [K] float64, labels [K] int64)
ImageDetections = tuple[Hashable, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class DetectorEvaluation:
    """What ``evaluate_detections`` found: the 12 COCO stats, COCOeval's precision [T, R, K, A, M]
    and recall [T, K, A, M] arrays (categories in increasing id order), the results list that
    was evaluated, LRP / VOC results when asked for, images evaluated and prediction seconds."""

    stats: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    results: list[dict]
    class_names: list[str]  # per category index (increasing category id)
    images: int
    seconds: float = 0.0
    lrp: dict[str, float] | None = None
    voc: dict[str, dict] = field(default_factory=dict)

    def per_class(self, iou: float | None = None) -> dict[str, float]:
        """AP@[.5:.95] (or AP at IoU ``iou``) per class name (nan: no gts of that class)."""
        return dict(zip(self.class_names, per_class_ap(self.precision, iou).tolist(), strict=True))

    def ap_per_iou(self) -> dict[str, float]:
        """AP at each IoU threshold 0.50:0.05:0.95 ({"0.50": AP50, ...})."""
        return ap_per_iou(self.precision)


def _plain(v):
    """numpy scalars -> Python scalars (for JSON)."""
    return v.item() if isinstance(v, np.generic) else v


def coco_ground_truth(dataset: DetectionDataset) -> dict:
    """The dataset's COCO ground-truth dict (what pycocotools would be given).

    COCO datasets: ``dataset.coco_source``, the image / annotation / category entries read, as
    written in the file. Other datasets (VOC, YOLO, shapes): built from ``dataset.records``:
    image id = ``record.image_id``, category id = ``dataset.category_ids[label]``, bbox xywh
    (float64) from the xyxy boxes, ``area`` = ``record.areas``, ``iscrowd`` 0; every ignore
    region (a VOC difficult object) is written with its class and ``iscrowd: 1``, pycocotools'
    only way to say "ignore" (``COCOeval._prepare`` overwrites an ``ignore`` field with
    ``iscrowd``), so its IoU is intersection / detection area there.
    """
    source = getattr(dataset, "coco_source", None)
    if source is not None:
        return source
    cat_ids = [int(c) for c in dataset.category_ids]
    images, anns = [], []

    def add(image_id, boxes, labels, areas, crowd: int) -> None:
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        for (x1, y1, x2, y2), label, area in zip(b.tolist(), np.asarray(labels).tolist(), areas, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_ids[int(label)],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area), "iscrowd": crowd})

    for r in dataset.records:
        image_id = _plain(r.image_id)
        images.append({"id": image_id, "file_name": str(r.path), "width": int(r.width), "height": int(r.height)})
        add(image_id, r.boxes, r.labels, np.asarray(r.areas, np.float64).reshape(-1).tolist(), 0)
        ib = np.asarray(r.ignore_boxes, np.float64).reshape(-1, 4)
        add(image_id, ib, r.ignore_labels, ((ib[:, 2] - ib[:, 0]) * (ib[:, 3] - ib[:, 1])).tolist(), 1)
    categories = [{"id": c, "name": n} for c, n in zip(cat_ids, dataset.class_names, strict=True)]
    return {"images": images, "annotations": anns, "categories": categories}


@torch.no_grad()
def predict_detections(model: nn.Module, loader: Iterable, device: torch.device, progress: bool = False,
                       desc: str = "eval", amp_dtype: torch.dtype | None = None) -> list[ImageDetections]:
    """Run ``model.predict`` over ``loader`` (this process's images; under autocast to
    ``amp_dtype`` when given, as the model trains) -> one entry per image, boxes unletterboxed to
    original pixels (the heads' float32 outputs held as float64)."""
    out: list[ImageDetections] = []
    for images, targets in progress_bar(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            dets = model.predict(images.to(device, non_blocking=True), [t["image_size"] for t in targets],
                                 [t["scale"] for t in targets], [t["orig_size"] for t in targets])
        for d, t in zip(dets, targets, strict=True):
            out.append((_plain(t["image_id"]), d["boxes"].detach().cpu().double().numpy().reshape(-1, 4),
                        d["scores"].detach().cpu().double().numpy().reshape(-1),
                        d["labels"].detach().cpu().long().numpy().reshape(-1)))
    return out


def _in_dataset_order(dataset: DetectionDataset, detections: Iterable[ImageDetections]) -> list[ImageDetections]:
    """One entry per image id (the first seen; lenient loading may repeat an image), in record order."""
    order = {_plain(r.image_id): i for i, r in enumerate(dataset.records)}
    seen: dict = {}
    for det in detections:
        if det[0] not in seen:
            seen[det[0]] = det
    return sorted(seen.values(), key=lambda d: order.get(d[0], len(order)))


def results_from_detections(detections: Iterable[ImageDetections], category_ids: Sequence[int]) -> list[dict]:
    """COCO results list: {"image_id", "category_id": category_ids[label], "bbox": [x, y, w, h],
    "score"}, full-precision floats (JSON round-trips them exactly)."""
    results = []
    for image_id, boxes, scores, labels in detections:
        for (x1, y1, x2, y2), score, label in zip(np.asarray(boxes, np.float64).tolist(), np.asarray(scores, np.float64).tolist(),
                                                  np.asarray(labels).tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": int(category_ids[int(label)]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


def voc_evaluate(dataset: DetectionDataset, detections: Iterable[ImageDetections], use_07_metric: bool = False) -> dict:
    """VOC mAP@0.5 of ``detections`` on ``dataset.records``; the ignore regions (VOC difficult
    objects; for COCO data the crowd regions) are the difficult gts."""
    ev = VOCEvaluator(len(dataset.class_names), use_07_metric=use_07_metric, class_names=dataset.class_names)
    by_image = {d[0]: d for d in detections}
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    for r in dataset.records:
        _, boxes, scores, labels = by_image.get(_plain(r.image_id), (None, *empty))
        ev.update([{"boxes": boxes, "scores": scores, "labels": labels}],
                  [{"boxes": np.asarray(r.boxes, np.float64), "labels": r.labels,
                    "ignore_boxes": np.asarray(r.ignore_boxes, np.float64), "ignore_labels": r.ignore_labels}])
    return ev.compute()


def evaluate_detections(dataset: DetectionDataset, detections: Iterable[ImageDetections], metrics: Sequence[str] = ("coco",)
                        ) -> DetectorEvaluation:
    """Score the detections of every process against the dataset (see the module docstring).
    ``metrics`` may add "lrp", "voc" (all-point) and "voc07" (11-point) to the COCO stats."""
    detections = _in_dataset_order(dataset, detections)
    gt = coco_ground_truth(dataset)
    results = results_from_detections(detections, dataset.category_ids)
    dts, gts, n_categories = load_coco_boxes(gt, results)
    stats, precision, recall = evaluate_boxes(dts, gts, n_categories)
    name_of = {int(c): n for c, n in zip(dataset.category_ids, dataset.class_names, strict=True)}
    names = [name_of.get(c, str(c)) for c in sorted({int(c["id"]) for c in gt["categories"]})]
    out = DetectorEvaluation(stats, precision, recall, results, names, images=len(detections))
    if "lrp" in metrics:
        out.lrp = lrp_from_boxes(dts, gts, n_categories)[0]
    for name in ("voc", "voc07"):
        if name in metrics:
            out.voc[name] = voc_evaluate(dataset, detections, use_07_metric=name == "voc07")
    return out


def evaluate_detector(model: nn.Module, dataset: DetectionDataset, loader: Iterable, device: torch.device,
                      metrics: Sequence[str] = ("coco",), progress: bool = False, desc: str = "eval",
                      amp_dtype: torch.dtype | None = None) -> DetectorEvaluation:
    """Predict this process's share of ``dataset`` (``loader`` over it) and evaluate the
    detections of all processes.

    One process: evaluates its detections. Under torch.distributed (a collective: every process
    calls it): the detections are gathered to rank 0 (``gather_to_main``), rank 0 alone
    evaluates them and broadcasts the result's small parts; every process returns the same
    ``stats`` (and ``images``, ``class_names``, ``lrp``, ``voc``), the others with empty
    ``precision`` / ``recall`` and no ``results``. When rank 0's evaluation fails, it raises its
    error and the others a RuntimeError saying so: no process is left waiting."""
    t0 = time.perf_counter()
    local = predict_detections(model, loader, device, progress, desc, amp_dtype)
    seconds = time.perf_counter() - t0
    if world_size() == 1:
        out = evaluate_detections(dataset, local, metrics)
        out.seconds = seconds
        return out
    parts = gather_to_main(local)  # None except on rank 0
    out, error, summary = None, None, None
    if is_main():
        try:
            out = evaluate_detections(dataset, [d for part in parts for d in part], metrics)
            summary = {"stats": out.stats, "images": out.images, "class_names": out.class_names, "lrp": out.lrp,
                       "voc": out.voc}
        except Exception as err:  # noqa: BLE001 - told to the other ranks, then raised here
            error, summary = err, {"error": f"{type(err).__name__}: {err}"}
    summary = broadcast_from_main(summary)
    if error is not None:
        raise error
    if "error" in summary:
        raise RuntimeError(f"the evaluation on rank 0 failed ({summary['error']})")
    if out is None:
        out = DetectorEvaluation(summary["stats"], np.zeros(0), np.zeros(0), [], summary["class_names"],
                                 images=summary["images"], lrp=summary["lrp"], voc=summary["voc"])
    out.seconds = seconds
    return out
