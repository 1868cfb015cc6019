"""One-command GPU check of minidet: exactness on CUDA, NMS speed, AMP training, RetinaNet-R50 vs
torchvision. Prints one Markdown table and writes it to eval/results/gpu_check.md (or --out).

    python eval/gpu_check.py                        # CUDA when available, else the CPU-only parts
    python eval/gpu_check.py --device cuda          # the full GPU check (refused without a GPU)
    python eval/gpu_check.py --device cuda --quick  # every part at reduced size (~2 min)
    python eval/gpu_check.py --device cpu --quick   # CPU-only parts, tiny trainings (tests/test_gpu_check.py)

GPU plan (one GPU, expected <= 8 min in all; ``--budget-min`` skips what no longer fits):

1. exactness, CUDA against the CPU (~1 min): box_iou (800 x 50k pairs, bitwise) and GIoU / DIoU /
   CIoU with gradients; nms / batched_nms on 1k / 5k / 20k clustered and uniform boxes (kept
   indices identical to torchvision's CUDA kernel and to minidet on the CPU); every loss of
   minidet.losses.ALL_LOSSES plus the fused focal loss at RetinaNet scale (values and gradients
   within float tolerance); the MaxIoU / ATSS / SSD / YOLO assigners (identical assignments);
   the host syncs of one training step per family under torch.cuda.set_sync_debug_mode (the
   sites outside the budget's files are listed; see tests/test_sync_budget.py).
2. ``eval/bench_nms.py --device cuda`` (~1 min): its run() at 1k / 5k / 20k boxes, 10 repetitions.
3. AMP training of the default small model (~3 min): ``python -m minidet.train`` defaults (the
   ``small`` preset: tiny backbone, 128 px, batch 16, AdamW, EMA) on 800 shapes images for 4
   epochs = 200 iterations, with ``--amp fp16`` and with ``--amp bf16``, and the untrained model
   (``--epochs 0``); losses must stay finite and the AP beat the untrained AP.
4. RetinaNet-R50 at 512 x 512, AMP fp16, SGD 0.01 / momentum 0.9 / weight decay 1e-4, batch 16,
   200 iterations after 10 warm-up ones (~2 min): minidet's ``build_model("retinanet",
   backbone="resnet50")`` (the paper's settings: focal loss, Max-IoU 0.5 / 0.4, 9 anchors per
   location, 4-conv heads) beside torchvision's ``retinanet_resnet50_fpn(weights=None,
   weights_backbone=None)`` on the same synthetic shapes batches already on the GPU: images/s,
   peak memory (torch.cuda.max_memory_allocated, after the warm-up) and their ratios.

Without CUDA (``--device cpu``) part 1 compares the accelerator forms of the hot paths, forced
on the CPU (``minidet.boxes.device_paths``), with their CPU forms, and the host-sync rows use the
CPU mock of tests/test_sync_budget.py; part 2 times the CPU; parts 3 and 4 run on the CPU
(``--quick``: a few iterations at 64 / 128 px, a smoke test of the same code); the CUDA-only
rows say SKIP. Every check is guarded: an error is a FAIL row, and the table is written after
every part. Exit status 1 when some row FAILs. Nothing is downloaded (no pretrained weights).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_nms, timing
sys.path.insert(0, str(HERE.parent / "tests"))  # test_sync_budget (the sync counters)

SECTIONS = ("1. exactness", "2. NMS benchmark", "3. AMP training (small)", "4. RetinaNet-R50 vs torchvision")


class Report:
    """Rows of (section, check, result, detail); result PASS / FAIL / SKIP / INFO or a number."""

    def __init__(self, title: str, out: Path | None) -> None:
        self.title, self.out, self.rows = title, out, []

    def add(self, section: str, check: str, result: str, detail: str = "") -> None:
        self.rows.append((section, check, result, detail.replace("|", "/").replace("\n", " ")))
        print(f"  [{result}] {check}: {detail}", flush=True)

    def guard(self, section: str, check: str):
        """Context manager: an exception inside becomes a FAIL row (the run goes on)."""
        report = self

        class _Guard(contextlib.AbstractContextManager):
            def __exit__(self, kind, err, tb):
                if err is None:
                    return False
                if isinstance(err, KeyboardInterrupt):
                    return False
                last = traceback.extract_tb(tb)[-1]
                report.add(section, check, "FAIL", f"{kind.__name__}: {err} ({Path(last.filename).name}:{last.lineno})")
                return True

        return _Guard()

    def markdown(self) -> str:
        lines = [f"# {self.title}", "", "| part | check | result | detail |", "|---|---|---|---|"]
        lines += [f"| {s} | {c} | {r} | {d} |" for s, c, r, d in self.rows]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(self.markdown())

    @property
    def failed(self) -> bool:
        return any(r == "FAIL" for _, _, r, _ in self.rows)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(|b|) (0 for equal, also for two empty tensors)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.numel() == 0:
        return 0.0
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


class Pair:
    """How part 1 compares: CUDA against the CPU, or (no CUDA) the accelerator forms forced on the
    CPU against the CPU forms. ``run(fn)`` -> (reference result, tested result)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.label = "cuda vs cpu" if self.cuda else "accelerator form vs cpu form (on cpu)"

    def run(self, fn):
        from minidet.boxes import device_paths

        if self.cuda:
            with device_paths(None):
                return fn(torch.device("cpu")), fn(self.device)
        with device_paths(False):
            ref = fn(torch.device("cpu"))
        with device_paths(True):
            return ref, fn(torch.device("cpu"))


