"""Every bad-data case: the message names the file (and line / annotation) and the fix;
strict mode stops, lenient mode skips and counts."""

import json
import math

import numpy as np
import pytest

from minidet.data import DataError, DataReport, read_coco, read_voc, read_yolo
from minidet.data.check import main as check_main
from minidet.data.image_io import write_rgb

W, H = 40, 30


def _coco(tmp_path, anns, images=None, categories=None, raw=None):
    img_dir = tmp_path / "images"
    for name in ("a.png", "b.png"):
        write_rgb(img_dir / name, np.zeros((H, W, 3), np.uint8))
    images = images or [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                        {"id": 2, "file_name": "b.png", "width": W, "height": H}]
    categories = categories or [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]
    path = tmp_path / "instances.json"
    path.write_text(raw if raw is not None else json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path, img_dir


def _ann(aid, bbox, cat=7, image=1, **kw):
    return {"id": aid, "image_id": image, "category_id": cat, "bbox": bbox, **kw}


def _both(fn):
    """Run a reader strictly (expecting DataError) and leniently (returning the dataset)."""
    with pytest.raises(DataError) as err:
        fn(DataReport(strict=True))
    lenient = fn(DataReport(strict=False))
    return str(err.value), lenient


def test_valid_coco_with_crowd_and_an_image_without_boxes(tmp_path):
    path, img = _coco(tmp_path, [_ann(1, [1, 2, 10, 5]), _ann(2, [0, 0, 20, 20], cat=9, iscrowd=1)])
    ds = read_coco(path, img)
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [7, 9]
    assert ds.records[0].boxes.tolist() == [[1, 2, 11, 7]] and ds.records[0].labels.tolist() == [0]
    assert ds.records[0].ignore_boxes.tolist() == [[0, 0, 20, 20]]
    assert len(ds.records[1].boxes) == 0 and ds.report.total == 0  # no boxes: a valid negative


@pytest.mark.parametrize("bbox, kind, text", [
    ([5, 5, 0, 4], "degenerate", "has no area"),
    ([5, 5, -3, 4], "degenerate", "has no area"),
    ([50, 40, 5, 5], "outside", "entirely outside"),
    ([30, 5, 20, 5], "sticking out", "extends beyond"),
    ([math.nan, 5, 3, 3], "non-finite", "NaN or inf"),
])
def test_coco_bad_boxes(tmp_path, bbox, kind, text):
    path, img = _coco(tmp_path, [_ann(1, [1, 1, 5, 5]), _ann(42, bbox)])
    msg, ds = _both(lambda r: read_coco(path, img, r))
    assert "annotation id 42" in msg and "instances.json" in msg and text in msg and "--lenient" in msg
    assert ds.report.total == 1 and kind in next(iter(ds.report.counts))
    if kind == "sticking out":  # lenient mode clips it
        assert ds.records[0].boxes.tolist() == [[1, 1, 6, 6], [30, 5, 40, 10]]
    else:  # lenient mode drops the annotation, keeps the image and its good box
        assert ds.records[0].boxes.tolist() == [[1, 1, 6, 6]]


def test_coco_unknown_category_unknown_image_and_malformed_bbox(tmp_path):
    path, img = _coco(tmp_path, [_ann(5, [1, 1, 5, 5], cat=8)])
    msg, ds = _both(lambda r: read_coco(path, img, r))
    assert "annotation id 5" in msg and "category_id 8" in msg and "[7, 9]" in msg
    assert ds.report.counts["unknown category id"] == 1
    path, img = _coco(tmp_path, [_ann(6, [1, 1, 5, 5], image=99)])
    msg, _ = _both(lambda r: read_coco(path, img, r))
    assert "image_id 99" in msg
    path, img = _coco(tmp_path, [_ann(7, [1, 1, 5])])
    msg, _ = _both(lambda r: read_coco(path, img, r))
    assert "annotation id 7" in msg and "[x, y, width, height]" in msg


def test_coco_duplicated_image_ids(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": W, "height": H},
              {"id": 1, "file_name": "b.png", "width": W, "height": H}]
    path, img = _coco(tmp_path, [], images=images)
    msg, ds = _both(lambda r: read_coco(path, img, r))
    assert "image id 1 appears more than once" in msg and "a.png" in msg and "b.png" in msg
    assert len(ds) == 1 and ds.report.counts["duplicated image id"] == 1


def test_coco_malformed_json_and_wrong_shape(tmp_path):
    path, img = _coco(tmp_path, [], raw='{"images": [1, 2,')
    with pytest.raises(DataError, match=r"instances.json: not valid JSON \(line 1, column"):
        read_coco(path, img, DataReport(strict=False))  # unreadable files stop even a lenient run
    path, img = _coco(tmp_path, [], raw='[1, 2, 3]')
    with pytest.raises(DataError, match="expected a COCO instances file"):
        read_coco(path, img)


def test_missing_and_corrupt_image_files(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": W, "height": H},
              {"id": 2, "file_name": "gone.png", "width": W, "height": H},
              {"id": 3, "file_name": "broken.png", "width": W, "height": H}]
    path, img = _coco(tmp_path, [_ann(1, [1, 1, 5, 5], image=3)], images=images)
    (img / "broken.png").write_bytes(b"this is not a png")
    msg, ds = _both(lambda r: read_coco(path, img, r))
    assert "gone.png not found" in msg
    assert len(ds) == 2 and ds.report.counts["missing image file"] == 1
    # a corrupt file is found when it is read
    strict = read_coco(path, img, DataReport(strict=False))
    strict.report.strict = True
    with pytest.raises(DataError, match=r"cannot decode image .*broken.png .*replace or delete the file"):
        strict[1]
    item = ds[1]  # lenient: the next readable image takes its place
    assert item["path"].endswith("a.png") and ds.skipped_images == 1


def _voc(tmp_path, objects, xml=None):
    (tmp_path / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (tmp_path / "Annotations").mkdir(exist_ok=True)
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    write_rgb(tmp_path / "JPEGImages" / "x.png", np.zeros((H, W, 3), np.uint8))
    body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    (tmp_path / "Annotations" / "x.xml").write_text(
        xml if xml is not None else f"<annotation><filename>x.png</filename><size><width>{W}</width>"
        f"<height>{H}</height></size>{body}</annotation>")
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("x\n")


def test_voc_valid_difficult_and_unknown_class(tmp_path):
    _voc(tmp_path, [("cat", (2, 3, 10, 12), 0), ("dog", (5, 5, 20, 20), 1)])
    ds = read_voc(tmp_path, "train", ["cat", "dog"])
    assert ds.records[0].boxes.tolist() == [[1, 2, 10, 12]] and ds.records[0].ignore_boxes.tolist() == [[4, 4, 20, 20]]
    _voc(tmp_path, [("cat", (2, 3, 10, 12), 0), ("cow", (5, 5, 20, 20), 0)])
    msg, ds = _both(lambda r: read_voc(tmp_path, "train", ["cat", "dog"], r))
    assert "x.xml: object 1 has class 'cow'" in msg and "names" in msg
    assert ds.records[0].labels.tolist() == [0]


def test_voc_malformed_xml(tmp_path):
    _voc(tmp_path, [], xml="<annotation><size>\n<width>4</width></annotation>")
    msg, ds = _both(lambda r: read_voc(tmp_path, "train", ["cat"], r))
    assert "x.xml: not valid XML (line 2" in msg and len(ds) == 0


def _yolo(tmp_path, text):
    write_rgb(tmp_path / "images" / "train" / "p.png", np.zeros((H, W, 3), np.uint8))
    write_rgb(tmp_path / "images" / "train" / "q.png", np.zeros((H, W, 3), np.uint8))  # no label file
    (tmp_path / "labels" / "train").mkdir(parents=True, exist_ok=True)
    (tmp_path / "labels" / "train" / "p.txt").write_text(text)
    return tmp_path / "images" / "train"


@pytest.mark.parametrize("line, text", [
    ("0 0.5 0.5 0.2", "p.txt:2: expected 'class cx cy w h'"),
    ("0 0.5 0.5 0.2 0.2 0.9", "p.txt:2: expected 'class cx cy w h'"),
    ("zero 0.5 0.5 0.2 0.2", "p.txt:2: expected 'class cx cy w h'"),
    ("3 0.5 0.5 0.2 0.2", "p.txt:2: class 3 is not an integer in 0..1"),
    ("1.5 0.5 0.5 0.2 0.2", "p.txt:2: class 1.5 is not an integer"),
    ("1 1.5 1.5 0.2 0.2", "entirely outside"),
    ("1 0.5 0.5 0 0.2", "has no area"),
])
def test_yolo_bad_lines(tmp_path, line, text):
    images = _yolo(tmp_path, f"0 0.5 0.5 0.25 0.5\n{line}\n")
    msg, ds = _both(lambda r: read_yolo(images, ["a", "b"], report=r))
    assert text in msg
    assert ds.records[0].boxes.tolist() == [[15, 7.5, 25, 22.5]] and len(ds.records[1].boxes) == 0
    assert ds.report.total == 1


def test_check_command_lists_problems(tmp_path, capsys):
    images = _yolo(tmp_path, "0 0.5 0.5 0.25 0.5\n7 0.5 0.5 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text("format: yolo\nroot: .\ntrain: images/train\nnames: [a, b]\n")
    assert images.is_dir()
    assert check_main([str(tmp_path / "data.yaml"), "--splits", "train"]) == 1
    out = capsys.readouterr().out
    assert "1 x unknown class index" in out and "p.txt:2" in out


def test_voc_flat_folder_of_pairs(tmp_path):
    write_rgb(tmp_path / "one.jpg", np.zeros((H, W, 3), np.uint8))
    (tmp_path / "one.xml").write_text(
        f"<annotation><size><width>{W}</width><height>{H}</height></size><object><name>dog</name>"
        "<bndbox><xmin>3</xmin><ymin>4</ymin><xmax>9</xmax><ymax>10</ymax></bndbox></object></annotation>")
    (tmp_path / "orphan.xml").write_text("<annotation></annotation>")  # no image beside it
    msg, ds = _both(lambda r: read_voc(tmp_path, None, ["cat", "dog"], r))
    assert "orphan.xml: no image" in msg
    assert len(ds) == 1 and ds.records[0].boxes.tolist() == [[2, 3, 9, 10]] and ds.records[0].labels.tolist() == [1]
