"""Probe: how well the YOLO v1 head's boxes fit when it trains with one box loss or another.

    OMP_NUM_THREADS=1 python eval/probe_yolo_box_loss.py --iters 2000 giou diou l2

For each --reg-loss named: ``python -m minidet.train --model yolo --cls-loss focal --reg-loss X
--shapes-images 500 --img-size 128 --iters N --seed 0`` (60 validation images) into
runs/probe_yolo/X_N (kept: a second call only re-scores), then on the 60 validation images each
object's best-IoU predicted box among all the model's boxes (score threshold 0, up to 1000 per
image): its width against the object's, and the mean of those best IoUs. Prints one line per loss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from minidet.api import load
from minidet.boxes import box_iou
from minidet.data.shapes import ShapesDataset


def train(reg: str, iters: int, out: Path) -> float:
    if not (out / "summary.json").is_file():
        subprocess.run([sys.executable, "-m", "minidet.train", "--model", "yolo", "--cls-loss", "focal",
                        "--reg-loss", reg, "--shapes-images", "500", "--img-size", "128", "--iters", str(iters),
                        "--seed", "0", "--quiet", "--workers", "0", "--shapes-val-images", "60", "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())["final"]["AP"]


def best_matches(weights: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (best-matching predicted widths, object widths, best IoUs), one entry per object."""
    predictor = load(weights)
    predictor.set_thresholds(conf=0.0, max_det=1000)
    val = ShapesDataset(60, 128, seed=0, split="val")
    pred_w, gt_w, best = [], [], []
    for i in range(len(val)):
        item = val[i]
        boxes = predictor.predict(item["image"])["boxes"]
        if len(boxes) == 0:
            continue
        iou = box_iou(torch.as_tensor(item["boxes"]), torch.as_tensor(boxes))
        match = iou.argmax(1)
        for k, gt in enumerate(item["boxes"]):
            pred_w.append(boxes[match[k], 2] - boxes[match[k], 0])
            gt_w.append(gt[2] - gt[0])
            best.append(float(iou[k, match[k]]))
    return np.array(pred_w), np.array(gt_w), np.array(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("losses", nargs="+", help="regression losses (--reg-loss names)")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--runs", default="runs/probe_yolo")
    args = parser.parse_args()
    for reg in args.losses:
        out = Path(args.runs) / f"{reg}_{args.iters}"
        ap = train(reg, args.iters, out)
        pred_w, gt_w, best = best_matches(out / "last.pt")
        print(f"{reg}, {args.iters} steps: AP {ap:.3f}; best-matching box width {pred_w.mean():.1f} ± {pred_w.std():.1f} "
              f"px for objects of {gt_w.mean():.1f} ± {gt_w.std():.1f} (correlation {np.corrcoef(pred_w, gt_w)[0, 1]:.2f}); "
              f"mean best IoU {best.mean():.2f}", flush=True)


if __name__ == "__main__":
    main()
