"""minidet.plots: PR-curve values are pycocotools' own precision array; results.csv / results.png
from written records."""

import contextlib
import csv
import io

import cv2
import numpy as np
from coco_random import random_coco

from minidet.engine.logger import RunLogger, results_rows
from minidet.evaluation.coco import evaluate_boxes, load_coco_boxes
from minidet.plots import plot_pr_curves, pr_curve_values


def _pycocotools_precision(gt: dict, res: list) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in res]), "bbox")
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"]


def test_pr_curves_are_pycocotools_precision(tmp_path):
    gt, results = random_coco(3, n_images=12, n_cats=3)  # with an empty category (no gts) and crowds
    _, precision, _ = evaluate_boxes(*load_coco_boxes(gt, results))
    ref = _pycocotools_precision(gt, results)[0, :, :, 0, 2].T  # IoU 0.5, area all, maxDets 100: [K, R]
    recall, per_class, mean = pr_curve_values(precision, iou=0.5)
    np.testing.assert_allclose(recall, np.linspace(0, 1, 101))
    assert (ref[-1] == -1).all() and np.isnan(per_class[-1]).all()  # the category without gts
    np.testing.assert_allclose(per_class[:-1], ref[:-1], atol=1e-12)
    np.testing.assert_allclose(mean, ref[:-1].mean(0), atol=1e-12)
    ap50 = ref[ref > -1].mean()  # COCOeval's AP50
    assert abs(mean.mean() - ap50) < 1e-12
    _, per75, _ = pr_curve_values(precision, iou=0.75)
    np.testing.assert_allclose(per75[:-1], _pycocotools_precision(gt, results)[5, :, :-1, 0, 2].T, atol=1e-12)
    img = cv2.imread(str(plot_pr_curves(precision, [c["name"] for c in gt["categories"]], tmp_path / "pr.png")))
    assert img is not None and img.shape == (640, 900, 3)


def _records() -> list[dict]:
    recs = []
    for epoch in range(3):
        for it in range(epoch * 4 + 1, epoch * 4 + 5):
            recs.append({"kind": "train", "epoch": epoch, "iteration": it, "lr": 0.01 * it, "img_per_s": 10.0,
                         "loss": float(it), "cls": 2.0 * it, "reg": 1.0, "num_pos": 5.0, "weight_cls": 1.0,
                         "cls_weighted": 3.0})
        if epoch != 1:  # evaluated after epochs 1 and 3
            recs.append({"kind": "eval", "epoch": epoch + 1, "iteration": epoch * 4 + 4, "AP": 0.1 * epoch,
                         "AP50": 0.2 * epoch, "AP75": 0.05 * epoch, "AR100": 0.3})
    recs.insert(5, {**recs[3], "loss": 99.0})  # a record repeated after a resume: counted once (the last)
    recs[3]["loss"] = 1234.0
    return recs


def test_results_csv_rows_and_png(tmp_path):
    rows = results_rows(_records())
    assert [r["epoch"] for r in rows] == [1, 3]
    assert rows[0]["train/loss"] == (1 + 2 + 3 + 99) / 4 and rows[1]["train/loss"] == (9 + 10 + 11 + 12) / 4
    assert rows[1]["train/cls"] == 21.0 and rows[1]["lr"] == 0.12 and rows[1]["val/AP50"] == 0.4
    logger = RunLogger(tmp_path)
    for r in _records():
        logger.log(r)
    logger.close()
    table = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert list(table[0]) == ["epoch", "iteration", "train/loss", "train/cls", "train/reg", "lr", "val/AP",
                              "val/AP50", "val/AP75"]
    assert [float(r["val/AP"]) for r in table] == [0.0, 0.2]
    assert (tmp_path / "metrics.csv").is_file() and not (tmp_path / "losses.png").exists()
    img = cv2.imread(str(tmp_path / "results.png"))  # 3 losses, lr, weights, AP, AP50, AP75: 2 rows of 5
    assert img is not None and img.shape == (520, 1600, 3)
