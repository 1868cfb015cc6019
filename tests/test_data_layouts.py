"""Every documented --data form loads, through build_dataset and through python -m minidet.train:
a dataset YAML of each format, the standard COCO folder (instances_<split>.json + <split>/, also
with a year), the COCO folder minidet writes, a VOC devkit folder without a YAML, a YOLO folder
with an Ultralytics data.yaml (names as a list and as a dict; images/<split> and <split>/images).
The annotation files are written here by hand, in each format's reference layout."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from minidet.data import DataError, build_dataset, detect_format
from minidet.data.shapes import main as shapes_main
from minidet.train import main as train_main

W, H = 48, 40  # non-square images
NAMES = ["cat", "dog"]
# per image: one box (x1, y1, x2, y2 in pixels) and its label
BOXES = [((4, 6, 20, 30), 0), ((10, 2, 40, 22), 1), ((25, 10, 45, 38), 0), ((2, 2, 30, 30), 1)]
TRAIN_ARGS = ["--epochs", "1", "--img-size", "64", "--batch-size", "2", "--workers", "0", "--val-split", "none",
              "--quiet", "--warmup-iters", "1"]


def write_images(folder, stems, suffix=".jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    for k, stem in enumerate(stems):
        img = np.full((H, W, 3), 60 + 30 * k, np.uint8)
        (x1, y1, x2, y2), label = BOXES[k % len(BOXES)]
        img[y1:y2, x1:x2] = (200, 40, 40) if label == 0 else (40, 200, 40)
        Image.fromarray(img).save(folder / f"{stem}{suffix}")


def write_coco_json(path, stems, suffix=".jpg"):
    images, anns = [], []
    for k, stem in enumerate(stems):
        (x1, y1, x2, y2), label = BOXES[k % len(BOXES)]
        images.append({"id": k + 1, "file_name": f"{stem}{suffix}", "width": W, "height": H})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]}))


def write_voc(root, split_stems: dict):
    for split, stems in split_stems.items():
        write_images(root / "JPEGImages", stems)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        for k, stem in enumerate(stems):
            (x1, y1, x2, y2), label = BOXES[k % len(BOXES)]
            # VOC pixel indices are 1-based and inclusive
            (root / "Annotations" / f"{stem}.xml").write_text(
                f"<annotation><folder>VOC2007</folder><filename>{stem}.jpg</filename><size><width>{W}</width>"
                f"<height>{H}</height><depth>3</depth></size><object><name>{NAMES[label]}</name><pose>Left</pose>"
                f"<truncated>0</truncated><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
                f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>")
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))


def write_yolo_split(images_dir, labels_dir, stems):
    write_images(images_dir, stems)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for k, stem in enumerate(stems):
        (x1, y1, x2, y2), label = BOXES[k % len(BOXES)]
        (labels_dir / f"{stem}.txt").write_text(
            f"{label} {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} {(x2 - x1) / W:.6f} {(y2 - y1) / H:.6f}\n")


STEMS = {"train": [f"t{k}" for k in range(4)], "val": [f"v{k}" for k in range(2)]}


def expected_boxes(n):
    return [BOXES[k % len(BOXES)] for k in range(n)]


def assert_loads(data, split="train", names=NAMES, fmt=None, n=None):
    ds = build_dataset(data, split, fmt=fmt)
    n = n if n is not None else len(STEMS.get(split, STEMS["train"]))
    assert len(ds) == n and ds.class_names == names
    for record, (box, label) in zip(ds.records, expected_boxes(n), strict=True):
        np.testing.assert_allclose(record.boxes, [box], atol=1e-3)
        assert ds.class_names[int(record.labels[0])] == NAMES[label]
        assert (record.width, record.height) == (W, H)
    assert ds[0]["image"].shape == (H, W, 3)
    return ds


def assert_trains(data, tmp_path, *extra):
    out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    assert train_main([*TRAIN_ARGS, "--data", str(data), "--out", str(out), *extra]) == 0
    assert (out / "last.pt").is_file()


@pytest.fixture(scope="module")
def coco_standard(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_standard")
    for split, stems in STEMS.items():
        write_images(root / split, stems)
        write_coco_json(root / "annotations" / f"instances_{split}.json", stems)
    return root


def test_dataset_yaml_of_each_format(tmp_path):
    write_coco_json(tmp_path / "c" / "annotations" / "train.json", STEMS["train"])
    write_images(tmp_path / "c" / "pics", STEMS["train"])
    (tmp_path / "coco.yaml").write_text("format: coco\nroot: c\ntrain: {images: pics, annotations: annotations/train.json}\n")
    write_voc(tmp_path / "VOCdevkit" / "VOC2007", {"trainval": STEMS["train"]})
    (tmp_path / "voc.yaml").write_text("format: voc\nroot: VOCdevkit/VOC2007\ntrain: trainval\nnames: [cat, dog]\n")
    write_yolo_split(tmp_path / "y" / "images" / "train", tmp_path / "y" / "labels" / "train", STEMS["train"])
    (tmp_path / "yolo.yaml").write_text("format: yolo\nroot: y\ntrain: images/train\nnames: {0: cat, 1: dog}\n")
    for name in ("coco", "voc", "yolo"):
        assert_loads(tmp_path / f"{name}.yaml")
    assert_trains(tmp_path / "yolo.yaml", tmp_path)
    with pytest.raises(DataError, match=r"--format coco .*yolo.yaml.*yolo"):
        build_dataset(tmp_path / "yolo.yaml", "train", fmt="coco")


def test_coco_standard_folder(coco_standard, tmp_path):
    assert detect_format(coco_standard) == "coco"
    for split in ("train", "val"):
        assert_loads(coco_standard, split, fmt="coco")
        assert_loads(coco_standard, split)  # detected
    assert_trains(coco_standard, tmp_path, "--format", "coco", "--train-split", "train")


def test_coco_folder_with_years(tmp_path):
    for split, stems in STEMS.items():
        write_images(tmp_path / f"{split}2017", stems)
        write_coco_json(tmp_path / "annotations" / f"instances_{split}2017.json", stems)
    (tmp_path / "annotations" / "captions_train2017.json").write_text("{}")  # not an instances file
    for split in ("train2017", "train", "val2017", "val"):
        assert_loads(tmp_path, split, fmt="coco", n=len(STEMS[split[:-4] if split[-1].isdigit() else split]))
    with pytest.raises(DataError, match=r"no 'test' split .*splits found: .*train2017"):
        build_dataset(tmp_path, "test", fmt="coco")
    # the README's form, evaluating the val split at the end
    assert_trains(tmp_path, tmp_path, "--format", "coco", "--train-split", "train2017", "--val-split", "val2017")


def test_coco_folder_as_minidet_writes_it(tmp_path, capsys):
    out = tmp_path / "shapes_coco"
    shapes_main(["--out", str(out), "--format", "coco", "--num-images", "4", "--image-size", "64"])
    shapes = ["circle", "square", "triangle", "star"]
    # with its dataset.yaml, also when --format is given (and must agree)
    assert len(build_dataset(out, "train", fmt="coco")) == 4
    with pytest.raises(DataError, match=r"--format voc disagrees with .*dataset.yaml.*coco"):
        build_dataset(out, "train", fmt="voc")
    assert train_main([*TRAIN_ARGS, "--data", str(out), "--format", "yolo", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --format yolo disagrees with") and "coco" in err
    # and without it: the layout alone
    (out / "dataset.yaml").unlink()
    for split in ("train", "val"):
        ds = build_dataset(out, split, fmt="coco")
        assert len(ds) == 4 and ds.class_names == shapes
    assert_trains(out, tmp_path, "--format", "coco", "--train-split", "train")


def test_voc_devkit_folder_without_yaml(tmp_path, capsys):
    root = tmp_path / "VOC2007"
    write_voc(root, {"trainval": STEMS["train"], "test": STEMS["val"]})
    # a class seen only in the test split still belongs to the class list (the same for every split)
    (root / "Annotations" / "v1.xml").write_text((root / "Annotations" / "v1.xml").read_text().replace(
        "<name>dog</name>", "<name>bird</name>"))
    (root / "ImageSets" / "Main" / "cat_trainval.txt").write_text("t0  1\nt1 -1\n")  # per-class list: not a split
    names = ["bird", "cat", "dog"]
    assert detect_format(root) == "voc"
    ds = build_dataset(root, "trainval", fmt="voc")
    assert ds.class_names == names and len(ds) == 4
    assert [ds.class_names[r.labels[0]] for r in ds.records] == ["cat", "dog", "cat", "dog"]
    np.testing.assert_allclose(ds.records[0].boxes, [BOXES[0][0]])
    assert build_dataset(root, "test").class_names == names
    out = capsys.readouterr().out
    assert "['bird', 'cat', 'dog']" in out and "<name>" in out
    with pytest.raises(DataError, match=r"no 'train' split .*splits found: test, trainval"):
        build_dataset(root, "train", fmt="voc")
    assert_trains(root, tmp_path, "--format", "voc", "--train-split", "trainval")


@pytest.mark.parametrize("layout", ["images/split", "split/images"])
@pytest.mark.parametrize("names", ["[cat, dog]", "{0: cat, 1: dog}"])
def test_yolo_folder_with_ultralytics_data_yaml(tmp_path, layout, names):
    root = tmp_path / "yolo_dataset"
    for split, stems in STEMS.items():
        img, lab = (f"images/{split}", f"labels/{split}") if layout == "images/split" else (f"{split}/images",
                                                                                           f"{split}/labels")
        write_yolo_split(root / img, root / lab, stems)
    if layout == "images/split":  # Ultralytics' usual form: path relative to the YAML, splits relative to path
        (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\ntest:\nnames: {names}\nnc: 2\n")
    else:  # splits relative to the YAML's folder, no path key
        (root / "data.yaml").write_text(f"train: train/images\nval: val/images\nnames: {names}\n")
    assert detect_format(root) == "yolo"
    for split in ("train", "val"):
        assert_loads(root, split)
        assert_loads(root / "data.yaml", split)
        assert_loads(root, split, fmt="yolo")
    with pytest.raises(DataError, match=r"--format coco disagrees with .*data.yaml.*yolo"):
        build_dataset(root, "train", fmt="coco")
    if layout == "images/split" and names.startswith("{"):
        assert_trains(root, tmp_path)
    # names only (the splits from the layout)
    (root / "data.yaml").write_text(f"names: {names}\n")
    assert_loads(root, "val")


def test_ultralytics_yaml_mistakes_are_clear(tmp_path):
    write_yolo_split(tmp_path / "images" / "train", tmp_path / "labels" / "train", STEMS["train"])
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: [cat, dog]\nnc: 3\n")
    with pytest.raises(DataError, match="nc is 3 but 2 names"):
        build_dataset(tmp_path, "train")
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: {0: cat, 2: dog}\n")
    with pytest.raises(DataError, match=re.escape("class indices 0..1")):
        build_dataset(tmp_path, "train")
    (tmp_path / "data.yaml").write_text("train: images/nothing\nnames: [cat, dog]\n")
    with pytest.raises(DataError, match="images folder not found: .*images/nothing"):
        build_dataset(tmp_path / "data.yaml", "train")
