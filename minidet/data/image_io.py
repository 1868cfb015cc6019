"""Reading images from disk with clear errors, in their displayed orientation.

Orientation policy: every image is used as it is displayed, i.e. with its EXIF orientation tag
(0x0112, set by nearly every phone camera) applied, everywhere in minidet: pixels
(``read_rgb``), sizes read without decoding (``image_size``), and therefore annotations — COCO
``width`` / ``height``, YOLO's normalised boxes and VOC ``<size>`` / boxes are relative to the
oriented image, as in the tools people annotate with and train with (COCO tooling, ultralytics
``exif_size``, ``PIL.ImageOps.exif_transpose``). Pixels are decoded by OpenCV with
``cv2.IMREAD_COLOR`` *without* ``cv2.IMREAD_IGNORE_ORIENTATION``, which applies the tag
(JPEG, PNG eXIf, WebP, TIFF); sizes come from the file header via PIL with the same tag
applied (orientations 5-8 swap width and height). A camera's own rotation is therefore never
seen by the model, and an annotation tool that shows the photo upright agrees with minidet.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .problems import DataError

# OpenCV applies the EXIF orientation unless IMREAD_IGNORE_ORIENTATION is given: keep it that way
# (the displayed orientation is the policy, see the module docstring).
DECODE_FLAGS = cv2.IMREAD_COLOR
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # image files in a folder
ORIENTATION_TAG = 0x0112
SWAPS_SIDES = (5, 6, 7, 8)  # transpose, rotate 90 / 270, transverse: width and height exchange


def exif_orientation(im) -> int:
    """The EXIF orientation (1-8) of an opened PIL image, read from its header without decoding
    the pixels; 1 when there is none (or it is invalid). Only an EXIF tag counts (as for
    OpenCV's decoder), not an XMP-only ``tiff:Orientation``."""
    if not ("exif" in im.info or "Raw profile type exif" in im.info or hasattr(im, "tag_v2")):
        return 1
    try:
        value = int(im.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a malformed EXIF block means no usable orientation
        return 1
    return value if 1 <= value <= 8 else 1


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as displayed (EXIF orientation applied), from its
    header only; a DataError naming the file when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = exif_orientation(im)
    except Exception as err:  # noqa: BLE001 - any decoder failure is "unreadable"
        raise DataError(f"cannot read image {path} ({err}) — replace the file or run with --lenient") from None
    return (h, w) if orientation in SWAPS_SIDES else (w, h)


def decode_rgb(data: np.ndarray) -> np.ndarray | None:
    """Encoded image bytes (uint8 array) -> uint8 HxWx3 RGB in the displayed orientation, or None
    when OpenCV cannot decode them."""
    image = cv2.imdecode(data, DECODE_FLAGS) if data.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_rgb(path: str | Path) -> np.ndarray:
    """Image file -> uint8 HxWx3 RGB array in its displayed orientation (EXIF applied); a clear
    DataError for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path} — check the dataset root and the image paths "
                        f"in its annotations")
    image = decode_rgb(np.fromfile(str(path), dtype=np.uint8))
    if image is None:
        raise DataError(f"cannot decode image {path} (corrupt or not an image) — replace or delete the file, "
                        f"or run with --lenient to skip it")
    return image


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 HxWx3 RGB array (format from the file suffix; no EXIF orientation, so the
    file displays as the array)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    buf.tofile(str(path))
