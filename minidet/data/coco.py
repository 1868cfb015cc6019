"""COCO-format reader: an instances JSON file + a folder of images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .dataset import DetectionDataset, Record, clean_boxes
from .problems import DataError, DataReport


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"annotation file not found: {path} — check the 'annotations' path in the dataset YAML")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}) — "
                        f"fix or re-export the annotation file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise DataError(f"{path}: expected a COCO instances file, a JSON object with lists 'images', "
                        f"'annotations' and 'categories'")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' must be a list")
    return data


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def read_coco(annotations: str | Path, images: str | Path, report: DataReport | None = None,
              transform=None) -> DetectionDataset:
    """COCO dataset; category ids map to contiguous labels 0..C-1 in increasing id order
    (``dataset.category_ids[label]`` maps back for exporting results). ``iscrowd`` boxes
    become ignore regions of their category; ``area`` (when given) is kept for COCO's area
    ranges. ``dataset.coco_source`` holds the image, annotation and category entries kept, exactly
    as written, so that evaluation sees the file pycocotools sees. Problems are reported with the
    file and annotation id."""
    report = report or DataReport()
    ann_path, img_dir = Path(annotations), Path(images)
    data = _load_json(ann_path)
    cats = sorted(data["categories"], key=lambda c: c.get("id", 0))
    cat_ids = [c.get("id") for c in cats]
    if len(set(cat_ids)) != len(cat_ids) or not all(isinstance(i, int) for i in cat_ids):
        raise DataError(f"{ann_path}: category ids must be distinct integers, got {cat_ids}")
    label_of = {cid: k for k, cid in enumerate(cat_ids)}
    names = [str(c.get("name", c["id"])) for c in cats]

    images_by_id: dict = {}
    for img in data["images"]:
        iid = img.get("id") if isinstance(img, dict) else None
        if iid is None or not isinstance(img.get("file_name"), str) or not all(
                _is_number(img.get(k)) and img.get(k) > 0 for k in ("width", "height")):
            report.problem("malformed image entry", f"{ann_path}: image entry {img!r} needs 'id', 'file_name' and "
                           f"positive 'width' and 'height'")
            continue
        if iid in images_by_id:
            report.problem("duplicated image id", f"{ann_path}: image id {iid} appears more than once "
                           f"({images_by_id[iid]['file_name']} and {img['file_name']}) — make image ids unique")
            continue
        images_by_id[iid] = img

    anns_by_image: dict = {iid: [] for iid in images_by_id}
    for ann in data.get("annotations", []):
        aid = ann.get("id", "?") if isinstance(ann, dict) else "?"
        where = f"{ann_path} annotation id {aid}"
        if not isinstance(ann, dict):
            report.problem("malformed annotation", f"{where}: expected an object, got {ann!r}")
            continue
        if ann.get("image_id") not in images_by_id:
            report.problem("annotation of an unknown image id", f"{where}: image_id {ann.get('image_id')!r} is "
                           f"not in 'images' — fix the image_id or add the image")
            continue
        if ann.get("category_id") not in label_of:
            report.problem("unknown category id", f"{where}: category_id {ann.get('category_id')!r} is not in "
                           f"'categories' (ids {cat_ids}) — fix the id or add the category")
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            report.problem("malformed bbox", f"{where}: 'bbox' must be [x, y, width, height] numbers, got {bbox!r}")
            continue
        anns_by_image[ann["image_id"]].append(ann)

    records = []
    source: dict = {"images": [], "annotations": [], "categories": cats}  # the entries kept, as written
    for iid, img in images_by_id.items():
        path = img_dir / img["file_name"]
        if not path.is_file():
            report.problem("missing image file", f"{ann_path}: image id {iid}: file {path} not found — check the "
                           f"images folder in the dataset YAML")
            continue
        w, h = img["width"], img["height"]
        anns = anns_by_image[iid]
        xyxy = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         if all(math.isfinite(v) for v in a["bbox"]) else [math.nan] * 4 for a in anns],
                        np.float64).reshape(-1, 4)
        where = [f"{ann_path} annotation id {a.get('id', '?')} (image {img['file_name']})" for a in anns]
        boxes, keep = clean_boxes(xyxy, w, h, where, report)
        kept = [a for a, k in zip(anns, keep, strict=True) if k]
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in kept], bool)
        labels = np.array([label_of[a["category_id"]] for a in kept], np.int64)
        areas = np.array([a["area"] if _is_number(a.get("area")) else a["bbox"][2] * a["bbox"][3] for a in kept],
                         np.float64)
        records.append(Record(str(path), iid, int(w), int(h), boxes[~crowd], labels[~crowd], boxes[crowd],
                              labels[crowd], areas[~crowd]))
        source["images"].append(img)
        source["annotations"] += kept
    dataset = DetectionDataset(records, names, report, transform, category_ids=cat_ids)
    dataset.coco_source = source
    return dataset
