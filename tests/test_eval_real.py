"""Evaluation through a model on real-format files, checked against the reference tools run on
those same files (never against minidet's own reading of them):

- COCO: pycocotools' COCOeval on the written annotation JSON and on the detections, with
  class-specific crowd regions, annotation ``area`` values unlike the box areas and images without
  annotations; all four paths (train-time validation, ``python -m minidet.eval --weights``,
  ``--gt/--results`` and ``COCOEvaluator``) give its 12 numbers to 1e-9.
- VOC: Annotations/*.xml with difficult objects, evaluated through ``python -m minidet.eval
  --metrics voc07 voc`` with a model whose detections the test sets; the expected values are
  worked out by hand and by a port of the devkit's ``voc_eval`` loop reading the XML files.
"""

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from minidet.data import EvalTransform, build_dataset, build_loader
from minidet.data.coco import read_coco
from minidet.data.image_io import write_rgb
from minidet.data.shapes import ShapesDataset, dataset_yaml, write_coco
from minidet.engine.checkpoint import model_from_checkpoint, save_checkpoint
from minidet.engine.validation import Validation
from minidet.eval import main
from minidet.evaluation import STAT_NAMES, COCOEvaluator, coco_evaluate
from minidet.evaluation.detector_eval import evaluate_detections, predict_detections
from minidet.models import build_model

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "retinanet_shapes.pt"
SCORE_THRESH = 0.01  # low: many detections per image
SIZE = 128


