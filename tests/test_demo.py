"""The demo on every source kind, the Python API, the shipped weights' documented AP, and
clear messages for broken inputs."""

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

import minidet
from minidet.data import ShapesDataset
from minidet.data.image_io import write_rgb
from minidet.demo import main
from minidet.eval import main as eval_main
from minidet.visualize import draw_detections, drawing_scale

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def test_demo_on_shapes_with_json_and_txt(tmp_path, capsys):
    assert main(["--source", "shapes", "--num", "3", "--out", str(tmp_path), "--save-json", "--save-txt"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["shapes_000.png", "shapes_001.png", "shapes_002.png"]
    dets = json.loads((tmp_path / "detections.json").read_text())
    assert dets and {"image_id", "category_id", "bbox", "score"} <= dets[0].keys()
    assert len(list((tmp_path / "labels").glob("*.txt"))) == 3
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"shapes_000: \d+ detections \(.*\) in [\d.]+ ms", lines[0])


def test_demo_on_an_image_and_a_folder(tmp_path):
    images = tmp_path / "in"
    ds = ShapesDataset(2, (100, 150), seed=5)
    for i in range(2):
        write_rgb(images / f"img{i}.jpg", ds.load(i)["image"])
    assert main(["--source", str(images / "img0.jpg"), "--out", str(tmp_path / "one")]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["img0.png"]
    assert main(["--source", str(images), "--out", str(tmp_path / "all")]) == 0
    out = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert out == ["img0.png", "img1.png"]
    # drawn readable: the 100 px short side enlarged to 512, the aspect ratio kept
    assert cv2.imread(str(tmp_path / "all" / "img1.png")).shape == (512, 768, 3)
    assert main(["--source", str(images / "img1.jpg"), "--out", str(tmp_path / "orig"), "--draw-size", "0"]) == 0
    assert cv2.imread(str(tmp_path / "orig" / "img1.png")).shape == (100, 150, 3)


def test_demo_on_a_video(tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (128, 128))
    ds = ShapesDataset(4, 128, seed=2)
    for i in range(4):
        writer.write(cv2.cvtColor(ds.load(i)["image"], cv2.COLOR_RGB2BGR))
    writer.release()
    assert main(["--source", str(video), "--out", str(tmp_path / "out")]) == 0
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 4


def test_default_threshold_is_for_viewing(tmp_path):
    """--conf 0.5 by default: no box under it in the saved detections; a lower --conf adds boxes."""
    assert main(["--num", "4", "--out", str(tmp_path / "a"), "--save-json"]) == 0
    default = json.loads((tmp_path / "a" / "detections.json").read_text())
    assert default and min(d["score"] for d in default) >= 0.5
    assert main(["--num", "4", "--out", str(tmp_path / "b"), "--save-json", "--conf", "0.3"]) == 0
    low = json.loads((tmp_path / "b" / "detections.json").read_text())
    assert len(low) > len(default) and min(d["score"] for d in low) < 0.5


@pytest.mark.parametrize(("h", "w", "factor"), [(128, 128, 4.0), (100, 150, 5.12), (600, 800, 1.0),
                                                (20, 2000, 2.048), (5000, 8192, 0.5)])
def test_drawing_scale_rule(h, w, factor):
    """Short side enlarged to 512, long side capped at 4096; mid-sized images keep their size."""
    assert drawing_scale(h, w) == pytest.approx(factor)


def test_drawing_keeps_labels_inside_and_boxes_in_place():
    image = np.full((64, 96, 3), 128, np.uint8)
    boxes = np.array([[0.0, 0.0, 96.0, 64.0], [80.0, 50.0, 96.0, 64.0]])  # corner-to-corner, bottom-right
    drawn = draw_detections(image, boxes, np.array([0.9, 0.6]), np.array([0, 1]), ["a", "b"], min_side=512)
    assert drawn.shape == (512, 768, 3)
    assert (drawn[:, :40] != 128).any(axis=2).any() and (drawn[-40:, -40:] != 128).any()
    same = draw_detections(image, boxes, np.array([0.9, 0.6]), np.array([0, 1]), ["a", "b"])
    assert same.shape == image.shape  # the validation mosaics' call: the image's own size


def test_help_lists_defaults(capsys):
    """demo, eval and export say every option's default in --help (the demo's threshold: 0.5)."""
    from minidet.export import main as export_main

    texts = {}
    for entry, flags in [(main, ["--conf", "--draw-size", "--num", "--out", "--device"]),
                         (eval_main, ["--split", "--batch-size", "--out"]),
                         (export_main, ["--format", "--out"])]:
        with pytest.raises(SystemExit):
            entry(["--help"])
        # one entry per option: the help's lines from "  --flag" to the next option
        options = {block.split()[0]: " ".join(block.split())
                   for block in re.split(r"\n  (?=-)", capsys.readouterr().out)[1:]}
        texts[entry.__module__] = options
        for flag in flags:
            assert "(default: " in options[flag], (entry.__module__, options[flag])
    assert options["--format"].endswith("(default: torchscript)")
    assert texts["minidet.demo"]["--conf"].endswith("(default: 0.5)")
    assert texts["minidet.demo"]["--draw-size"].endswith("(default: 512)")


def test_python_api_returns_original_pixels():
    image = ShapesDataset(1, (180, 240), seed=7).load(0)["image"]
    predictor = minidet.load()
    det = predictor.predict(image)
    assert det["boxes"].shape[1] == 4 and len(det["names"]) == len(det["scores"])
    assert (det["boxes"][:, 2] <= 240).all() and (det["boxes"][:, 3] <= 180).all()
    assert set(det["names"]) <= {"circle", "square", "triangle", "star"}
    with pytest.raises(ValueError, match="uint8 RGB image"):
        predictor.predict(np.zeros((10, 10), np.uint8))


def test_broken_inputs_give_clear_messages(tmp_path, capsys):
    assert main(["--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    assert main(["--weights", str(tmp_path / "bad.pt"), "--out", str(tmp_path)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert main(["--source", str(tmp_path / "broken.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot decode image" in capsys.readouterr().err
    assert main(["--source", str(tmp_path / "nothing_here"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["--show", "--num", "1", "--out", str(tmp_path / "o")]) == 2
    assert "no GUI support" in capsys.readouterr().err


def _documented():
    """{file: (AP, AP50)} from the table in weights/README.md."""
    rows = {}
    for line in (WEIGHTS / "README.md").read_text().splitlines():
        m = re.match(r"\| `(\w+\.pt)` \|.*\| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return rows


@pytest.mark.parametrize("name", sorted(p.name for p in WEIGHTS.glob("*.pt")))
def test_shipped_weights_reach_their_documented_ap(name, tmp_path):
    documented = _documented()
    assert name in documented, f"{name} is not in the weights/README.md table"
    assert eval_main(["--weights", str(WEIGHTS / name), "--out", str(tmp_path)]) == 0
    stats = json.loads((tmp_path / "metrics.json").read_text())["coco"]
    ap, ap50 = documented[name]
    assert abs(stats["AP"] - ap) <= 0.02 and abs(stats["AP50"] - ap50) <= 0.02