# ---------------------------------------------------------------------------------- part 1


def _random_boxes(n: int, g: torch.Generator, scale: float = 500.0, max_size: float = 120.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * scale
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * max_size + 1.0], 1)


def note_part1(report: Report, pair: Pair) -> None:
    if not pair.cuda:
        report.add(SECTIONS[0], "CUDA against the CPU", "SKIP",
                   "needs CUDA; the rows below compare the accelerator forms (forced on the CPU) with the CPU forms")


def check_boxes(report: Report, pair: Pair, quick: bool) -> None:
    from minidet.boxes import box_iou, complete_box_iou, distance_box_iou, generalized_box_iou

    sec = SECTIONS[0]
    g = torch.Generator().manual_seed(0)
    n, m = (120, 5000) if quick or not pair.cuda else (800, 50000)
    a, b = _random_boxes(n, g), _random_boxes(m, g)
    b[::97, 2:] = b[::97, :2]
    with report.guard(sec, f"box_iou {n}x{m} ({pair.label})"):
        ref, out = pair.run(lambda d: box_iou(a.to(d), b.to(d)).cpu())
        same = torch.equal(ref, out)
        diff = _rel(out, ref)
        report.add(sec, f"box_iou {n}x{m} ({pair.label})", "PASS" if diff <= 1e-6 else "FAIL",
                   "bitwise identical" if same else f"max rel diff {diff:.2e}")
    a2, b2 = _random_boxes(300, g), _random_boxes(400, g)
    for name, fn in (("generalized_box_iou", generalized_box_iou), ("distance_box_iou", distance_box_iou),
                     ("complete_box_iou", complete_box_iou)):
        with report.guard(sec, f"{name} + gradients"):
            def run(d, fn=fn):
                x, y = a2.to(d).requires_grad_(), b2.to(d).requires_grad_()
                v = fn(x, y)
                v.sum().backward()
                return v.detach().cpu(), x.grad.cpu(), y.grad.cpu()

            ref, out = pair.run(run)
            dv, dg = _rel(out[0], ref[0]), max(_rel(out[1], ref[1]), _rel(out[2], ref[2]))
            report.add(sec, f"{name} + gradients", "PASS" if dv <= 1e-5 and dg <= 1e-4 else "FAIL",
                       f"value rel diff {dv:.1e}, gradient rel diff {dg:.1e}")


def _nms_boxes(n: int, kind: str, g: torch.Generator):
    from bench_nms import make_boxes

    return make_boxes(n, kind, g), torch.rand(n, generator=g), torch.randint(0, 80, (n,), generator=g)