def pycocotools_eval(gt_path: Path, results_path: Path) -> tuple[dict, np.ndarray]:
    """pycocotools on the two files -> (12 stats, precision [T, R, K, A, M])."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(results_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(STAT_NAMES, (float(s) for s in ev.stats), strict=True)), ev.eval["precision"]


def assert_stats(ours: dict, ref: dict) -> None:
    for k in STAT_NAMES:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), k


def _iou_xyxy(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _xyxy(bbox) -> list[float]:
    return [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]


# ----------------------------------------------------------------------------------- COCO


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory):
    """A COCO folder of shapes images whose JSON has class-specific crowd regions (over false
    positives and true objects, of the detection's category and of others), areas unlike the
    box areas and images without annotations; plus the model's detections on it."""
    root = tmp_path_factory.mktemp("coco")
    shapes = ShapesDataset(10, SIZE, split="val", seed=7)
    write_coco(shapes, root, "val")
    (root / "dataset.yaml").write_text(dataset_yaml("coco", ["val"], shapes.class_names))
    gt_path = root / "annotations" / "instances_val.json"
    gt = json.loads(gt_path.read_text())
    model, _ = model_from_checkpoint(WEIGHTS)
    model.postprocess.score_thresh = SCORE_THRESH
    plain = build_dataset(root, "val", transform=EvalTransform(SIZE))
    dets = {d[0]: d for d in predict_detections(model, build_loader(plain, 5, train=False), torch.device("cpu"))}

    anns = [a for a in gt["annotations"] if a["image_id"] not in (4, 9)]  # images 4 and 9: no objects
    crowds = []

    def crowd(image_id: int, category: int, box, pad: float = 2.0) -> None:
        x1, y1, x2, y2 = max(0.0, box[0] - pad), max(0.0, box[1] - pad), min(SIZE, box[2] + pad), min(SIZE, box[3] + pad)
        crowds.append({"image_id": image_id, "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                       "area": (x2 - x1) * (y2 - y1), "iscrowd": 1})

    def other(category: int) -> int:
        return category % 4 + 1

    for image_id in (1, 2, 4, 5, 6, 8):
        gts = [a for a in anns if a["image_id"] == image_id]
        _, boxes, scores, labels = dets[image_id]
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):  # the best-scoring false positive
            cat = label + 1
            if all(_iou_xyxy(box, _xyxy(g["bbox"])) < 0.1 for g in gts if g["category_id"] == cat):
                crowd(image_id, cat, box)  # same category: the false positive becomes ignored
                if image_id != 4:
                    crowd(image_id, other(cat), box)  # another category: it stays a false positive
                break
        if gts:
            crowd(image_id, other(gts[0]["category_id"]), _xyxy(gts[0]["bbox"]))  # over a true object, other class
        if len(gts) > 1:
            crowd(image_id, gts[1]["category_id"], _xyxy(gts[1]["bbox"]))  # same class: its gt still matches first
    factors = (0.25, 1.0, 4.0, 12.0)  # small <-> medium <-> large
    for i, a in enumerate(anns):
        a["area"] = a["bbox"][2] * a["bbox"][3] * factors[i % len(factors)]
    anns = sorted(anns + crowds, key=lambda a: a["image_id"])  # crowds among their image's objects
    for i, a in enumerate(anns):
        a["id"] = i + 1
    gt["annotations"] = anns
    gt_path.write_text(json.dumps(gt))
    return SimpleNamespace(root=root, gt_path=gt_path, gt=gt, names=shapes.class_names)


@pytest.fixture(scope="module")
def cli_run(coco_data, tmp_path_factory):
    """python -m minidet.eval --weights on the folder -> (metrics, predictions path)."""
    out = tmp_path_factory.mktemp("eval")
    rc = main(["--weights", str(WEIGHTS), "--data", str(coco_data.root), "--split", "val", "--img-size", str(SIZE),
               "--batch-size", "4", "--score-thresh", str(SCORE_THRESH), "--metrics", "coco", "lrp",
               "--out", str(out), "--device", "cpu"])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text()), out / "predictions.json"


def test_the_data_exercises_crowd_classes_and_areas(coco_data, cli_run, tmp_path):
    """The fixture is not trivial: pycocotools' numbers move if crowd regions applied to every
    class or if areas were box areas."""
    ref, _ = pycocotools_eval(coco_data.gt_path, cli_run[1])
    preds = json.loads(cli_run[1].read_text())
    assert len(preds) > 500 and ref["AP"] > 0.3
    every_class = json.loads(json.dumps(coco_data.gt))
    anns = [a for a in every_class["annotations"] if not a["iscrowd"]]
    for a in (a for a in every_class["annotations"] if a["iscrowd"]):
        anns += [{**a, "category_id": c} for c in range(1, 5)]
    every_class["annotations"] = [{**a, "id": i + 1} for i, a in enumerate(anns)]
    box_areas = json.loads(json.dumps(coco_data.gt))
    for a in box_areas["annotations"]:
        a["area"] = a["bbox"][2] * a["bbox"][3]
    for name, variant in (("every_class", every_class), ("box_areas", box_areas)):
        (tmp_path / f"{name}.json").write_text(json.dumps(variant))
    crowd_all, _ = pycocotools_eval(tmp_path / "every_class.json", cli_run[1])
    boxes, _ = pycocotools_eval(tmp_path / "box_areas.json", cli_run[1])
    assert abs(crowd_all["AP"] - ref["AP"]) > 1e-4
    assert max(abs(boxes[k] - ref[k]) for k in ("APs", "APm", "APl")) > 1e-3


def test_eval_cli_matches_pycocotools(coco_data, cli_run):
    metrics, predictions = cli_run
    ref, precision = pycocotools_eval(coco_data.gt_path, predictions)
    assert_stats(metrics["coco"], ref)
    assert metrics["images"] == 10
    p = precision[:, :, :, 0, 2]  # per category (ids 1..4 = names in order), all areas, 100 dets
    for k, name in enumerate(coco_data.names):
        v = p[:, :, k]
        v = v[v > -1]
        assert metrics["per_class_AP"][name] == pytest.approx(v.mean() if v.size else np.nan, abs=1e-9, nan_ok=True)
    for t, key in enumerate(f"{x:.2f}" for x in np.linspace(0.5, 0.95, 10)):
        v = precision[t, :, :, 0, 2]
        assert metrics["AP_per_IoU"][key] == pytest.approx(v[v > -1].mean(), abs=1e-9)


def test_train_time_validation_matches_pycocotools(coco_data, cli_run, tmp_path):
    """The trainer's validation (its part, built directly) on the same folder and batch size."""
    model, _ = model_from_checkpoint(WEIGHTS)
    model.postprocess.score_thresh = SCORE_THRESH
    val_set = build_dataset(str(coco_data.root), "val", transform=EvalTransform(SIZE))
    trainer = Validation(model=model, ema=None, val_set=val_set, val_loader=build_loader(val_set, 4, train=False),
                         device=torch.device("cpu"))
    stats = trainer.evaluate()
    results = tmp_path / "val_results.json"
    results.write_text(json.dumps(trainer.last_evaluation.results))
    assert_stats(stats, pycocotools_eval(coco_data.gt_path, results)[0])
    # one truth: the same detections and numbers as python -m minidet.eval
    assert trainer.last_evaluation.results == json.loads(cli_run[1].read_text())
    assert_stats(stats, cli_run[0]["coco"])


def test_result_files_match_pycocotools(coco_data, cli_run, tmp_path):
    ref, _ = pycocotools_eval(coco_data.gt_path, cli_run[1])
    for backend in ("minidet", "pycocotools"):
        out = tmp_path / backend
        assert main(["--gt", str(coco_data.gt_path), "--results", str(cli_run[1]), "--backend", backend,
                     "--out", str(out)]) == 0
        assert_stats(json.loads((out / "metrics.json").read_text())["coco"], ref)


def test_in_memory_evaluator_with_ignore_labels_and_areas(coco_data, cli_run):
    """COCOEvaluator fed from the JSON files themselves (xyxy boxes, areas, labelled crowds)."""
    gt, preds = coco_data.gt, json.loads(cli_run[1].read_text())
    ev = COCOEvaluator(4, coco_data.names)
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        objs = [a for a in anns if not a["iscrowd"]]
        crowd = [a for a in anns if a["iscrowd"]]
        mine = [r for r in preds if r["image_id"] == image["id"]]
        target = {"boxes": np.array([_xyxy(a["bbox"]) for a in objs]).reshape(-1, 4),
                  "labels": [a["category_id"] - 1 for a in objs], "areas": [a["area"] for a in objs],
                  "ignore_boxes": np.array([_xyxy(a["bbox"]) for a in crowd]).reshape(-1, 4),
                  "ignore_labels": [a["category_id"] - 1 for a in crowd]}
        pred = {"boxes": np.array([_xyxy(r["bbox"]) for r in mine]).reshape(-1, 4),
                "scores": [r["score"] for r in mine], "labels": [r["category_id"] - 1 for r in mine]}
        ev.update([pred], [target])
    assert_stats(ev.compute(), pycocotools_eval(coco_data.gt_path, cli_run[1])[0])


def test_unknown_image_id_is_a_clear_error_for_every_backend(coco_data, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 12345, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.5}]))
    for backend in ("minidet", "pycocotools"):
        assert main(["--gt", str(coco_data.gt_path), "--results", str(bad), "--backend", backend,
                     "--out", str(tmp_path)]) == 2
        assert "entry 0: image_id 12345 is not in the ground truth" in capsys.readouterr().err


