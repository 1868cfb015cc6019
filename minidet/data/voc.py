"""Pascal VOC reader: Annotations/*.xml + JPEGImages/ + ImageSets/Main/<split>.txt, or a flat
folder of image + XML pairs. VOC's 1-based inclusive pixel coordinates become continuous
x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax (so width = xmax - xmin + 1, the devkit's
convention)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .dataset import DetectionDataset, Record, clean_boxes
from .image_io import IMAGE_SUFFIXES, image_size
from .problems import DataError, DataReport


def _find_image(folder: Path, stem: str, filename: str | None) -> Path | None:
    """The image of an annotation: its <filename> in ``folder``, else ``stem`` with any image
    suffix (lower or upper case, e.g. a phone's IMG_0001.JPG)."""
    if filename and (folder / filename).is_file():
        return folder / filename
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _number(node, tag: str, xml: Path):
    text = node.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{xml}: <{tag}> must be a number, got {text!r}") from None


def voc_class_names(root: str | Path) -> list[str]:
    """The sorted class names of a VOC devkit folder without a YAML: every <object><name> in the
    annotation files of all its splits (ImageSets/Main/*.txt; every Annotations/*.xml when there
    is no split list). Unreadable files are left to the reader, which reports them."""
    root = Path(root)
    stems: set[str] = set()
    for list_file in sorted((root / "ImageSets" / "Main").glob("*.txt")):
        stems.update(line.split()[0] for line in list_file.read_text().splitlines() if line.strip())
    xmls = [root / "Annotations" / f"{s}.xml" for s in sorted(stems)] or sorted((root / "Annotations").glob("*.xml"))
    names: set[str] = set()
    for xml in xmls:
        try:
            tree = ET.parse(xml).getroot()
        except (OSError, ET.ParseError):
            continue
        names.update(n for n in ((obj.findtext("name") or "").strip() for obj in tree.iter("object")) if n)
    return sorted(names)


def read_voc(root: str | Path, split: str | None, class_names: Sequence[str], report: DataReport | None = None,
             transform=None, use_difficult: bool = False) -> DetectionDataset:
    """VOC dataset. ``split`` names ImageSets/Main/<split>.txt under ``root``; None reads every
    XML file of ``root`` as a flat folder (images beside them). Objects marked difficult are
    ignore regions of their class; ``use_difficult`` trains them as objects (the items carry them
    as boxes) while evaluation still ignores them, as the devkit does."""
    report = report or DataReport()
    root = Path(root)
    label_of = {n: k for k, n in enumerate(class_names)}
    if split is not None:
        list_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"VOC split list not found: {list_file} — check the root and split names")
        stems = [s.split()[0] for s in list_file.read_text().splitlines() if s.strip()]
        xmls = [root / "Annotations" / f"{s}.xml" for s in stems]
        image_dir = root / "JPEGImages"
    else:
        xmls = sorted(root.glob("*.xml"))
        image_dir = root
    records = []
    for xml in xmls:
        if not xml.is_file():
            report.problem("missing annotation file", f"{xml}: listed in the split but not found")
            continue
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as err:
            report.problem("malformed XML", f"{xml}: not valid XML (line {err.position[0]}, column "
                           f"{err.position[1]}) — fix or re-export the file")
            continue
        path = _find_image(image_dir, xml.stem, tree.findtext("filename"))
        if path is None:
            report.problem("missing image file", f"{xml}: no image {tree.findtext('filename') or xml.stem + '.*'} "
                           f"in {image_dir}")
            continue
        try:
            size = tree.find("size")
            if size is not None and size.findtext("width"):
                w, h = int(_number(size, "width", xml)), int(_number(size, "height", xml))
            else:
                w, h = image_size(path)  # as displayed (EXIF orientation applied)
            boxes, labels, difficult, where = [], [], [], []
            for i, obj in enumerate(tree.findall("object")):
                name = (obj.findtext("name") or "").strip()
                if name not in label_of:
                    report.problem("unknown class name", f"{xml}: object {i} has class {name!r}, not one of "
                                   f"{list(class_names)} — add it to 'names' in the dataset YAML or fix the file")
                    continue
                bb = obj.find("bndbox")
                if bb is None:
                    report.problem("malformed object", f"{xml}: object {i} ({name}) has no <bndbox>")
                    continue
                x1, y1 = _number(bb, "xmin", xml) - 1, _number(bb, "ymin", xml) - 1
                boxes.append([x1, y1, _number(bb, "xmax", xml), _number(bb, "ymax", xml)])
                labels.append(label_of[name])
                difficult.append((obj.findtext("difficult") or "0").strip() == "1")
                where.append(f"{xml} object {i} ({name})")
        except (ValueError, DataError) as err:
            report.problem("malformed XML", str(err))
            continue
        clean, keep = clean_boxes(np.array(boxes, np.float64).reshape(-1, 4), w, h, where, report)
        labels_a = np.array(labels, np.int64)[keep]
        hard = np.array(difficult, bool)[keep]
        records.append(Record(str(path), xml.stem, w, h, clean[~hard], labels_a[~hard], clean[hard], labels_a[hard]))
    dataset = DetectionDataset(records, class_names, report, transform)
    dataset.ignore_as_objects = use_difficult
    return dataset
