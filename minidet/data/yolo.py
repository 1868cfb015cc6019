"""YOLO TXT reader: images/ and labels/ trees, one "class cx cy w h" line per box, normalised to
the image as displayed (EXIF orientation applied, like Ultralytics' ``exif_size``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .dataset import DetectionDataset, Record, clean_boxes
from .image_io import IMAGE_SUFFIXES, image_size
from .problems import DataError, DataReport


def labels_dir_for(images: Path) -> Path:
    """The labels folder of an images folder: the last 'images' path part becomes 'labels'."""
    parts = list(images.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images


def image_files(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files of a YOLO split as Ultralytics' data.yaml gives it: a folder (its images,
    sorted), a .txt file listing image paths (relative ones are relative to the .txt file's
    folder), or a list of those."""
    if isinstance(images, list | tuple):
        return [f for part in images for f in image_files(part)]
    path = Path(images)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file() and path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return [p if p.is_absolute() else path.parent / p for p in map(Path, lines)]
    raise DataError(f"images folder not found: {path} — check the split paths in the dataset YAML")


def read_yolo(images: str | Path | Sequence[str | Path], class_names: Sequence[str], labels: str | Path | None = None,
              report: DataReport | None = None, transform=None) -> DetectionDataset:
    """YOLO dataset: every image in ``images`` (a folder, an image-list .txt or a list of those,
    see ``image_files``); labels from ``labels`` or else from the labels folder matching each
    image's folder (an image without a label file has no objects). Boxes are normalised to the
    image as displayed (EXIF orientation applied), as Ultralytics does."""
    report = report or DataReport()
    nc = len(class_names)
    records = []
    for path in image_files(images):
        if not path.is_file():
            report.problem("missing image file", f"{path}: listed in the split but not found")
            continue
        try:
            w, h = image_size(path)
        except DataError as err:
            report.problem("unreadable image", str(err))
            continue
        lab_dir = Path(labels) if labels is not None else labels_dir_for(path.parent)
        label_file = lab_dir / f"{path.stem}.txt"
        rows, where = [], []
        lines = label_file.read_text().splitlines() if label_file.is_file() else []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                values = [float(v) for v in fields]
            except ValueError:
                values = []
            if len(values) != 5:
                report.problem("malformed label line", f"{label_file}:{n}: expected 'class cx cy w h' (5 numbers), "
                               f"got {line.strip()!r}")
                continue
            cls = values[0]
            if cls != int(cls) or not 0 <= cls < nc:
                report.problem("unknown class index", f"{label_file}:{n}: class {fields[0]} is not an integer in "
                               f"0..{nc - 1} ({nc} names in the dataset YAML)")
                continue
            cx, cy, bw, bh = values[1:]
            rows.append([int(cls), (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            where.append(f"{label_file}:{n}")
        arr = np.array(rows, np.float64).reshape(-1, 5)
        boxes, keep = clean_boxes(arr[:, 1:], w, h, where, report)
        records.append(Record(str(path), path.stem, w, h, boxes, arr[keep, 0].astype(np.int64)))
    return DetectionDataset(records, class_names, report, transform)
