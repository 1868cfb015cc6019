"""Benchmark: forward + backward time of every minidet loss at RetinaNet scale.

    python eval/bench_losses.py                      # B=8, 100k anchors/image, 80 classes, 200 positives
    python eval/bench_losses.py --anchors 20000      # a quicker, smaller run

Classification losses see all B x A x C logits (softmax ones B x A rows of C + 1 classes);
box losses see the positives (and, for a measurable figure, --boxes boxes). The peers from
torch.nn.functional / torchvision.ops are timed in the same run on the same tensors; "x focal"
is each loss's time over minidet's sigmoid focal loss (the goal: AP and aLRP within 3x).
Two logit layouts for the ranking losses: "init" (all logits near the prior -4.6, so every
negative is relevant, the worst case of early training) and "trained" (positives well above
most negatives).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision.ops as tvo
from timing import median_ms

from minidet import losses as L


def fwd_bwd(loss_fn, *leaves):
    """A closure running loss_fn(*leaves).backward() with fresh gradients."""
    def run():
        for x in leaves:
            x.grad = None
        out = loss_fn(*leaves)
        if isinstance(out, tuple):
            out = out[0] + out[1]
        out.backward()
    return run


def make_logits(b, a, c, p, layout, g, device):
    logits = torch.randn(b, a, c, generator=g) - 4.6
    if layout == "trained":
        logits = logits * 1.5 - 2.0
    flat_pos = torch.randperm(b * a, generator=g)[:p]
    classes = torch.randint(0, c, (p,), generator=g)
    targets = torch.zeros(b * a, c, dtype=torch.int8)
    targets[flat_pos, classes] = 1
    ignored = torch.randperm(b * a, generator=g)[: b * a // 50]  # ~2% ignored anchors
    keep = ~torch.isin(ignored, flat_pos)
    targets[ignored[keep]] = -1
    lv = logits.view(b * a, c)
    lv[flat_pos, classes] = torch.randn(p, generator=g) + (-3.6 if layout == "init" else 2.0)
    return logits.to(device), targets.view(b, a, c).to(device), flat_pos, classes


def classification_rows(b, a, c, p, g, device, add) -> float:
    """Time the dense classification losses; returns the focal loss time."""
    logits, targets, flat_pos, classes = make_logits(b, a, c, p, "init", g, device)
    x = logits.requires_grad_()
    onehot = (targets == 1).float()
    focal = add("sigmoid_focal_loss", f"{b}x{a}x{c}", fwd_bwd(lambda z: L.sigmoid_focal_loss(z, onehot) / p, x),
                "torchvision.ops.sigmoid_focal_loss",
                fwd_bwd(lambda z: tvo.sigmoid_focal_loss(z, onehot, reduction="sum") / p, x))
    labels = torch.full((b * a,), -1, dtype=torch.long)
    labels[flat_pos] = classes
    labels = labels.to(device)
    valid = (targets >= 0).all(-1).reshape(-1).float()
    add("sigmoid_focal_loss_from_labels", f"{b}x{a}x{c}",
        fwd_bwd(lambda z: L.sigmoid_focal_loss_from_labels(z.view(-1, c), labels, weight=valid) / p, x))
    add("binary_cross_entropy", f"{b}x{a}x{c}", fwd_bwd(lambda z: L.binary_cross_entropy(z, onehot, reduction="sum"), x),
        "F.binary_cross_entropy_with_logits",
        fwd_bwd(lambda z: F.binary_cross_entropy_with_logits(z, onehot, reduction="sum"), x))
    add("yolo_sse (on sigmoid)", f"{b}x{a}x{c}", fwd_bwd(lambda z: L.yolo_sse(torch.sigmoid(z), onehot), x),
        "F.mse_loss (on sigmoid)", fwd_bwd(lambda z: F.mse_loss(torch.sigmoid(z), onehot, reduction="sum"), x))
    sm_logits = torch.randn(b * a, c + 1, generator=g).to(device).requires_grad_()
    sm_targets = torch.full((b * a,), c, dtype=torch.long)
    sm_targets[flat_pos] = classes
    sm_targets = sm_targets.to(device)
    add("softmax_cross_entropy", f"{b * a}x{c + 1}", fwd_bwd(lambda z: L.softmax_cross_entropy(z, sm_targets), sm_logits),
        "F.cross_entropy", fwd_bwd(lambda z: F.cross_entropy(z, sm_targets), sm_logits))
    add("softmax_focal_loss", f"{b * a}x{c + 1}", fwd_bwd(lambda z: L.softmax_focal_loss(z, sm_targets), sm_logits))
    add("multiclass_hinge_loss", f"{b * a}x{c + 1}", fwd_bwd(lambda z: L.multiclass_hinge_loss(z, sm_targets), sm_logits),
        "F.multi_margin_loss", fwd_bwd(lambda z: F.multi_margin_loss(z, sm_targets), sm_logits))
    return focal


def ranking_rows(b, a, c, p, layout, g, device, add) -> None:
    """Time AP Loss and aLRP Loss on one logit layout."""
    logits, targets, _, _ = make_logits(b, a, c, p, layout, g, device)
    n_rel = int(((targets == 0) & (logits >= logits[targets == 1].min() - 1)).sum())
    x = logits.requires_grad_()
    loc = (torch.rand(p, generator=g) * 2).to(device).requires_grad_()
    shape = f"{b}x{a}x{c}, {layout}: {n_rel / 1e6:.1f}M relevant neg."
    add("ap_loss", shape, fwd_bwd(lambda z: L.ap_loss(z, targets), x))
    add("alrp_loss", shape, fwd_bwd(lambda z, e: L.alrp_loss(z, targets, e), x, loc))


def box_rows(n, g, device, add) -> None:
    """Time the regression losses on n boxes."""
    xy = torch.rand(n, 2, generator=g) * 800
    pred = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 200 + 5], 1).to(device).requires_grad_()
    tgt = (pred.detach() + torch.randn(n, 4, generator=g).to(device) * 10)
    tgt = torch.cat([tgt[:, :2], torch.maximum(tgt[:, 2:], tgt[:, :2] + 1)], 1)
    for name, ours, peer_name, peer in [
        ("l1_loss", L.l1_loss, "F.l1_loss", F.l1_loss),
        ("l2_loss", L.l2_loss, "F.mse_loss", F.mse_loss),
        ("smooth_l1_loss", L.smooth_l1_loss, "F.smooth_l1_loss", F.smooth_l1_loss),
        ("iou_loss", L.iou_loss, "", None),
        ("giou_loss", L.giou_loss, "tvo.generalized_box_iou_loss", tvo.generalized_box_iou_loss),
        ("diou_loss", L.diou_loss, "tvo.distance_box_iou_loss", tvo.distance_box_iou_loss),
        ("ciou_loss", L.ciou_loss, "tvo.complete_box_iou_loss", tvo.complete_box_iou_loss),
    ]:
        pf = None if peer is None else fwd_bwd(lambda z, f=peer: f(z, tgt, reduction="mean"), pred)
        add(name, f"{n}x4", fwd_bwd(lambda z, f=ours: f(z, tgt), pred), peer_name, pf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--anchors", type=int, default=100_000, help="anchors per image")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--positives", type=int, default=200, help="positives in the whole batch")
    ap.add_argument("--boxes", type=int, default=100_000, help="boxes for the second box-loss timing")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    b, a, c, p = args.batch, args.anchors, args.classes, args.positives
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads); "
          f"B={b}, anchors/image={a}, classes={c}, positives={p}; median of {args.reps}")
    rows = []

    def add(name, shape, ours, peer_name="", peer=None):
        t = median_ms(ours, args.reps, device)
        tp = median_ms(peer, args.reps, device) if peer is not None else None
        rows.append((name, shape, t, peer_name, tp))
        return t

    focal = classification_rows(b, a, c, p, g, device, add)
    for layout in ("init", "trained"):
        ranking_rows(b, a, c, p, layout, g, device, add)
    for n in (p, args.boxes):
        box_rows(n, g, device, add)

    print("| loss | input | minidet ms | peer | peer ms | x focal |")
    print("|---|---|---:|---|---:|---:|")
    for name, shape, t, peer_name, tp in rows:
        peer_ms = f"{tp:.1f}" if tp is not None else ""
        print(f"| {name} | {shape} | {t:.1f} | {peer_name} | {peer_ms} | {t / focal:.2f} |")


if __name__ == "__main__":
    main()
