"""python -m minidet.eval: result files, a checkpoint on the shapes data, and bad inputs."""

import json

import pytest
from coco_random import random_coco

from minidet.engine.checkpoint import load_checkpoint, save_checkpoint
from minidet.eval import main
from minidet.evaluation import coco_evaluate
from minidet.models import build_model


def test_gt_and_results_files(tmp_path, capsys):
    gt, results = random_coco(3, n_images=15, n_cats=3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    rc = main(["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json"), "--metrics", "coco", "lrp",
               "--out", str(tmp_path / "out")])
    assert rc == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    ref = coco_evaluate(gt, results, backend="pycocotools")
    assert metrics["coco"]["AP"] == pytest.approx(ref["AP"], abs=1e-6)
    assert 0 <= metrics["lrp"]["oLRP"] <= 1
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in capsys.readouterr().out


def test_bad_results_file_exit_code(tmp_path, capsys):
    gt, results = random_coco(3, n_images=5, n_cats=2)
    results.append({"image_id": 12345, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.1})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    assert main(["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json"), "--out", str(tmp_path)]) == 2
    assert f"entry {len(results) - 1}: image_id 12345" in capsys.readouterr().err


@pytest.fixture
def checkpoint(tmp_path):
    model = build_model("retinanet", 4)
    path = tmp_path / "model.pt"
    save_checkpoint({"model": model.state_dict(), "config": model.config, "class_names": ["a", "b", "c", "d"],
                     "img_size": 96, "data": {"format": "shapes", "val": {"num_images": 6, "image_size": 96}}}, path)
    return path


def test_checkpoint_on_shapes(tmp_path, checkpoint, capsys):
    out = tmp_path / "eval"
    rc = main(["--weights", str(checkpoint), "--metrics", "coco", "voc", "lrp", "--score-thresh", "0.0",
               "--out", str(out), "--batch-size", "4"])
    assert rc == 0
    preds = json.loads((out / "predictions.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert preds and {"image_id", "category_id", "bbox", "score"} <= preds[0].keys()
    assert set(metrics) >= {"coco", "per_class_AP", "voc", "lrp"} and metrics["images"] == 6
    text = capsys.readouterr().out
    assert "AP@[.5:.95]" in text and "VOC mAP@0.5" in text


def test_broken_checkpoints(tmp_path, capsys):
    assert main(["--weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"definitely not a checkpoint")
    assert main(["--weights", str(tmp_path / "junk.pt"), "--out", str(tmp_path)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_atomic_save_keeps_the_old_file_on_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "config": {"name": "x"}, "v": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash while writing"):
        save_checkpoint({"model": {}, "config": {}, "v": Boom()}, path)
    assert load_checkpoint(path)["v"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
