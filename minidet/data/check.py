"""Dataset check: ``python -m minidet.data.check DATASET.yaml`` (or a dataset folder, or
``shapes``) prints, per split, the images, boxes per class, a box-size histogram, each class's
box-size quantiles at the training size (flagging classes whose boxes fall under the smallest
stride), the size --img-size auto would choose and every problem found (the check always runs in lenient mode, so it lists them all). It decodes every
image (in parallel threads, as training will: displayed orientation, see image_io) and reports
corrupt and truncated files and images whose decoded size differs from their annotations."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..class_sizes import class_sizes, plan_img_size, size_report
from ..models.families import FAMILIES
from .config import _splits_of, build_dataset, resolve_config
from .image_io import decode_rgb
from .problems import DataError

SIZE_BINS = (0, 8, 16, 32, 64, 96, 128, 256, 512, math.inf)  # sqrt(box area) in px


def _jpeg_or_png_truncated(path: Path) -> bool:
    """Whether PIL finds the file truncated when decoding it in full."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except OSError as err:
        return "truncated" in str(err).lower()  # "image file is truncated", "Truncated File Read"
    except Exception:  # noqa: BLE001 - any other failure: not a truncation
        return False
    return False


def image_problem(record) -> tuple[str, str] | None:
    """(kind, message) of what is wrong with a record's image file, or None: decoded as training
    decodes it (OpenCV, EXIF orientation applied) and compared with the annotated size."""
    path = Path(record.path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        return "unreadable image", f"{path}: cannot be read ({err})"
    image = decode_rgb(data)
    jpeg = data[:2].tobytes() == b"\xff\xd8"
    if image is None or (jpeg and data[-2:].tobytes() != b"\xff\xd9"):  # no JPEG end marker: decode fully
        if _jpeg_or_png_truncated(path):
            return "truncated image", (f"{path}: truncated (the file ends before its image data does) — replace it "
                                       f"or download it again")
    if image is None:
        return "corrupt image", f"{path}: cannot be decoded (corrupt or not an image) — replace or delete the file"
    h, w = image.shape[:2]
    if (w, h) != (record.width, record.height):
        turned = (h, w) == (record.width, record.height)
        return "image size mismatch", (
            f"{path}: the annotations say {record.width}x{record.height} but the image is {w}x{h} as displayed"
            + (" (its EXIF orientation turns it; annotations are of the displayed image)" if turned else "")
            + " — fix the image size in the annotation file")
    return None


def check_images(dataset, workers: int = 4) -> int:
    """Decode every image of ``dataset`` (``workers`` threads; OpenCV releases the GIL) and add
    the problems found to ``dataset.report`` (lenient). -> the number of problems found."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = [p for p in pool.map(image_problem, dataset.records) if p is not None]
    for kind, message in found:
        dataset.report.problem(kind, message)
    return len(found)


def summarize(dataset, split: str) -> str:
    """A printable summary of one split."""
    boxes = [r.boxes for r in dataset.records]
    labels = np.concatenate([r.labels for r in dataset.records]) if dataset.records else np.zeros(0, np.int64)
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    n_empty = sum(len(b) == 0 for b in boxes)
    n_ignore = sum(len(r.ignore_boxes) for r in dataset.records)
    lines = [f"[{split}] {len(dataset)} images ({n_empty} without boxes), {len(all_boxes)} boxes, "
             f"{n_ignore} ignore regions (crowd / difficult), {dataset.num_classes} classes"]
    counts = np.bincount(labels, minlength=dataset.num_classes)
    width = max((len(n) for n in dataset.class_names), default=5)
    lines.append("  boxes per class:")
    for name, n in zip(dataset.class_names, counts.tolist(), strict=True):
        lines.append(f"    {name:<{width}}  {n:8d}")
    side = np.sqrt(np.clip((all_boxes[:, 2] - all_boxes[:, 0]) * (all_boxes[:, 3] - all_boxes[:, 1]), 0, None))
    hist = np.histogram(side, bins=np.array(SIZE_BINS, dtype=np.float64))[0] if len(side) else np.zeros(len(SIZE_BINS) - 1, int)
    lines.append("  box size histogram (sqrt of area, px; COCO small < 32 <= medium < 96 <= large):")
    peak = max(hist.max(), 1)
    for lo, hi, n in zip(SIZE_BINS[:-1], SIZE_BINS[1:], hist.tolist(), strict=True):
        label = f"{lo:g}-{hi:g}" if hi != math.inf else f">= {lo:g}"
        lines.append(f"    {label:>9}  {n:8d}  {'#' * round(40 * n / peak)}")
    lines.append("  " + dataset.report.summary().replace("\n", "\n  ").replace("(lenient mode)", "found"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minidet.data.check", description=__doc__)
    p.add_argument("data", help="dataset YAML, dataset folder, or 'shapes'")
    p.add_argument("--splits", nargs="+", default=None, help="splits to check (default: train and val if present)")
    p.add_argument("--format", choices=["coco", "voc", "yolo"], default=None,
                   help="format of a dataset folder (default: its dataset.yaml / Ultralytics data.yaml, else guessed "
                   "from the layout); must agree with a dataset YAML")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads decoding images")
    p.add_argument("--no-decode", action="store_true", help="skip decoding the images (annotations only)")
    p.add_argument("--img-size", default="auto", help="training size for the per-class box sizes: a number, or auto "
                   "(what python -m minidet.train --img-size auto chooses from the train split)")
    p.add_argument("--model", choices=list(FAMILIES), default="retinanet",
                   help="detector family, for its smallest stride (8; YOLO v1: 32)")
    args = p.parse_args(argv)
    if args.img_size != "auto" and not (args.img_size.isdigit() and int(args.img_size) >= 32):
        p.error(f"--img-size must be auto or a number of pixels >= 32, got {args.img_size!r}")
    try:
        cfg = resolve_config(args.data, args.format)
        splits = (args.splits or [s for s in ("train", "val", "test") if s in cfg] or _splits_of(cfg)
                  or ["train", "val"])
        problems = 0
        stride = FAMILIES[args.model].strides[0]
        size = None if args.img_size == "auto" else int(args.img_size)
        for split in splits:
            ds = build_dataset(cfg, split, strict=False)
            if cfg["format"] != "shapes" and not args.no_decode:
                check_images(ds, args.workers)
            problems += ds.report.total
            print(summarize(ds, split))
            if size is None and ds.records:  # the first split (train) sets the automatic size
                plan = plan_img_size(ds.records, ds.class_names, stride=stride)
                size = plan.size
                print(f"  --img-size auto would train at {size} px (every class's median box at >= 2 x the smallest "
                      f"stride {stride} px, at most {plan.cap} = {plan.cap_reason}):\n" + "\n".join(plan.lines))
            if size is not None:
                print(f"  per class at {size} px (the smallest stride: {stride} px):")
                print("\n".join(size_report(class_sizes(ds.records, ds.class_names), size, stride)))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
