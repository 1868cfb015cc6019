"""Dataset check: ``python -m minidet.data.check DATASET.yaml`` (or a dataset folder, or
``shapes``) prints, per split, the images, boxes per class, a box-size histogram and every
problem found (the check always runs in lenient mode, so it lists them all)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import numpy as np

from .config import build_dataset, resolve_config
from .problems import DataError

SIZE_BINS = (0, 8, 16, 32, 64, 96, 128, 256, 512, math.inf)  # sqrt(box area) in px


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
    p.add_argument("--format", choices=["coco", "voc", "yolo"], default=None, help="format of a dataset folder")
    args = p.parse_args(argv)
    try:
        cfg = resolve_config(args.data, args.format)
        splits = args.splits or [s for s in ("train", "val", "test") if s in cfg] or ["train", "val"]
        problems = 0
        for split in splits:
            ds = build_dataset(cfg, split, strict=False)
            problems += ds.report.total
            print(summarize(ds, split))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
