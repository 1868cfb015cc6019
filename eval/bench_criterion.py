"""Benchmark: assignment + loss (forward and backward) of minidet's DenseCriterion against
torchvision's RetinaNet ``compute_loss`` on the same tensors, in the same run.

    python eval/bench_criterion.py                  # B=8, ~100k anchors, 20 gts/image, 80 classes
    python eval/bench_criterion.py --size 320 416   # a smaller image (fewer anchors)

Both sides: Max-IoU matching (0.5 / 0.4, low-quality matches), sigmoid focal loss (0.25, 2)
and L1 on delta-encoded boxes, normalised by the number of positives. torchvision loops over
the images; minidet assigns the whole batch at once. Prints the times and the speed-up.
"""

from __future__ import annotations

import argparse
import types

import torch
from timing import median_ms
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead

from minidet.anchors import AnchorGenerator
from minidet.criterion import DenseCriterion
from minidet.structures import HeadOutput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=[640, 832], help="image height width (~100k anchors)")
    ap.add_argument("--gts", type=int, default=20, help="gt boxes per image")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    h, w = args.size
    strides = (8, 16, 32, 64, 128)
    feature_sizes = [(-(-h // s), -(-w // s)) for s in strides]
    priors, npl = AnchorGenerator()(feature_sizes, device=device)
    a, b, c = priors.shape[0], args.batch, args.classes
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(b):
        xy = torch.rand(args.gts, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = torch.rand(args.gts, 2, generator=g) * 280 + 20
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(w), float(h)]))], 1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(0, c, (args.gts,), generator=g).to(device)})
    cls_logits = (torch.randn(b, a, c, generator=g) - 4.0).to(device).requires_grad_()
    box_reg = (torch.randn(b, a, 4, generator=g) * 0.1).to(device).requires_grad_()
    print(f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads): B={b}, "
          f"{a} anchors/image ({h}x{w}), {args.gts} gts/image, {c} classes; median of {args.reps}")

    criterion = DenseCriterion(cls_loss="focal", reg_loss="l1")
    out = HeadOutput(cls_logits, box_reg, priors, npl, (h, w))

    def ours():
        cls_logits.grad = box_reg.grad = None
        criterion(out, targets)["loss"].backward()

    fake_model = types.SimpleNamespace(
        proposal_matcher=det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True),
        head=RetinaNetHead(8, 9, c).to(device),
    )
    head_outputs = {"cls_logits": cls_logits, "bbox_regression": box_reg}

    def peer():
        cls_logits.grad = box_reg.grad = None
        losses = RetinaNet.compute_loss(fake_model, targets, head_outputs, [priors] * b)
        (losses["classification"] + losses["bbox_regression"]).backward()

    t_ours = median_ms(ours, args.reps, device)
    t_peer = median_ms(peer, args.reps, device)
    print("| assignment + loss, fwd + bwd | ms |")
    print("|---|---:|")
    print(f"| minidet DenseCriterion (MaxIoU, focal, L1) | {t_ours:.0f} |")
    print(f"| torchvision RetinaNet.compute_loss | {t_peer:.0f} |")
    print(f"| speed-up (torchvision / minidet) | {t_peer / t_ours:.2f}x |")


if __name__ == "__main__":
    main()
