"""Benchmark: minidet.nms / batched_nms against torchvision's compiled kernels, same run.

    python eval/bench_nms.py                 # CPU, and CUDA when available
    python eval/bench_nms.py --reps 50 --device cpu

Two box distributions per size: "clustered" (boxes jittered around 50 objects, like a
detector's raw output, most boxes suppressed) and "uniform" (boxes spread over a 1000 px
image, few suppressed). Every timed call is also checked for the same result as torchvision.
Prints one Markdown table; ratio = minidet time / torchvision time (below 1 = minidet faster).
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
import torchvision.ops as tvo
from timing import median_ms

from minidet.nms import batched_nms, nms


def make_boxes(n: int, kind: str, g: torch.Generator) -> torch.Tensor:
    """n xyxy boxes [n, 4] on a ~1000 px image."""
    if kind == "clustered":
        centres = torch.rand(50, 2, generator=g) * 800 + 100
        sizes = torch.rand(50, 2, generator=g) * 150 + 20
        k = torch.randint(0, 50, (n,), generator=g)
        c = centres[k] + torch.randn(n, 2, generator=g) * sizes[k] * 0.15
        wh = sizes[k] * (1 + 0.2 * torch.randn(n, 2, generator=g)).clamp(min=0.3)
    else:
        c = torch.rand(n, 2, generator=g) * 1000
        wh = torch.rand(n, 2, generator=g) * 100 + 5
    return torch.cat([c - wh / 2, c + wh / 2], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per cell (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold")
    parser.add_argument("--classes", type=int, default=80, help="categories for batched_nms")
    args = parser.parse_args()

    devices = [torch.device("cpu")]
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda":
        devices = devices[1:]
        if not devices:
            raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, IoU {args.iou}, "
          f"{args.classes} classes for batched_nms, median of {args.reps} runs")
    print("| device | op | boxes | layout | kept | minidet ms | torchvision ms | ratio |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for device in devices:
        for n in args.sizes:
            for kind in ("clustered", "uniform"):
                boxes = make_boxes(n, kind, g).to(device)
                scores = torch.rand(n, generator=g).to(device)
                idxs = torch.randint(0, args.classes, (n,), generator=g).to(device)
                cases = [
                    ("nms", partial(nms, boxes, scores, args.iou), partial(tvo.nms, boxes, scores, args.iou)),
                    ("batched_nms", partial(batched_nms, boxes, scores, idxs, args.iou),
                     partial(tvo.batched_nms, boxes, scores, idxs, args.iou)),
                ]
                for op, ours, ref in cases:
                    kept, ref_kept = ours(), ref()
                    if set(kept.tolist()) != set(ref_kept.tolist()):
                        raise SystemExit(f"MISMATCH: {op} {kind} n={n} on {device}")
                    reps = max(3, args.reps if n <= 5000 else args.reps // 4)
                    t_ours = median_ms(ours, reps, device)
                    t_ref = median_ms(ref, reps, device)
                    print(f"| {device.type} | {op} | {n} | {kind} | {kept.numel()} | {t_ours:.2f} | "
                          f"{t_ref:.2f} | {t_ours / t_ref:.2f} |", flush=True)


if __name__ == "__main__":
    main()
