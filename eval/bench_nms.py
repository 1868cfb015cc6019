"""Benchmark: minidet.nms / batched_nms against torchvision's compiled kernels, same run.

    python eval/bench_nms.py                 # CPU, and CUDA when available
    python eval/bench_nms.py --reps 50 --device cpu
    python eval/bench_nms.py --device cuda   # CUDA only (eval/gpu_check.py calls run())

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


HEADER = ("| device | op | boxes | layout | kept | minidet ms | torchvision ms | ratio |\n"
          "|---|---|---:|---|---:|---:|---:|---:|")


def select_devices(which: str) -> list[torch.device]:
    """--device cpu / cuda / all -> the devices to run on (SystemExit for cuda without a GPU)."""
    devices = [torch.device("cpu")]
    if which in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if which == "cuda":
        devices = devices[1:]
        if not devices:
            raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    return devices


def run(devices: list[torch.device], sizes=(1000, 5000, 20000), reps: int = 20, iou: float = 0.5,
        classes: int = 80, emit=None) -> list[dict]:
    """Time every (device, size, layout, op) cell; each row is also checked for the same kept set
    as torchvision (SystemExit on a mismatch). ``emit(line)`` gets each table row as it is done."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for device in devices:
        for n in sizes:
            for kind in ("clustered", "uniform"):
                boxes = make_boxes(n, kind, g).to(device)
                scores = torch.rand(n, generator=g).to(device)
                idxs = torch.randint(0, classes, (n,), generator=g).to(device)
                cases = [
                    ("nms", partial(nms, boxes, scores, iou), partial(tvo.nms, boxes, scores, iou)),
                    ("batched_nms", partial(batched_nms, boxes, scores, idxs, iou),
                     partial(tvo.batched_nms, boxes, scores, idxs, iou)),
                ]
                for op, ours, ref in cases:
                    kept, ref_kept = ours(), ref()
                    if set(kept.tolist()) != set(ref_kept.tolist()):
                        raise SystemExit(f"MISMATCH: {op} {kind} n={n} on {device}")
                    r = max(3, reps if n <= 5000 else reps // 4)
                    t_ours = median_ms(ours, r, device)
                    t_ref = median_ms(ref, r, device)
                    row = {"device": device.type, "op": op, "boxes": n, "layout": kind, "kept": kept.numel(),
                           "minidet_ms": t_ours, "torchvision_ms": t_ref, "ratio": t_ours / t_ref}
                    rows.append(row)
                    if emit is not None:
                        emit(format_row(row))
    return rows


def format_row(row: dict) -> str:
    return (f"| {row['device']} | {row['op']} | {row['boxes']} | {row['layout']} | {row['kept']} | "
            f"{row['minidet_ms']:.2f} | {row['torchvision_ms']:.2f} | {row['ratio']:.2f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per cell (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold")
    parser.add_argument("--classes", type=int, default=80, help="categories for batched_nms")
    args = parser.parse_args(argv)
    devices = select_devices(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, IoU {args.iou}, "
          f"{args.classes} classes for batched_nms, median of {args.reps} runs")
    print(HEADER)
    run(devices, args.sizes, args.reps, args.iou, args.classes, emit=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
