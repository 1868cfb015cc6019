"""datasets/prepare_deepforest.py on a fake deepforest wheel written here: the tiling and the
box-cutting rules against hand-worked values, the split, and minidet's VOC reader on the output."""

import importlib.util
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from minidet.data import build_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "datasets" / "prepare_deepforest.py"
spec = importlib.util.spec_from_file_location("prepare_deepforest", SCRIPT)
prep = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = prep  # its dataclasses look their module up while being created
spec.loader.exec_module(prep)


def _xml(filename: str, width: int, height: int, objects: list[tuple[str, int, int, int, int]]) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                   f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def _png(width: int, height: int) -> bytes:
    image = (np.arange(width * height * 3) % 251).astype(np.uint8).reshape(height, width, 3)
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture
def wheel(tmp_path) -> Path:
    """A 10x6 image 'a' (three trees, 1-based VOC boxes), a 4x4 image 'b' (one 'Dead' tree), an
    image without XML and an unrelated file: the deepforest/data/ layout of the real wheel."""
    path = tmp_path / "deepforest-0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("deepforest/data/a.png", _png(10, 6))
        zf.writestr("deepforest/data/a.xml", _xml("a.tif", 10, 6, [("Tree", 2, 2, 4, 5), ("Tree", 4, 1, 9, 4),
                                                                   ("Tree", 6, 3, 10, 6)]))
        zf.writestr("deepforest/data/b.png", _png(4, 4))
        zf.writestr("deepforest/data/b.xml", _xml("b.png", 4, 4, [("Dead", 1, 1, 4, 4)]))
        zf.writestr("deepforest/data/unlabelled.png", _png(5, 5))
        zf.writestr("deepforest/data/example.csv", "image_path,xmin\n")
        zf.writestr("deepforest-0.0.dist-info/licenses/LICENSE", "MIT License\n")
    return path


def test_tile_origins_cover_the_axis_evenly():
    assert prep.tile_origins(400, 400) == [0]
    assert prep.tile_origins(300, 400) == [0]  # smaller than a tile: one tile, the whole axis
    assert prep.tile_origins(10, 6) == [0, 4]
    assert prep.tile_origins(1035, 400) == [0, 318, 635]  # (1035 - 400) / 2 = 317.5 between origins
    assert prep.tile_origins(1249, 400) == [0, 283, 566, 849]


def test_cut_boxes_keeps_the_inside_part_with_its_visible_fraction():
    boxes = np.array([[1, 1, 4, 5], [3, 0, 9, 4], [5, 2, 10, 6]], float)  # continuous xyxy
    clipped, visible = prep.cut_boxes(boxes, 0, 0, 6, 6)
    np.testing.assert_allclose(clipped, [[1, 1, 4, 5], [3, 0, 6, 4], [5, 2, 6, 6]])
    np.testing.assert_allclose(visible, [1.0, 12 / 24, 4 / 20])
    clipped, visible = prep.cut_boxes(boxes, 4, 0, 6, 6)  # box 0 ends at x = 4: no overlap, left out
    np.testing.assert_allclose(clipped, [[0, 0, 5, 4], [1, 2, 6, 6]])
    np.testing.assert_allclose(visible, [20 / 24, 1.0])


def test_prepare_writes_a_voc_dataset_minidet_reads(wheel, tmp_path, capsys):
    out = tmp_path / "out"
    assert prep.main([str(wheel), "--out", str(out), "--tile", "6", "--val", "b"]) == 0
    printed = capsys.readouterr().out
    assert "train: 2 images, 4 boxes + 1 difficult" in printed and "val: 1 images, 1 boxes + 0 difficult" in printed
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == [
        "a_x0000_y0000.png", "a_x0004_y0000.png", "b_x0000_y0000.png"]
    assert (out / "ImageSets" / "Main" / "train.txt").read_text().split() == ["a_x0000_y0000", "a_x0004_y0000"]
    assert (out / "ImageSets" / "Main" / "val.txt").read_text().split() == ["b_x0000_y0000"]
    assert (out / "LICENSE-deepforest.txt").read_text() == "MIT License\n"
    right = cv2.imread(str(out / "JPEGImages" / "a_x0004_y0000.png"))
    source = cv2.imdecode(np.frombuffer(_png(10, 6), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(right, source[:, 4:10])  # the pixels of x 4..9, lossless

    train = build_dataset(out, "train")  # the folder's dataset.yaml: no flags needed
    assert train.class_names == ["Tree"]
    first, second = train.records
    # tile x 0..6: box 0 whole, box 1 half inside (12 of 24 px^2: kept), box 2 a fifth inside (difficult)
    np.testing.assert_allclose(first.boxes, [[1, 1, 4, 5], [3, 0, 6, 4]])
    np.testing.assert_allclose(first.ignore_boxes, [[5, 2, 6, 6]])
    # tile x 4..10: box 1 with 20 of 24 px^2 inside, box 2 whole
    np.testing.assert_allclose(second.boxes, [[0, 0, 5, 4], [1, 2, 6, 6]])
    assert len(second.ignore_boxes) == 0
    val = build_dataset(out, "val")
    np.testing.assert_allclose(val.records[0].boxes, [[0, 0, 4, 4]])  # 'Dead' became a Tree
    assert val[0]["image"].shape == (4, 4, 3)

    assert prep.main([str(wheel), "--out", str(out), "--tile", "6", "--val", "b"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert prep.main([str(wheel), "--out", str(out), "--overwrite", "--min-visible", "0.9", "--tile", "6",
                      "--val", "b"]) == 0
    # 0.5 and 20/24 are under 0.9 now: two more difficult boxes
    assert "train: 2 images, 2 boxes + 3 difficult" in capsys.readouterr().out


def test_clear_errors(wheel, tmp_path, capsys):
    assert prep.main([str(wheel), "--out", str(tmp_path / "o"), "--val", "nope"]) == 2
    assert "--val nope: not an annotated image" in capsys.readouterr().err
    assert prep.main([str(tmp_path / "missing.whl"), "--out", str(tmp_path / "o")]) == 2
    assert "wheel not found" in capsys.readouterr().err
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    assert prep.main([str(tmp_path / "bad.whl"), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable wheel" in capsys.readouterr().err