def check_nms(report: Report, pair: Pair, quick: bool) -> None:
    import torchvision.ops as tvo

    from minidet.nms import batched_nms, nms

    sec = SECTIONS[0]
    g = torch.Generator().manual_seed(1)
    sizes = (1000,) if quick else (1000, 5000, 20000)
    bad, cells = [], 0
    with report.guard(sec, f"nms / batched_nms ({pair.label})"):
        for n in sizes:
            for kind in ("clustered", "uniform"):
                for thr in (0.5, 0.7):
                    boxes, scores, idxs = _nms_boxes(n, kind, g)
                    def run(d, boxes=boxes, scores=scores, idxs=idxs, thr=thr):
                        return (nms(boxes.to(d), scores.to(d), thr).cpu(),
                                batched_nms(boxes.to(d), scores.to(d), idxs.to(d), thr).cpu())

                    ref, out = pair.run(run)
                    dev = pair.device
                    tv = tvo.nms(boxes.to(dev), scores.to(dev), thr).cpu()
                    tv_b = tvo.batched_nms(boxes.to(dev), scores.to(dev), idxs.to(dev), thr).cpu()
                    cells += 1
                    if not (torch.equal(out[0], tv) and torch.equal(out[0], ref[0])):
                        bad.append(f"nms {kind} n={n} thr={thr}")
                    if not (torch.equal(out[1], ref[1]) and set(out[1].tolist()) == set(tv_b.tolist())):
                        bad.append(f"batched_nms {kind} n={n} thr={thr}")
        where = "torchvision on " + pair.device.type
        report.add(sec, f"nms / batched_nms ({pair.label})", "FAIL" if bad else "PASS",
                   f"{cells} cases x 2 ops: kept indices equal to {where} and to the reference"
                   + (f"; mismatches: {', '.join(bad)}" if bad else ""))


def _loss_cases(n: int, c: int, g: torch.Generator) -> dict:
    """name -> (function of the inputs, inputs (CPU), names of the inputs that get gradients)."""
    from minidet.losses import ALL_LOSSES, alrp_loss, ap_loss, sigmoid_focal_loss_from_labels

    logits = torch.randn(n, c, generator=g) * 2 - 1
    labels = torch.randint(-1, c, (n,), generator=g)
    onehot = F.one_hot(labels.clamp(min=0), c).float() * (labels >= 0)[:, None]
    rank_t = onehot.to(torch.int8)
    rank_t[torch.rand(n, generator=g) < 0.05] = -1
    num_pos = int((rank_t == 1).sum())
    boxes = _random_boxes(n, g)
    pred_boxes = boxes + torch.randn(n, 4, generator=g) * 5
    pred_boxes[:, 2:] = torch.maximum(pred_boxes[:, 2:], pred_boxes[:, :2] + 1)
    cases = {}
    for name, fn in ALL_LOSSES.items():
        if name in ("ce", "softmax_focal", "hinge"):
            cases[name] = (lambda x, t, fn=fn: fn(x, t, reduction="sum"), {"x": logits, "t": labels}, ["x"])
        elif name in ("bce", "focal"):
            cases[name] = (lambda x, t, fn=fn: fn(x, t, reduction="sum"), {"x": logits, "t": onehot}, ["x"])
        elif name == "yolo_sse":
            cases[name] = (lambda x, t, fn=fn: fn(torch.sigmoid(x), t, reduction="sum"),
                           {"x": logits, "t": onehot}, ["x"])
        elif name in ("l1", "l2", "smooth_l1"):
            cases[name] = (lambda p, t, fn=fn: fn(p, t, reduction="sum"),
                           {"p": torch.randn(n, 4, generator=g), "t": torch.randn(n, 4, generator=g)}, ["p"])
        elif name in ("iou", "giou", "diou", "ciou"):
            cases[name] = (lambda p, t, fn=fn: fn(p, t, reduction="sum"), {"p": pred_boxes, "t": boxes}, ["p"])
        elif name == "ap":
            cases[name] = (lambda x, t: ap_loss(x, t), {"x": logits, "t": rank_t}, ["x"])
        elif name == "alrp":
            cases[name] = (lambda x, t, e: sum(alrp_loss(x, t, e)),
                           {"x": logits, "t": rank_t, "e": torch.rand(num_pos, generator=g) * 1.5}, ["x", "e"])
        else:
            raise KeyError(f"gpu_check has no inputs for loss {name!r}: add them")
    weight = (torch.rand(n, generator=g) > 0.1).float()
    cases["focal_from_labels"] = (lambda x, t, w: sigmoid_focal_loss_from_labels(x, t, 0.25, 2.0, w),
                                  {"x": logits, "t": labels, "w": weight}, ["x"])
    return cases


