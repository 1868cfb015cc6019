"""EXIF orientation: images are used as displayed (orientation applied) in sizes, pixels and
annotations of every format, and in the demo. The EXIF-rotated JPEGs are written with PIL and
the expected displayed image is PIL's own ``ImageOps.exif_transpose`` of the file (the reference),
never minidet's reading of it."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from minidet.data import build_dataset, read_coco, read_voc, read_yolo
from minidet.data.image_io import DECODE_FLAGS, image_size, read_rgb

# displayed image: 64 wide, 40 high (non-square, so a width/height mix-up shows); a red marker at
# displayed pixels x 40..56, y 8..20 and a blue one at the top left, so a flip shows too
DW, DH = 64, 40
MARKER = (40, 8, 56, 20)  # x1, y1, x2, y2 in displayed pixels (continuous, exclusive end)


def displayed_image() -> np.ndarray:
    img = np.full((DH, DW, 3), 90, np.uint8)
    x1, y1, x2, y2 = MARKER
    img[y1:y2, x1:x2] = (230, 20, 20)
    img[2:10, 2:12] = (20, 20, 230)
    return img


# how to store the displayed image so that a viewer applying orientation o shows it upright
# (orientation 6: the viewer turns the stored image 90 degrees clockwise; 8: counter-clockwise)
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse (its own inverse)
    8: lambda a: np.rot90(a, -1),
}


def write_exif_jpeg(path, orientation: int) -> np.ndarray:
    """Write the displayed image as a JPEG stored for ``orientation``; -> the displayed image as
    PIL's exif_transpose (the reference) produces it from the file."""
    stored = np.ascontiguousarray(STORED[orientation](displayed_image()))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def assert_marker(image: np.ndarray, box) -> None:
    """The box lies on the red marker: red inside, and the marker is where the box says."""
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    inside = image[y1 + 1:y2 - 1, x1 + 1:x2 - 1].reshape(-1, 3).mean(0)
    assert inside[0] > 180 and inside[1] < 70 and inside[2] < 70, inside
    red = (image[..., 0] > 150) & (image[..., 1] < 100) & (image[..., 2] < 100)
    ys, xs = np.nonzero(red)
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1 and abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_pixels_and_sizes_are_the_displayed_image(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    reference = write_exif_jpeg(path, orientation)
    assert reference.shape == (DH, DW, 3)  # the stored file really displays as intended
    assert np.abs(reference.astype(int) - displayed_image()).mean() < 4
    if orientation in (5, 6, 7, 8):
        with Image.open(path) as im:
            assert im.size == (DH, DW)  # stored sideways: a header read without orientation is wrong
    assert image_size(path) == (DW, DH)
    pixels = read_rgb(path)
    assert pixels.shape == (DH, DW, 3)
    assert np.abs(pixels.astype(int) - reference).mean() < 2  # OpenCV and PIL decode the same JPEG
    assert_marker(pixels, MARKER)


def test_decoding_applies_the_orientation_explicitly():
    assert not DECODE_FLAGS & cv2.IMREAD_IGNORE_ORIENTATION
    assert DECODE_FLAGS == cv2.IMREAD_COLOR


@pytest.mark.parametrize("orientation", [6, 8])
def test_coco_voc_yolo_boxes_fall_on_the_marker(tmp_path, orientation):
    x1, y1, x2, y2 = MARKER
    # COCO: width / height of the oriented image
    write_exif_jpeg(tmp_path / "coco" / "train" / "phone.jpg", orientation)
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "phone.jpg", "width": DW, "height": DH}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}],
        "categories": [{"id": 1, "name": "marker"}]}))
    # VOC: <size> of the oriented image (and one file without <size>: read from the header)
    voc = tmp_path / "voc"
    for stem in ("a", "b"):
        write_exif_jpeg(voc / "JPEGImages" / f"{stem}.jpg", orientation)
    size = f"<size><width>{DW}</width><height>{DH}</height><depth>3</depth></size>"
    (voc / "Annotations").mkdir()
    for stem, head in (("a", size), ("b", "")):
        (voc / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename>{head}<object><name>marker</name><difficult>0</difficult>"
            f"<bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
            f"</object></annotation>")
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    # YOLO: normalised to the oriented image
    yolo = tmp_path / "yolo"
    write_exif_jpeg(yolo / "images" / "train" / "phone.jpg", orientation)
    (yolo / "labels" / "train").mkdir(parents=True)
    (yolo / "labels" / "train" / "phone.txt").write_text(
        f"0 {(x1 + x2) / 2 / DW} {(y1 + y2) / 2 / DH} {(x2 - x1) / DW} {(y2 - y1) / DH}\n")

    datasets = [read_coco(tmp_path / "coco" / "annotations" / "instances_train.json", tmp_path / "coco" / "train"),
                read_voc(voc, "train", ["marker"]), read_yolo(yolo / "images" / "train", ["marker"]),
                build_dataset(tmp_path / "coco", "train", fmt="coco")]
    for ds in datasets:
        for i, record in enumerate(ds.records):
            assert (record.width, record.height) == (DW, DH)
            np.testing.assert_allclose(record.boxes, [MARKER], atol=1e-4)
            item = ds[i]  # strict: a size mismatch would raise here
            assert item["image"].shape == (DH, DW, 3)
            assert_marker(item["image"], item["boxes"][0])


def test_demo_draws_on_the_upright_photo(tmp_path):
    from minidet.demo import main

    write_exif_jpeg(tmp_path / "phone.jpg", 6)
    assert main(["--source", str(tmp_path / "phone.jpg"), "--out", str(tmp_path / "out"), "--save-txt",
                 "--draw-size", "0"]) == 0
    drawn = read_rgb(tmp_path / "out" / "phone.png")
    assert drawn.shape == (DH, DW, 3)
