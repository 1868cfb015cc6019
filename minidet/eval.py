"""Evaluate a trained detector on a dataset, or any detector's COCO result files.

    python -m minidet.eval --weights runs/shapes/best.pt                     # shapes val split
    python -m minidet.eval --weights CKPT --data datasets/coco2017.yaml --metrics coco lrp
    python -m minidet.eval --gt instances_val.json --results detections.json

With --weights the model's detections (in original image pixels) become a COCO results list
(original category ids, full-precision floats), written as predictions.json, and are scored
against the dataset's own COCO ground truth: for COCO data the annotation file's entries as
written (crowd regions only affect their own category, gt areas are the annotations' "area"
field), for VOC / YOLO / shapes data one built from the annotations (VOC difficult objects as
crowd regions of their class, i.e. ignored). That is the same computation as --gt/--results, and
the same one training's validation runs, so pycocotools on (annotation file, predictions.json)
gives the same 12 numbers. --metrics voc / voc07 add the VOC devkit's mAP@0.5 (difficult objects,
or COCO crowd regions, ignored), lrp adds oLRP.

Prints the COCO table (and VOC mAP / LRP with --metrics) and, with --weights, a per-class AP
table; writes metrics.json (and, with --weights, predictions.json and the figures of
minidet.evaluation.figures: pr_curves.png, confusion_matrix.png, val_labels.jpg,
val_predictions.jpg) to --out. With --gt/--results,
--backend pycocotools / faster-coco-eval runs that tool instead, after the same validation of the
files (an unknown image or category id is a clear error, not the tool's assertion).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .cli import HelpFormatter
from .configuration import ConfigError, check_device
from .data import EvalTransform, build_dataset, build_loader
from .data.problems import CountSkips, DataError
from .engine.checkpoint import CheckpointError, model_from_checkpoint
from .engine.precision import amp_dtype as amp_dtype_of
from .evaluation import coco_evaluate, format_table
from .evaluation.coco import ResultsError, load_coco_boxes
from .evaluation.detector_eval import evaluate_detector
from .evaluation.figures import write_evaluation_figures
from .evaluation.lrp import lrp_from_boxes
from .evaluation.per_class import per_class_results, per_class_table

METRICS = ("coco", "voc", "voc07", "lrp")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minidet.eval", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--weights", help="checkpoint of a minidet model (model + config + class names)")
    p.add_argument("--data", default=None, help="dataset YAML, dataset folder or 'shapes' (default: the checkpoint's "
                   "training data if it recorded one, else shapes)")
    p.add_argument("--format", choices=["coco", "voc", "yolo"], default=None,
                   help="format of a dataset folder (default: its dataset.yaml / Ultralytics data.yaml, else guessed "
                   "from the layout); must agree with a dataset YAML")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--img-size", type=int, default=None, help="letterbox size (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch")
    p.add_argument("--workers", type=int, default=0, help="data loading processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--score-thresh", type=float, default=None, help="override the model's score threshold")
    p.add_argument("--amp", default=None, nargs="?", const="fp16", choices=["fp16", "bf16", "off"],
                   help="predict under autocast: --amp (float16), --amp bf16, or off (float32) (default: the "
                   "precision the checkpoint's run trained and evaluated with; float32 for weights without one)")
    p.add_argument("--lenient", action="store_true", help="skip broken annotations / images instead of stopping")
    p.add_argument("--raw-weights", action="store_true", help="evaluate the optimizer's own weights of a last.pt "
                   "(default: the weights training evaluated, the EMA when the run kept one)")
    p.add_argument("--gt", help="COCO ground-truth JSON (evaluate result files without a model)")
    p.add_argument("--results", help="COCO results JSON (with --gt)")
    p.add_argument("--backend", choices=["minidet", "pycocotools", "faster-coco-eval"], default="minidet",
                   help="COCO evaluation implementation (--gt/--results mode)")
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=["coco"], help="metrics to report")
    p.add_argument("--out", default="runs/eval", help="folder for predictions.json and metrics.json")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write the figures (PR curves, confusion matrix, mosaics) beside them (default on)")
    args = p.parse_args(argv)
    if bool(args.gt) != bool(args.results):
        p.error("--gt and --results go together")
    if not args.gt and not args.weights:
        p.error("give --weights CKPT (evaluate a model) or --gt GT.json --results RESULTS.json")
    return args


def evaluate_files(args) -> dict:
    stats = coco_evaluate(args.gt, args.results, backend=args.backend)
    print(format_table(stats))
    metrics = {"coco": stats}
    if "lrp" in args.metrics:
        dts, gts, n_cats = load_coco_boxes(args.gt, args.results)
        metrics["lrp"] = lrp_from_boxes(dts, gts, n_cats)[0]
        print("oLRP {oLRP:.3f} (loc {oLRP_loc:.3f}, FP {oLRP_FP:.3f}, FN {oLRP_FN:.3f})".format(**metrics["lrp"]))
    return metrics


def evaluate_model(args) -> dict:
    device = torch.device(args.device)
    model, ckpt = model_from_checkpoint(args.weights, map_location="cpu", raw=args.raw_weights)
    print(f"weights: {args.weights}: {model.weights_used}")
    model.to(device).eval()
    if args.score_thresh is not None:
        model.postprocess.score_thresh = args.score_thresh
    size = args.img_size or ckpt.get("img_size") or 512
    data = args.data or ckpt.get("data") or "shapes"
    dataset = build_dataset(data, args.split, strict=not args.lenient, transform=EvalTransform(size), fmt=args.format)
    if dataset.report.total:
        print(dataset.report.summary())
    if dataset.num_classes != model.num_classes:
        raise DataError(f"the checkpoint predicts {model.num_classes} classes ({model.class_names}) but {data} has "
                        f"{dataset.num_classes} ({dataset.class_names}) — evaluate on the data it was trained for")
    loader = CountSkips(build_loader(dataset, args.batch_size, train=False, workers=args.workers,
                                     size_divisor=getattr(model, "size_divisor", 32)), dataset.report)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one letterbox size: the fastest kernels are chosen once
    amp = args.amp or (ckpt.get("args") or {}).get("amp") or "off"
    if amp != "off":
        print(f"precision: {amp} autocast{'' if args.amp else ' (as the run trained; --amp off for float32)'}")
    amp_dtype = amp_dtype_of(amp)
    ev = evaluate_detector(model, dataset, loader, device, metrics=args.metrics, progress=True,
                           desc=f"eval {args.split}", amp_dtype=amp_dtype)
    print(format_table(ev.stats))
    per_class = per_class_results(ev)
    print(per_class_table(per_class))
    metrics = {"coco": ev.stats, "AP_per_IoU": ev.ap_per_iou(), "per_class_AP": ev.per_class(),
               "per_class": per_class, "images": ev.images,
               "seconds": ev.seconds}
    for name, result in ev.voc.items():
        metrics[name] = result
        print(f"VOC mAP@0.5 ({'11-point' if name == 'voc07' else 'all-point'}): {result['mAP']:.4f}")
    if ev.lrp is not None:
        metrics["lrp"] = ev.lrp
        print("oLRP {oLRP:.3f} (loc {oLRP_loc:.3f}, FP {oLRP_FP:.3f}, FN {oLRP_FN:.3f})".format(**ev.lrp))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(ev.results))  # exactly the list evaluated
    n, seconds = ev.images, ev.seconds
    print(f"{n} images in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} img/s); wrote {out / 'predictions.json'}")
    if args.plots:
        print("figures: " + ", ".join(str(f) for f in write_evaluation_figures(ev, dataset, out)))
    return metrics


def check_flags(args) -> None:
    """Refuse values that cannot work, naming the flag (ConfigError)."""
    if args.img_size is not None and args.img_size < 32:
        raise ConfigError(f"--img-size must be at least 32 pixels, got {args.img_size}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    if args.score_thresh is not None and not 0 <= args.score_thresh < 1:
        raise ConfigError(f"--score-thresh must be in [0, 1), got {args.score_thresh}")
    check_device(args.device)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_flags(args)
        metrics = evaluate_files(args) if args.gt else evaluate_model(args)
    except (DataError, ResultsError, CheckpointError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
