"""COCO evaluation against pycocotools (the oracle) on many randomised cases, and clear errors
on bad result files."""

import json

import numpy as np
import pytest
from coco_random import random_coco

from minidet.evaluation import STAT_NAMES, COCOEvaluator, coco_evaluate
from minidet.evaluation.coco import ResultsError

CASES = [
    dict(seed=s, n_images=n, n_cats=c, max_gts=g, dets_per_image=d, crowd_prob=cp, tie_scores=ties)
    for s, (n, c, g, d, cp, ties) in enumerate([
        (20, 1, 5, 10, 0.0, False), (30, 5, 12, 40, 0.1, False), (30, 5, 12, 40, 0.1, True),
        (15, 3, 20, 150, 0.2, False), (15, 3, 20, 150, 0.0, True), (40, 8, 6, 30, 0.05, False),
        (10, 2, 0, 20, 0.0, False), (25, 10, 15, 120, 0.3, True), (50, 4, 3, 5, 0.1, False),
        (12, 6, 30, 200, 0.1, False),
    ])
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c['seed']}")
def test_matches_pycocotools(case):
    gt, results = random_coco(**case)
    ours = coco_evaluate(gt, results)
    ref = coco_evaluate(gt, results, backend="pycocotools")
    for k in STAT_NAMES:
        assert ours[k] == pytest.approx(ref[k], abs=1e-6), k


def test_matches_pycocotools_on_files(tmp_path):
    gt, results = random_coco(99, n_images=20, n_cats=4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    ours = coco_evaluate(tmp_path / "gt.json", tmp_path / "res.json")
    ref = coco_evaluate(gt, results, backend="pycocotools")
    assert all(ours[k] == pytest.approx(ref[k], abs=1e-6) for k in STAT_NAMES)


def test_no_results_and_missing_categories():
    gt, _ = random_coco(5, n_images=5, n_cats=3)
    ours = coco_evaluate(gt, [])
    ref = coco_evaluate(gt, [], backend="pycocotools")
    assert all(ours[k] == pytest.approx(ref[k], abs=1e-6) for k in STAT_NAMES)


def _to_coco(preds, targets, cat_ids):
    """The in-memory inputs written as COCO dicts (areas = box areas, ignore boxes as crowd)."""
    images, anns, res = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i}"})
        for box, lab in zip(t["boxes"], t["labels"], strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat_ids[lab], "bbox": [box[0], box[1], w, h],
                         "area": w * h, "iscrowd": 0})
        for box in t["ignore_boxes"]:
            for c in cat_ids:
                w, h = box[2] - box[0], box[3] - box[1]
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [box[0], box[1], w, h],
                             "area": w * h, "iscrowd": 1})
        for box, s, lab in zip(p["boxes"], p["scores"], p["labels"], strict=True):
            res.append({"image_id": i, "category_id": cat_ids[lab], "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "score": s})
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in cat_ids]}, res


def test_in_memory_evaluator_matches_pycocotools():
    rng = np.random.default_rng(0)
    preds, targets = [], []
    for i in range(25):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 400, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 200, (n, 2))], 1)
        lab = rng.integers(0, 3, n)
        dets = np.concatenate([gt + rng.normal(0, 6, gt.shape), rng.uniform(0, 300, (5, 4)) + [0, 0, 30, 30]])
        dets[:, 2:] = np.maximum(dets[:, 2:], dets[:, :2] + 1)
        ign = np.array([[0, 0, 100, 100]]) if i % 5 == 0 else np.zeros((0, 4))
        preds.append({"boxes": dets.tolist(), "scores": rng.random(len(dets)).tolist(),
                      "labels": np.concatenate([lab, rng.integers(0, 3, 5)]).tolist()})
        targets.append({"boxes": gt.tolist(), "labels": lab.tolist(), "ignore_boxes": ign.tolist()})
    ev = COCOEvaluator(3)
    for j in range(0, 25, 7):  # in a few batches
        ev.update(preds[j : j + 7], targets[j : j + 7])
    ours = ev.compute()
    gt, res = _to_coco(preds, targets, [1, 2, 3])
    ref = coco_evaluate(gt, res, backend="pycocotools")
    assert all(ours[k] == pytest.approx(ref[k], abs=1e-6) for k in STAT_NAMES)
    assert set(ev.per_class()) == {"0", "1", "2"}
    per_iou = ev.ap_per_iou()
    precision = _pycocotools_precision(gt, res)  # [T, R, K, A, M]
    for t, key in enumerate(f"{x:.2f}" for x in np.arange(0.5, 0.96, 0.05)):
        p = precision[t, :, :, 0, 2]
        assert per_iou[key] == pytest.approx(p[p > -1].mean(), abs=1e-9)
    assert per_iou["0.50"] == pytest.approx(ref["AP50"], abs=1e-9)
    assert per_iou["0.75"] == pytest.approx(ref["AP75"], abs=1e-9)


def _pycocotools_precision(gt: dict, res: list) -> np.ndarray:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"]


@pytest.mark.parametrize("entry, text", [
    ({"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "entry 1: image_id 999 is not in the ground truth"),
    ({"image_id": 1, "category_id": 77, "bbox": [0, 0, 1, 1], "score": 0.5}, "entry 1: category_id 77"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")}, "entry 1: score must be a finite"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, -4, 1], "score": 0.5}, "entry 1: bbox .* width, height >= 0"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}, r"entry 1: bbox must be \[x, y, width, height\]"),
    ({"image_id": 1, "category_id": 1, "score": 0.5}, "entry 1: expected an object with"),
])
def test_bad_results_name_the_entry(entry, text):
    gt, _ = random_coco(1, n_images=3, n_cats=2)
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}
    with pytest.raises(ResultsError, match=text):
        coco_evaluate(gt, [good, entry])


def test_bad_result_files(tmp_path):
    gt, _ = random_coco(1, n_images=3, n_cats=2)
    (tmp_path / "res.json").write_text('[{"image_id": 1,')
    with pytest.raises(ResultsError, match=r"res.json: not valid JSON \(line 1"):
        coco_evaluate(gt, tmp_path / "res.json")
    with pytest.raises(ResultsError, match="results must be a JSON list"):
        coco_evaluate(gt, {"image_id": 1})
    with pytest.raises(ResultsError, match="results file not found"):
        coco_evaluate(gt, tmp_path / "missing.json")