def check_losses(report: Report, pair: Pair, quick: bool) -> None:
    sec = SECTIONS[0]
    g = torch.Generator().manual_seed(2)
    n, c = (512, 8) if quick else (4096, 20)
    cases = _loss_cases(n, c, g)
    if pair.cuda and not quick:  # the fused focal loss at RetinaNet scale: 2 x 100k anchors x 80 classes
        big = _loss_cases(200_000, 80, g)["focal_from_labels"]
        cases["focal_from_labels 200k x 80"] = big
    for name, (fn, inputs, grad_names) in cases.items():
        with report.guard(sec, f"loss {name}"):
            def run(d, fn=fn, inputs=inputs, grad_names=grad_names):
                xs = {k: v.to(d) for k, v in inputs.items()}
                for k in grad_names:
                    xs[k].requires_grad_()
                value = fn(**xs)
                value.backward()
                return value.detach().cpu(), [xs[k].grad.cpu() for k in grad_names]

            ref, out = pair.run(run)
            dv = _rel(out[0], ref[0])
            dg = max(_rel(o, r) for o, r in zip(out[1], ref[1], strict=True))
            tol = 1e-4 if "200k" in name else 2e-5
            report.add(sec, f"loss {name}", "PASS" if dv <= tol and dg <= 1e-4 else "FAIL",
                       f"value {float(ref[0]):.6g}, rel diff {dv:.1e}; gradient rel diff {dg:.1e}")


def _assigner_setups():
    """(name, criterion's assigner, priors, num_per_level, image size, needs pred_boxes)."""
    from minidet.models import build_model

    setups = []
    for name, family, opts, size in (("MaxIoU", "retinanet", {}, 512), ("ATSS", "retinanet", {"assigner": "atss"}, 512),
                                     ("SSD", "ssd", {}, 300), ("YOLO", "yolo", {}, 448)):
        model = build_model(family, 4, **opts).eval()
        with torch.no_grad():
            out = model(torch.zeros(1, 3, size, size))
        setups.append((name, model.criterion.assigner, out.priors, out.num_per_level, size, family == "yolo"))
    return setups


def check_assigners(report: Report, pair: Pair, quick: bool) -> None:
    from minidet.assigners import pad_gts

    sec = SECTIONS[0]
    g = torch.Generator().manual_seed(3)
    batch = 4 if quick else 8
    for name, assigner, priors, npl, size, yolo in _assigner_setups():
        with report.guard(sec, f"assigner {name}"):
            boxes, labels = [], []
            for i in range(batch):
                k = 0 if i == 1 else int(torch.randint(1, 30, (1,), generator=g))  # image 1: no gts
                boxes.append(_random_boxes(k, g, scale=size * 0.8, max_size=size * 0.4))
                labels.append(torch.randint(0, 4, (k,), generator=g))
            boxes[0][0] = torch.tensor([10.0, 10.0, 10.0, 30.0])  # a zero-area gt
            gt_boxes, gt_labels, gt_valid = pad_gts(boxes, labels)
            ig_boxes = _random_boxes(2 * batch, g, scale=size * 0.8, max_size=size * 0.3).view(batch, 2, 4)
            ig_valid = torch.ones(batch, 2, dtype=torch.bool)
            ig_valid[::2] = False
            pred = (priors + torch.randn(batch, *priors.shape, generator=g) * 4) if yolo else None

            def run(d, assigner=assigner, priors=priors, npl=npl, pred=pred,
                    gts=(gt_boxes, gt_labels, gt_valid), ignore=(ig_boxes, ig_valid)):
                kw = {"pred_boxes": pred.to(d)} if pred is not None else {}
                r = assigner.assign_batch(priors.to(d), npl, *(x.to(d) for x in gts),
                                          ignore=tuple(x.to(d) for x in ignore), **kw)
                return r.gt_inds.cpu(), r.labels.cpu(), r.max_iou.cpu()

            ref, out = pair.run(run)
            same = torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
            diou = _rel(out[2], ref[2])
            report.add(sec, f"assigner {name}", "PASS" if same and diou <= 1e-6 else "FAIL",
                       f"{priors.shape[0]} priors x {batch} images: assignments {'identical' if same else 'DIFFER'} "
                       f"({int((ref[0] > 0).sum())} positives, {int((ref[0] < 0).sum())} ignored), "
                       f"max_iou rel diff {diou:.1e}")