# ------------------------------------------------------------- models with set detections


def stub_checkpoint(tmp_path: Path, monkeypatch, class_names: list[str], dets_by_size: dict) -> Path:
    """A checkpoint whose model "detects" dets_by_size[(h, w)] = (xyxy boxes, scores, labels) in
    original pixels on an image of that size (the test images have distinct sizes)."""
    model = build_model("retinanet", len(class_names))
    path = tmp_path / "stub.pt"
    save_checkpoint({"model": model.state_dict(), "config": model.config, "class_names": class_names,
                     "img_size": 64}, path)

    def predict(self, images, image_sizes=None, scales=None, orig_sizes=None):
        out = []
        for hw in orig_sizes:
            boxes, scores, labels = dets_by_size[tuple(hw)]
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.tensor(scores, dtype=torch.float32),
                        "labels": torch.tensor(labels, dtype=torch.int64)})
        return out

    monkeypatch.setattr(type(model), "predict", predict)
    return path


def test_crowd_of_one_class_does_not_hide_false_positives_of_another(tmp_path, monkeypatch):
    """The issue's example: a "car" false positive inside a "person" crowd region is a false
    positive (pycocotools: person AP 1, car AP 0.5 -> 0.750; minidet gave 1.000)."""
    root = tmp_path / "coco"
    write_rgb(root / "val" / "0.png", np.full((100, 100, 3), 128, np.uint8))
    gt = {"images": [{"id": 7, "file_name": "0.png", "width": 100, "height": 100}],
          "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
          "annotations": [
              {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
              {"id": 2, "image_id": 7, "category_id": 1, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 1},
              {"id": 3, "image_id": 7, "category_id": 2, "bbox": [10, 60, 20, 20], "area": 400, "iscrowd": 0}]}
    (root / "annotations").mkdir(parents=True)
    gt_path = root / "annotations" / "instances_val.json"
    gt_path.write_text(json.dumps(gt))
    results = [{"image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.875},
               {"image_id": 7, "category_id": 2, "bbox": [55, 55, 20, 20], "score": 0.9375},  # inside the crowd
               {"image_id": 7, "category_id": 2, "bbox": [10, 60, 20, 20], "score": 0.75}]
    (tmp_path / "res.json").write_text(json.dumps(results))
    ref, _ = pycocotools_eval(gt_path, tmp_path / "res.json")
    assert ref["AP"] == pytest.approx(0.75, abs=1e-12)
    assert coco_evaluate(gt_path, tmp_path / "res.json")["AP"] == pytest.approx(0.75, abs=1e-12)

    boxes = [_xyxy(r["bbox"]) for r in results]
    scores, labels = [r["score"] for r in results], [r["category_id"] - 1 for r in results]
    dataset = read_coco(gt_path, root / "val")
    dets = [(7, np.array(boxes, np.float64), np.array(scores), np.array(labels))]
    assert evaluate_detections(dataset, dets).stats["AP"] == pytest.approx(0.75, abs=1e-12)

    ckpt = stub_checkpoint(tmp_path, monkeypatch, ["person", "car"], {(100, 100): (boxes, scores, labels)})
    assert main(["--weights", str(ckpt), "--data", str(root), "--format", "coco", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["coco"]["AP"] == pytest.approx(0.75, abs=1e-12)

    target = {"boxes": [[10, 10, 30, 30], [10, 60, 30, 80]], "labels": [0, 1], "ignore_boxes": [[50, 50, 90, 90]]}
    pred = {"boxes": boxes, "scores": scores, "labels": labels}
    ev = COCOEvaluator(2)
    ev.update([pred], [{**target, "ignore_labels": [0]}])
    assert ev.compute()["AP"] == pytest.approx(0.75, abs=1e-12)
    ev = COCOEvaluator(2)
    ev.update([pred], [target])  # an unlabelled ignore region applies to every class (documented)
    assert ev.compute()["AP"] == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------ VOC

# image stem -> (height, width), objects (name, xmin, ymin, xmax, ymax, difficult) as in the XML
VOC_IMAGES = {
    "a": ((64, 64), [("cat", 1, 1, 20, 20, 0), ("cat", 41, 41, 60, 60, 1), ("dog", 1, 41, 20, 60, 0)]),
    "b": ((64, 72), [("cat", 1, 1, 20, 20, 0), ("dog", 41, 1, 60, 20, 1)]),
    "c": ((64, 80), []),
}
# detections, continuous xyxy (the devkit detection [x1 + 1, y1 + 1, x2, y2]): (stem, class, box, score)
VOC_DETS = [
    ("a", "cat", [40, 40, 60, 60], 0.95),  # on the difficult cat: ignored
    ("a", "cat", [0, 0, 20, 20], 0.9),  # the cat: TP
    ("a", "cat", [1, 1, 20, 20], 0.8),  # the same cat again (IoU 0.9025): already matched -> FP
    ("b", "cat", [0, 0, 10, 20], 0.7),  # IoU exactly 200 / 400 = 0.5 with the cat: not > 0.5 -> FP
    ("b", "cat", [0, 0, 20, 19], 0.6),  # the cat (IoU 0.95): TP
    ("c", "cat", [0, 0, 20, 20], 0.5),  # no gts in the image: FP
    ("b", "dog", [40, 0, 60, 20], 0.95),  # on the difficult dog: ignored
    ("a", "dog", [0, 40, 20, 60], 0.9),  # the dog: TP
    ("b", "dog", [30, 30, 50, 50], 0.3),  # nothing there: FP
]
# cat: npos 2; by score ignored, TP, FP, FP, TP, FP: tp 0 1 1 1 2 2, fp 0 0 1 2 2 3
#   recall 0 .5 .5 .5 1 1, precision 0 1 1/2 1/3 1/2 2/5
#   all-point: envelope 1 up to recall .5, then 1/2 up to 1 -> .5 * 1 + .5 * .5 = 0.75
#   11-point: t = 0 ... .5 -> max precision 1 (6 points); t = .6 ... 1 -> 1/2 (5 points) -> 8.5 / 11
# dog: npos 1; ignored, TP, FP: recall 0 1 1, precision 0 1 1/2 -> 1.0 for both metrics
#   (dropping the difficult dog instead makes the 0.95 detection a FP first: AP 0.5)
VOC_EXPECTED = {"voc": {"cat": 0.75, "dog": 1.0}, "voc07": {"cat": 8.5 / 11, "dog": 1.0}}


def _write_voc(root: Path) -> None:
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for stem, ((h, w), objs) in VOC_IMAGES.items():
        write_rgb(root / "JPEGImages" / f"{stem}.jpg", np.full((h, w, 3), 100, np.uint8))
        body = "".join(f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}"
                       f"</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
                       f"</bndbox></object>" for n, x1, y1, x2, y2, d in objs)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{stem}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{body}</annotation>")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(VOC_IMAGES) + "\n")
    (root / "voc.yaml").write_text("format: voc\nroot: .\nval: val\nnames: [cat, dog]\n")


def devkit_voc_eval(annotations: Path, stems: list[str], dets: list, classname: str, use_07_metric: bool) -> float:
    """The devkit's per-class loop (py-faster-rcnn's voc_eval port) on the XML files and
    devkit-convention detections (stem, score, xmin, ymin, xmax, ymax)."""
    recs = {}
    for s in stems:
        objs = ET.parse(annotations / f"{s}.xml").findall("object")
        recs[s] = [{"name": o.find("name").text, "difficult": int(o.find("difficult").text),
                    "bbox": [int(o.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]} for o in objs]
    class_recs, npos = {}, 0
    for s in stems:
        r = [o for o in recs[s] if o["name"] == classname]
        difficult = np.array([o["difficult"] for o in r]).astype(bool)
        npos += int((~difficult).sum())
        class_recs[s] = {"bbox": np.array([o["bbox"] for o in r], float).reshape(-1, 4), "difficult": difficult,
                         "det": [False] * len(r)}
    image_ids = [d[0] for d in dets]
    confidence = np.array([d[1] for d in dets])
    bb_all = np.array([d[2:] for d in dets], float).reshape(-1, 4)
    order = np.argsort(-confidence)
    bb_all, image_ids = bb_all[order], [image_ids[i] for i in order]
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for d in range(len(dets)):
        R, bb, ovmax = class_recs[image_ids[d]], bb_all[d], -np.inf
        BBGT = R["bbox"]
        if BBGT.size > 0:
            iw = np.maximum(np.minimum(BBGT[:, 2], bb[2]) - np.maximum(BBGT[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(BBGT[:, 3], bb[3]) - np.maximum(BBGT[:, 1], bb[1]) + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        if ovmax > 0.5:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d], R["det"][jmax] = 1.0, True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        return float(sum((np.max(prec[rec >= t]) if np.sum(rec >= t) else 0.0) / 11.0 for t in np.arange(0.0, 1.1, 0.1)))
    mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def test_voc_metrics_on_xml_files_follow_the_devkit(tmp_path, monkeypatch):
    root = tmp_path / "voc"
    _write_voc(root)
    names = ["cat", "dog"]
    by_size = {}
    for stem, (hw, _) in VOC_IMAGES.items():
        mine = [d for d in VOC_DETS if d[0] == stem]
        by_size[hw] = ([d[2] for d in mine], [d[3] for d in mine], [names.index(d[1]) for d in mine])
    ckpt = stub_checkpoint(tmp_path, monkeypatch, names, by_size)
    out = tmp_path / "out"
    assert main(["--weights", str(ckpt), "--data", str(root / "voc.yaml"), "--metrics", "voc07", "voc",
                 "--out", str(out), "--batch-size", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for metric, expected in VOC_EXPECTED.items():
        for name, ap in expected.items():
            dets = [(s, score, x1 + 1, y1 + 1, x2, y2) for s, n, (x1, y1, x2, y2), score in VOC_DETS if n == name]
            devkit = devkit_voc_eval(root / "Annotations", list(VOC_IMAGES), dets, name, metric == "voc07")
            assert devkit == pytest.approx(ap, abs=1e-12), (metric, name)
            assert metrics[metric]["AP"][name] == pytest.approx(ap, abs=1e-12), (metric, name)
        assert metrics[metric]["mAP"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)

    # the COCO numbers on VOC data: pycocotools with the difficult objects as crowd regions of
    # their class, boxes x = xmin - 1, width = xmax - xmin + 1, written here from the XML values;
    # category ids of VOC / YOLO data are the label indices (0, 1, ...) in predictions.json
    images = [{"id": s, "file_name": f"{s}.jpg", "width": w, "height": h} for s, ((h, w), _) in VOC_IMAGES.items()]
    anns = [{"id": 0, "image_id": s, "category_id": names.index(n), "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1],
             "area": (x2 - x1 + 1) * (y2 - y1 + 1), "iscrowd": d}
            for s, (_, objs) in VOC_IMAGES.items() for n, x1, y1, x2, y2, d in objs]
    gt = {"images": images, "annotations": [{**a, "id": i + 1} for i, a in enumerate(anns)],
          "categories": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert_stats(metrics["coco"], pycocotools_eval(tmp_path / "gt.json", out / "predictions.json")[0])
