"""Several classes, one of them small and rare: --img-size auto keeps every class resolvable (or
says why not and which flag fixes it), per-class AP / AP50 reach the printed table, results.csv
and summary.json and equal pycocotools' per-category precision on the same files, and a class far
below the others is warned about. The data is a real COCO folder (Roboflow layout, iscrowd and
area) written here."""

import contextlib
import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from coco_random import random_coco
from pooled_img_size import suggest_img_size

from minidet.class_sizes import class_sizes, plan_img_size
from minidet.data import build_dataset
from minidet.data.check import main as check_main
from minidet.eval import main as eval_main
from minidet.evaluation.coco import evaluate_boxes, load_coco_boxes
from minidet.evaluation.detector_eval import DetectorEvaluation
from minidet.evaluation.per_class import lagging_class_warnings, per_class_results
from minidet.train import main as train_main

CLASSES = {"cell": ((220, 40, 40), 88), "nucleus": ((40, 200, 40), 72), "platelet": ((40, 40, 230), 24)}
W, H = 640, 480


def write_coco_folder(root: Path, n_train: int = 24, n_val: int = 8, seed: int = 0) -> Path:
    """Roboflow-style COCO folder: <split>/_annotations.coco.json beside the 640 x 480 JPEGs. Per
    image: 3-5 'cell' (~88 px), 2-3 'nucleus' (~72 px) and, in some images, one 'platelet' (~24 px:
    about a third of the others' side, 5-10% of the boxes)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_val)):
        folder = root / split
        folder.mkdir(parents=True)
        images, anns = [], []
        for i in range(n):
            img = np.full((H, W, 3), 30, np.uint8)
            boxes = []
            for cat, (name, (colour, side)) in enumerate(CLASSES.items()):
                count = {"cell": rng.integers(3, 6), "nucleus": rng.integers(2, 4),
                         "platelet": int(rng.random() < 0.45)}[name]
                for _ in range(int(count)):
                    s = side * rng.uniform(0.85, 1.15)
                    x, y = rng.uniform(0, W - s), rng.uniform(0, H - s)
                    cv2.rectangle(img, (int(x), int(y)), (int(x + s), int(y + s)), colour, -1)
                    boxes.append((cat + 1, [float(x), float(y), float(s), float(s)]))
            name = f"{split}_{i:03d}.jpg"
            cv2.imwrite(str(folder / name), img[:, :, ::-1])
            images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
            for cat, (x, y, w, h) in boxes:
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, w, h],
                             "area": w * h, "iscrowd": 0})
        cats = [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)]
        (folder / "_annotations.coco.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                                   "categories": cats}))
    return root


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return write_coco_folder(tmp_path_factory.mktemp("cells"))


def test_the_rare_small_class_is_what_the_fixture_claims(dataset_dir):
    records = build_dataset(dataset_dir, "train").records
    sizes = {c.name: c for c in class_sizes(records, list(CLASSES))}
    assert 0.01 <= sizes["platelet"].share <= 0.10
    others = min(np.median(sizes[n].rel) for n in ("cell", "nucleus"))
    assert np.median(sizes["platelet"].rel) <= others / 3


def test_auto_size_keeps_every_class_median_at_two_strides(dataset_dir):
    records = build_dataset(dataset_dir, "train").records
    pooled = suggest_img_size(records, stride=8)  # the rule before classes: the 10th percentile of all boxes
    plan = plan_img_size(records, list(CLASSES), stride=8)
    platelet = next(c for c in plan.classes if c.name == "platelet")
    assert platelet.median_px(pooled) < 16  # what the pooled rule gave away
    assert platelet.median_px(plan.size) >= 16 and plan.size <= 640 and plan.size % 32 == 0
    assert plan.size - 32 < 16 / np.median(platelet.rel)  # the smallest such multiple of 32
    assert not plan.under_resolved()
    assert len(plan.lines) == 3 and "platelet" in plan.lines[2] and "UNDER" not in "".join(plan.lines)


def test_a_capped_class_is_named_with_the_flag_that_fixes_it(dataset_dir):
    records = build_dataset(dataset_dir, "train").records
    plan = plan_img_size(records, list(CLASSES), stride=8, ceiling=320)  # a compute ceiling below the need
    assert plan.size == 320 and [c.name for c in plan.under_resolved()] == ["platelet"]
    line = next(text for text in plan.lines if "platelet" in text)
    assert "UNDER-RESOLVED" in line and "compute ceiling" in line
    fix = int(line.split("--img-size ")[1].split()[0])
    platelet = next(c for c in plan.classes if c.name == "platelet")
    assert platelet.median_px(fix) >= 16 and platelet.median_px(fix - 32) < 16


def test_check_command_prints_per_class_sizes(dataset_dir, capsys):
    check_main([str(dataset_dir), "--no-decode"])
    out = capsys.readouterr().out
    assert "--img-size auto would train at" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("platelet") and "/" in line)
    assert "<- median" not in row  # resolved at the automatic size
    check_main([str(dataset_dir), "--no-decode", "--img-size", "96"])
    out = capsys.readouterr().out
    assert "<- median UNDER the smallest stride" in next(line for line in out.splitlines()
                                                          if line.strip().startswith("platelet") and "/" in line)


def _pycocotools_per_class(gt_file: Path, predictions: Path) -> dict[str, tuple[float, float]]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(predictions)), "bbox")
        ev.evaluate()
        ev.accumulate()
    p = ev.eval["precision"][:, :, :, 0, 2]
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        allv, at50 = p[:, :, k], p[0, :, k]
        out[gt.cats[cat]["name"]] = (allv[allv > -1].mean(), at50[at50 > -1].mean())
    return out


def test_per_class_results_are_pycocotools_per_category():
    gt, results = random_coco(5, n_images=20, n_cats=4, empty_cat=False)
    stats, precision, recall = evaluate_boxes(*load_coco_boxes(gt, results))
    names = [c["name"] for c in gt["categories"]]
    ours = per_class_results(DetectorEvaluation(stats, precision, recall, results, names, 20))
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes([dict(r) for r in results]), "bbox")
        ev.evaluate()
        ev.accumulate()
    p = ev.eval["precision"][:, :, :, 0, 2]
    for k, name in enumerate(names):
        assert ours[name]["AP"] == pytest.approx(p[:, :, k][p[:, :, k] > -1].mean(), abs=1e-12)
        assert ours[name]["AP50"] == pytest.approx(p[0, :, k][p[0, :, k] > -1].mean(), abs=1e-12)
    assert len({round(v["AP"], 6) for v in ours.values()}) > 1  # not all equal: a test that can fail


def test_a_run_reports_per_class_ap_everywhere(dataset_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--data", str(dataset_dir), "--iters", "6", "--batch-size", "4", "--workers", "0",
                       "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "img size auto:" in out and "platelet:" in out and "worst class" in out
    summary = json.loads((run / "summary.json").read_text())["per_class"]
    assert list(summary) == list(CLASSES)
    assert eval_main(["--weights", str(run / "last.pt"), "--out", str(tmp_path / "eval")]) == 0
    ref = _pycocotools_per_class(dataset_dir / "valid" / "_annotations.coco.json", tmp_path / "eval" / "predictions.json")
    rows = list(csv.DictReader((run / "results.csv").open()))
    for name, (ap, ap50) in ref.items():
        assert summary[name]["AP"] == pytest.approx(ap, abs=1e-9)
        assert summary[name]["AP50"] == pytest.approx(ap50, abs=1e-9)
        assert float(rows[-1][f"val/AP/{name}"]) == pytest.approx(ap, abs=1e-9)
        assert float(rows[-1][f"val/AP50/{name}"]) == pytest.approx(ap50, abs=1e-9)
        table_row = next(line for line in out.splitlines() if line.startswith(f"{name} ") and "." in line)
        assert float(table_row.split()[1]) == pytest.approx(ap, abs=5e-4)


def test_a_class_far_below_the_others_is_warned_about_with_its_remedy():
    results = {"cell": {"AP": 0.52, "AP50": 0.8}, "nucleus": {"AP": 0.76, "AP50": 0.9},
               "platelet": {"AP": 0.156, "AP50": 0.3}}
    small = lagging_class_warnings(results, {"cell": 40, "nucleus": 30, "platelet": 9.5}, 128, 8, {"platelet": 224})
    assert len(small) == 1 and "'platelet'" in small[0] and "10 px at --img-size 128" in small[0]
    assert "--img-size 224" in small[0]
    resolved = lagging_class_warnings(results, {"cell": 90, "nucleus": 70, "platelet": 30}, 320, 8)
    assert len(resolved) == 1 and "not the problem" in resolved[0]
    level = {"a": {"AP": 0.5}, "b": {"AP": 0.45}, "c": {"AP": 0.3}}
    assert lagging_class_warnings(level, {}, 128, 8) == []  # 0.3 >= half of the others' median
    assert lagging_class_warnings({"a": {"AP": 0.05}, "b": {"AP": 0.0}}, {}, 128, 8) == []  # nothing learnt yet