def check_step_syncs(report: Report, device: torch.device) -> None:
    sec = SECTIONS[0]
    import test_sync_budget as budget

    how = "CUDA sync debug mode" if device.type == "cuda" else "CPU mock, accelerator forms"
    for family in budget.FAMILIES:
        with report.guard(sec, f"host syncs per step: {family}"):
            sites = budget.count_step_syncs(family, device)
            mine = {s: n for s, n in sites.items() if budget._mine(s)}
            unknown = {s: n for s, n in sites.items() if s not in budget.KNOWN and s not in mine}
            per_step = sum(sites.values()) / budget.STEPS
            listing = ", ".join(f"{f}:{q} {n / budget.STEPS:g}" for (f, q), n in sorted(sites.items()))
            report.add(sec, f"host syncs per step: {family}", "FAIL" if mine or unknown else "PASS",
                       f"{how}: {per_step:g} per step, 0 in boxes / nms / losses / weighting / Criterion.forward"
                       if not mine else f"{how}: {per_step:g} per step; in the budget's files: {mine}")
            report.add(sec, f"  sync sites: {family}", "INFO", listing or "none")


# ---------------------------------------------------------------------------------- part 2


def check_bench_nms(report: Report, device: torch.device, quick: bool) -> None:
    import bench_nms

    sec = SECTIONS[1]
    sizes = (1000,) if quick else (1000, 5000, 20000)
    reps = 3 if quick else 10
    if device.type != "cuda":
        report.add(sec, "bench_nms --device cuda", "SKIP", "needs CUDA")
    with report.guard(sec, f"bench_nms --device {device.type}"):
        rows = bench_nms.run([device], sizes=sizes, reps=reps)
        for r in rows:
            report.add(sec, f"{r['device']} {r['op']} {r['boxes']} {r['layout']}", f"{r['ratio']:.2f}x",
                       f"minidet {r['minidet_ms']:.2f} ms, torchvision {r['torchvision_ms']:.2f} ms, "
                       f"kept {r['kept']} (same set as torchvision); ratio = minidet / torchvision")


# ---------------------------------------------------------------------------------- part 3


def _train(args: list[str], out: Path) -> tuple[int, dict, list[dict], float]:
    """minidet.train.main(args + --out out) with its output in out/log.txt -> (status, summary,
    training records, seconds)."""
    from minidet.train import main

    out.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        status = main([*args, "--out", str(out)])
    seconds = time.perf_counter() - t0
    (out / "log.txt").write_text(log.getvalue())
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    records = []
    if (out / "metrics.jsonl").is_file():
        records = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "train"]
    if status != 0:
        tail = " / ".join(log.getvalue().strip().splitlines()[-3:])
        raise RuntimeError(f"minidet.train exited with {status}: {tail}")
    return status, summary, records, seconds


