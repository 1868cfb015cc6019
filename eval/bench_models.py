"""Benchmark: inference (forward + post-processing) and training-step (loss forward + backward)
time per image of every minidet model at 512 x 512, beside torchvision's
``retinanet_resnet50_fpn`` and ``ssd300_vgg16`` run at the same input size, in the same run.

    python eval/bench_models.py                      # CPU, batch 2
    python eval/bench_models.py --device cuda --amp  # GPU with bfloat16 autocast

torchvision's models get their resize transform fixed to 512 x 512 (no upscaling to 800 px), random
weights, and the same synthetic targets (5 boxes per image).
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from timing import median_ms
from torchvision.models.detection import retinanet_resnet50_fpn, ssd300_vgg16
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from minidet.models import build_model

MINIDET = [("retinanet", "tiny"), ("ssd", "tiny"), ("yolo", "tiny"), ("retinanet", "resnet50"), ("ssd", "vgg16")]


def make_targets(b: int, size: int, num_classes: int, g: torch.Generator) -> list[dict]:
    out = []
    for _ in range(b):
        xy = torch.rand(5, 2, generator=g) * (size * 0.7)
        wh = torch.rand(5, 2, generator=g) * (size * 0.25) + 16
        out.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, num_classes, (5,), generator=g)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in make_targets(args.batch, args.size, args.classes, g)]
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else contextlib.nullcontext

    def per_image(ms: float) -> float:
        return ms / args.batch

    rows = []
    for name, backbone in MINIDET:
        model = build_model(name, args.classes, backbone=backbone).to(device)

        def infer(model=model):
            with autocast():
                model.predict(images)

        def train_step(model=model):
            model.zero_grad(set_to_none=True)
            with autocast():
                loss = model.loss(images, targets)["loss"]
            loss.backward()

        params = sum(q.numel() for q in model.parameters()) / 1e6
        rows.append((f"minidet {name} ({backbone})", params, per_image(median_ms(infer, args.reps, device)),
                     per_image(median_ms(train_step, args.reps, device))))
        print(rows[-1], flush=True)

    fixed = GeneralizedRCNNTransform(args.size, args.size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                     fixed_size=(args.size, args.size))
    for label, builder in (("torchvision retinanet_resnet50_fpn", retinanet_resnet50_fpn),
                           ("torchvision ssd300_vgg16 (at 512)", ssd300_vgg16)):
        model = builder(weights=None, weights_backbone=None, num_classes=args.classes + 1).to(device)
        model.transform = fixed

        def infer(model=model):
            model.eval()
            with torch.no_grad(), autocast():
                model(list(images))

        def train_step(model=model):
            model.train()
            model.zero_grad(set_to_none=True)
            with autocast():
                losses = model(list(images), tv_targets)
            sum(losses.values()).backward()

        params = sum(q.numel() for q in model.parameters()) / 1e6
        rows.append((label, params, per_image(median_ms(infer, args.reps, device)),
                     per_image(median_ms(train_step, args.reps, device))))
        print(rows[-1], flush=True)

    print(f"\n{args.size}x{args.size}, batch {args.batch}, {args.classes} classes, {device}"
          f"{' + bf16 autocast' if args.amp else ''}, {torch.get_num_threads()} threads, median of {args.reps}")
    print("| model | params (M) | inference ms/img | train step ms/img |")
    print("|---|---:|---:|---:|")
    for label, params, inf, tr in rows:
        print(f"| {label} | {params:.1f} | {inf:.0f} | {tr:.0f} |")


if __name__ == "__main__":
    main()
