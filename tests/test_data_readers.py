"""Readers round-trip the shapes dataset written in their format; shapes determinism;
dataset YAML and folder detection; the check command."""

import numpy as np
import pytest

from minidet.data import DataError, ShapesDataset, build_dataset, detect_format
from minidet.data.check import main as check_main
from minidet.data.shapes import main as shapes_main


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    for fmt in ("coco", "yolo", "voc"):
        shapes_main(["--out", str(root / fmt), "--format", fmt, "--num-images", "6", "--image-size", "96"])
    return root


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_reader_round_trips_shapes(written, fmt):
    for split in ("train", "val"):
        ref = ShapesDataset(6, 96, split=split)
        ds = build_dataset(written / fmt / "dataset.yaml", split)
        assert ds.class_names == ["circle", "square", "triangle", "star"]
        assert len(ds) == len(ref) == 6
        for i in range(6):
            a, b = ds.records[i], ref.records[i]
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
            assert a.labels.tolist() == b.labels.tolist()
        item = ds[2]
        assert item["image"].dtype == np.uint8 and item["image"].shape == (96, 96, 3)
        assert np.array_equal(item["image"], ref[2]["image"])  # PNG is lossless
        assert item["boxes"].dtype == np.float32 and item["labels"].dtype == np.int64


def test_folder_detection_and_format_errors(written, tmp_path):
    assert detect_format(written / "voc") == "voc"
    assert len(build_dataset(written / "yolo", "val")) == 6  # a folder with its dataset.yaml
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="cannot tell the format"):
        build_dataset(tmp_path / "junk", "train")
    with pytest.raises(DataError, match="dataset YAML not found"):
        build_dataset(tmp_path / "missing.yaml", "train")
    (tmp_path / "bad.yaml").write_text("format: pascal\n")
    with pytest.raises(DataError, match="needs a 'format' key"):
        build_dataset(tmp_path / "bad.yaml", "train")
    with pytest.raises(DataError, match="no 'test' split"):
        build_dataset(written / "coco" / "dataset.yaml", "test")


def test_coco_category_mapping_is_kept(written):
    ds = build_dataset(written / "coco" / "dataset.yaml", "val")
    assert ds.category_ids == [1, 2, 3, 4]  # label k <-> COCO category id k + 1


def test_shapes_is_deterministic_and_splits_differ():
    a, b = ShapesDataset(5, 64, seed=3), ShapesDataset(5, 64, seed=3)
    assert all(np.array_equal(a[i]["image"], b[i]["image"]) for i in range(5))
    assert not np.array_equal(a[0]["image"], ShapesDataset(5, 64, seed=4)[0]["image"])
    assert not np.array_equal(a[0]["image"], ShapesDataset(5, 64, seed=3, split="val")[0]["image"])
    ds = ShapesDataset(200, 128, seed=0)
    boxes = np.concatenate([r.boxes for r in ds.records])
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    assert (side < 16).sum() > 20  # small objects are common
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 128).all()
    assert set(np.concatenate([r.labels for r in ds.records]).tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="unknown shape classes"):
        ShapesDataset(2, classes=["hexagon"])


def test_shapes_boxes_enclose_the_drawn_shapes():
    ds = ShapesDataset(20, 128, seed=1, min_objects=1, max_objects=1)
    for i in range(20):
        item = ds[i]
        bg = ds._background(ds._rng(i + 10_000_019))
        changed = np.abs(item["image"].astype(int) - bg.astype(int)).max(-1) > 40
        ys, xs = np.nonzero(changed)
        x1, y1, x2, y2 = item["boxes"][0]
        # pixel p spans [p, p + 1); anti-aliased edges spill about one pixel beyond the geometry
        assert xs.min() > x1 - 2 and xs.max() < x2 + 1 and ys.min() > y1 - 2 and ys.max() < y2 + 1
        # and the box is tight: the drawn extent reaches within 2 px of every side
        assert xs.min() <= x1 + 2 and xs.max() >= x2 - 3 and ys.min() <= y1 + 2 and ys.max() >= y2 - 3


def test_check_command(written, capsys):
    assert check_main([str(written / "coco" / "dataset.yaml")]) == 0
    out = capsys.readouterr().out
    assert "[train] 6 images" in out and "boxes per class" in out and "no data problems found" in out
    assert check_main(["/no/such/dataset.yaml"]) == 2
