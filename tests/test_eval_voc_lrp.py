"""VOC mAP and LRP on small cases worked out by hand."""

import numpy as np
import pytest

from minidet.evaluation.coco import COCOEvaluator
from minidet.evaluation.lrp import lrp_from_boxes
from minidet.evaluation.voc import VOCEvaluator, voc_ap


def _olrp(ev: COCOEvaluator, thresholds: str = "grid") -> dict:
    return lrp_from_boxes(*ev.boxes(), ev.num_classes, thresholds=thresholds)[0]


def test_voc_ap_by_hand():
    # one class; image 0: gts A, B; image 1: gt C and a difficult gt D
    targets = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [0, 0]},
               {"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": [0, 0], "difficult": [False, True]}]
    preds = [{"boxes": [[0, 0, 10, 10], [0, 0, 10, 9], [100, 100, 110, 110]], "scores": [0.9, 0.7, 0.4], "labels": [0, 0, 0]},
             {"boxes": [[50, 50, 60, 60], [1, 0, 10, 10]], "scores": [0.8, 0.6], "labels": [0, 0]}]
    # by score: 0.9 TP (A), 0.8 -> difficult D: ignored, 0.7 -> A again: FP, 0.6 TP (C), 0.4 FP
    # tp = 1, 1, 2, 2; fp = 0, 1, 1, 2; npos = 3 -> recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2
    ev = VOCEvaluator(1)
    ev.update(preds, targets)
    all_point = 1 / 3 * 1 + 1 / 3 * (2 / 3)
    assert ev.compute()["mAP"] == pytest.approx(all_point)
    ev07 = VOCEvaluator(1, use_07_metric=True)
    ev07.update(preds, targets)
    # thresholds 0, .1, .2, .3: max precision 1; .4, .5, .6: 2/3; .7 ... 1: 0
    assert ev07.compute()["mAP"] == pytest.approx((4 * 1 + 3 * 2 / 3) / 11)


def test_voc_ap_function_and_classes_without_gts():
    r, p = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc_ap(r, p) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    ev = VOCEvaluator(2)
    ev.update([{"boxes": [[0, 0, 5, 5]], "scores": [0.5], "labels": [1]}], [{"boxes": [[0, 0, 5, 5]], "labels": [0]}])
    out = ev.compute()
    assert out["mAP"] == 0.0 and np.isnan(out["AP"]["1"])


def test_olrp_by_hand():
    # 2 gts; d1 (0.9) IoU 0.8 with g1, d2 (0.8) a false positive, d3 (0.7) IoU 0.6 with g2
    target = {"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": [0, 0]}
    pred = {"boxes": [[0, 0, 10, 8], [200, 200, 210, 210], [50, 50, 60, 56]], "scores": [0.9, 0.8, 0.7], "labels": [0, 0, 0]}
    ev = COCOEvaluator(1)
    ev.update([pred], [target])
    # s in (0.8, 0.9]: 1 TP (loc (1 - 0.8) / 0.5 = 0.4), 1 FN -> (0.4 + 1) / 2 = 0.7
    # s in (0.7, 0.8]: (0.4 + 1 FP + 1 FN) / 3 = 0.8; s <= 0.7: (0.4 + 0.8 + 1) / 3 = 0.733
    out = _olrp(ev)
    assert out["oLRP"] == pytest.approx(0.7)
    assert out["oLRP_loc"] == pytest.approx(0.2) and out["oLRP_FP"] == 0.0 and out["oLRP_FN"] == 0.5
    assert _olrp(ev, "all")["oLRP"] == pytest.approx(0.7)


def test_lrp_without_detections_is_one():
    ev = COCOEvaluator(2)
    ev.update([{"boxes": np.zeros((0, 4)), "scores": [], "labels": []}], [{"boxes": [[0, 0, 4, 4]], "labels": [1]}])
    assert _olrp(ev)["oLRP"] == 1.0