def check_amp_training(report: Report, device: torch.device, quick: bool, workdir: Path) -> None:
    sec = SECTIONS[2]
    if quick:
        images, extra = 16, ["--img-size", "64", "--batch-size", "8", "--epochs", "1", "--warmup-iters", "2",
                             "--workers", "0", "--eval-interval", "1", "--shapes-val-images", "16"]
        iters = 2
    else:
        images, extra = 800, ["--epochs", "4", "--eval-interval", "4",
                              "--workers", "4" if device.type == "cuda" else "2"]
        iters = 200  # 800 images / batch 16 x 4 epochs
    common = ["--device", device.type, "--shapes-images", str(images), "--quiet", "--log-interval", "1", *extra]
    untrained_ap = None
    with report.guard(sec, "untrained model (--epochs 0)"):
        _, summary, _, seconds = _train([*common, "--epochs", "0"], workdir / "untrained")
        untrained_ap = summary["final"]["AP"]
        report.add(sec, "untrained model (--epochs 0)", "INFO", f"AP {untrained_ap:.4f} ({seconds:.0f} s)")
    for amp in ("fp16", "bf16"):
        check = f"--amp {amp}, {iters} iterations"
        if device.type != "cuda":
            report.add(sec, f"{check} on cuda", "SKIP", "needs CUDA; run on the CPU below")
        with report.guard(sec, f"{check} on {device.type}"):
            _, summary, records, seconds = _train([*common, "--amp", amp], workdir / amp)
            losses = [r["loss"] for r in records]
            finite = bool(losses) and all(math.isfinite(x) for x in losses)
            done = summary.get("iterations")
            report.add(sec, f"{check} on {device.type}: losses", "PASS" if finite and done == iters else "FAIL",
                       f"{len(losses)} logged steps, all finite: {finite}; iterations {done}; first / last loss "
                       f"{losses[0]:.3f} / {losses[-1]:.3f}; {seconds:.0f} s" if losses else "no training step logged")
            ap = summary["final"]["AP"]
            better = untrained_ap is not None and ap > untrained_ap
            result = "INFO" if quick else ("PASS" if better else "FAIL")
            report.add(sec, f"{check} on {device.type}: AP", result,
                       f"AP {ap:.4f} vs untrained " + ("n/a" if untrained_ap is None else f"{untrained_ap:.4f}")
                       + (" (quick: too few iterations to learn; not judged)" if quick else ""))


# ---------------------------------------------------------------------------------- part 4


def _shapes_pool(size: int, batch: int, batches: int, device: torch.device):
    """``batches`` collated batches of shapes images at size x size: images on the device, minidet
    targets (boxes on the device, labels on the CPU, as the trainer gives them) and torchvision
    targets (everything on the device)."""
    from minidet.data import EvalTransform, build_dataset
    from minidet.data.loader import collate

    spec = {"format": "shapes", "train": {"num_images": batch * batches, "image_size": size, "seed": 0}}
    ds = build_dataset(spec, "train", transform=EvalTransform(size))
    pool = []
    for k in range(batches):
        images, targets = collate([ds[k * batch + i] for i in range(batch)])
        images = images.to(device)
        ours = [{"boxes": t["boxes"].to(device), "labels": t["labels"],
                 "ignore_boxes": t["ignore_boxes"].to(device)} for t in targets]
        theirs = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        pool.append((images, ours, theirs))
    return pool, ds.num_classes


def _time_training(model, loss_fn, pool, device: torch.device, iters: int, warmup: int, amp: torch.dtype | None,
                   lr: float = 0.01) -> dict:
    """SGD (momentum 0.9, weight decay 1e-4) with AMP + GradScaler; linear warm-up of the lr over
    the first 100 steps from 0.001 x; the steps after ``warmup`` are timed."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    finite = torch.ones((), dtype=torch.bool, device=device)
    model.train()
    t0, first, last = None, None, None
    for it in range(warmup + iters):
        if it == warmup:
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, 0.001 + it / 100)
        images, ours, theirs = pool[it % len(pool)]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(images, ours, theirs)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        finite &= torch.isfinite(loss.detach())  # checked once at the end: no sync per step
        if it == 0:
            first = loss.detach()
        last = loss.detach()
    _sync(device)
    seconds = time.perf_counter() - t0
    batch = pool[0][0].shape[0]
    return {"img_per_s": iters * batch / seconds, "seconds": seconds, "finite": bool(finite),
            "first_loss": float(first), "last_loss": float(last),
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def check_r50(report: Report, device: torch.device, quick: bool) -> None:
    import torchvision
    from torchvision.models.detection import retinanet_resnet50_fpn

    from minidet.models import build_model

    sec = SECTIONS[3]
    cuda = device.type == "cuda"
    size, batch, iters, warmup = (512, 16, 200, 10) if cuda and not quick else (
        (512, 8, 20, 3) if cuda else (128, 2, 1 if quick else 5, 1))
    amp = torch.float16 if cuda else None  # fp16 autocast on the CPU is slow and not what is measured
    if not cuda:
        report.add(sec, "RetinaNet-R50 512 px AMP on cuda", "SKIP",
                   f"needs CUDA; a {size} px float32 smoke run on the CPU below (images/s only)")
    pool, num_classes = _shapes_pool(size, batch, 4, device)
    torch.backends.cudnn.benchmark = True
    results = {}
    for name in ("minidet", "torchvision"):
        check = f"{name} RetinaNet-R50 {size} px, batch {batch}, {iters} it{', AMP fp16' if amp else ''}"
        with report.guard(sec, check):
            torch.manual_seed(0)
            if name == "minidet":
                model = build_model("retinanet", num_classes, backbone="resnet50").to(device)

                def loss_fn(images, ours, theirs, model=model):
                    return model.loss(images, ours)["loss"]
            else:
                model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                               min_size=size, max_size=size).to(device)

                def loss_fn(images, ours, theirs, model=model):
                    return sum(model(list(images), theirs).values())
            r = _time_training(model, loss_fn, pool, device, iters, warmup, amp)
            results[name] = r
            mem = f"peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "peak memory n/a on cpu"
            report.add(sec, check, "PASS" if r["finite"] else "FAIL",
                       f"{r['img_per_s']:.1f} images/s, {mem}, loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}"
                       f"{'' if r['finite'] else ' (NON-FINITE loss)'}")
            del model, loss_fn
            if cuda:
                torch.cuda.empty_cache()
    if len(results) == 2:
        speed = results["minidet"]["img_per_s"] / results["torchvision"]["img_per_s"]
        detail = f"speed minidet / torchvision {speed:.2f}x"
        if cuda:
            detail += f", peak memory minidet / torchvision {results['minidet']['peak_gib'] / results['torchvision']['peak_gib']:.2f}x"
        report.add(sec, "ratio minidet / torchvision", f"{speed:.2f}x", detail + f" (torchvision {torchvision.__version__})")


# ------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="cuda (refused without a GPU) or cpu; default cuda when available")
    parser.add_argument("--quick", action="store_true", help="every part at reduced size")
    parser.add_argument("--out", default=str(HERE / "results" / "gpu_check.md"), help="where the table is written")
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    parser.add_argument("--budget-min", type=float, default=8.0,
                        help="skip the parts that start after this many minutes (default 8)")
    args = parser.parse_args(argv)
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    device = torch.device(name)
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    report = Report(f"minidet gpu_check on {what} (torch {torch.__version__}{', quick' if args.quick else ''})",
                    Path(args.out) if args.out else None)
    pair = Pair(device)
    start = time.perf_counter()
    plan = {
        1: lambda wd: (note_part1(report, pair), check_boxes(report, pair, args.quick), check_nms(report, pair, args.quick),
                       check_losses(report, pair, args.quick), check_assigners(report, pair, args.quick),
                       check_step_syncs(report, device)),
        2: lambda wd: check_bench_nms(report, device, args.quick),
        3: lambda wd: check_amp_training(report, device, args.quick, wd),
        4: lambda wd: check_r50(report, device, args.quick),
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for part in (1, 2, 3, 4):
            sec = SECTIONS[part - 1]
            if part not in args.parts:
                report.add(sec, "(part)", "SKIP", "not selected (--parts)")
                continue
            minutes = (time.perf_counter() - start) / 60
            if minutes > args.budget_min:
                report.add(sec, "(part)", "SKIP", f"time budget: {minutes:.1f} min used of {args.budget_min:g}")
                continue
            print(f"{sec} ...", flush=True)
            t0 = time.perf_counter()
            with report.guard(sec, "(part)"):
                plan[part](Path(tmp) / f"part{part}")
            report.add(sec, "(part time)", "INFO", f"{time.perf_counter() - t0:.0f} s")
            report.write()
    report.add("total", "time", "INFO", f"{(time.perf_counter() - start) / 60:.1f} min")
    report.write()
    print()
    print(report.markdown())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
