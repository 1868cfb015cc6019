"""Train a detector: ``python -m minidet.train`` (also ``minidet-train``).

With no flags it trains the default small RetinaNet on the built-in shapes dataset on CUDA when
available, else on the CPU, and ends with a COCO AP table and a checkpoint in runs/. Every flag
has a default and help; ``--config train/RECIPE.yaml`` loads a recipe whose keys are these
flags (flags given on the command line win). Multi-GPU / multi-node:
``torchrun --nproc_per_node=N -m minidet.train ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import yaml

from .anchor_fit import fit_for_config
from .class_sizes import class_sizes, plan_img_size
from .configuration import (
    ANCHOR_MODES,
    PRESETS,
    ConfigError,
    changes,
    check_device,
    model_options,
    preset_values,
    resolve,
)
from .data import EvalTransform, TrainTransform, build_dataset
from .data.loader import train_batches
from .data.mosaic import Mosaic
from .data.problems import DataError
from .data.transforms import AUGMENTS
from .distributed import barrier, cleanup, init_distributed, is_main
from .engine.checkpoint import (
    CheckpointError,
    checkpoint_weights,
    load_checkpoint,
    load_matching_state,
)
from .engine.precision import AMP_CHOICES, resolve_amp
from .engine.resources import plan_cpu_use
from .engine.run_plan import RunPlan, plan_run
from .engine.run_state import seed_everything
from .engine.trainer import Trainer, TrainingError
from .evaluation.per_class import lagging_class_warnings, per_class_results, per_class_table
from .losses import CLASSIFICATION_LOSSES, RANKING_LOSSES, REGRESSION_LOSSES
from .models import BACKBONES, FAMILIES, build_model
from .models.backbones import PretrainedWeightsError
from .weighting import WEIGHTINGS


def _ratio(text: str) -> float | str:
    if text == "all":  # kept as the text: None would read as "unset" and give the family's 3:1
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


class _KeyValues(argparse.Action):
    """KEY=VALUE ... -> {key: value}, each value read as YAML (a number, true / false, a list)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        out = {}
        for text in values:
            key, sep, value = text.partition("=")
            if not sep or not key.isidentifier():
                parser.error(f"{option_string}: expected KEY=VALUE, got {text!r}")
            out[key] = yaml.safe_load(value)
        setattr(namespace, self.dest, out)


def _int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """Every flag defaults to unset (None): minidet.configuration resolves the value."""
    p = argparse.ArgumentParser(prog="python -m minidet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=None)
    a = p.add_argument
    flag = {"action": argparse.BooleanOptionalAction}
    a("--config", help="recipe YAML whose keys are these flags (flags given here win); replaces the preset")
    a("--preset", choices=list(PRESETS), help="named defaults: 'small' (the tuned tiny-backbone CPU setup of the "
      "no-flag run; the default without --config) or 'none' (the family's published defaults)")
    a("--model", choices=list(FAMILIES), help="detector family (default retinanet)")
    a("--backbone", choices=list(BACKBONES), help="backbone network (default: tiny)")
    a("--pretrained", **flag, help="start the backbone from torchvision's ImageNet weights (needs network)")
    a("--data", help="dataset YAML, dataset folder (COCO / VOC / YOLO tree) or 'shapes' (default)")
    a("--format", choices=["coco", "voc", "yolo"], help="format of a --data folder (default: its dataset.yaml / "
      "Ultralytics data.yaml, else guessed from the layout); must agree with a dataset YAML")
    a("--train-split", help="split to train on (default train)")
    a("--val-split", help="split to evaluate on ('none' to skip evaluation; default val)")
    a("--shapes-images", type=int, help="training images of the built-in shapes data (default 2000)")
    a("--shapes-val-images", type=int, help="validation images of the built-in shapes data (default 200)")
    a("--lenient", **flag, help="skip and count broken images / annotations instead of stopping")
    a("--img-size", type=_int_or_auto, help="training and evaluation image size, square, or 'auto': the size at "
      "which every class's median training box (classes with >= 1%% of the boxes) and the 10th-percentile box reach "
      "2 x the smallest stride, within the images' own size and 640 px (minidet.class_sizes) (default: auto for custom --data; the built-in shapes: preset small "
      "128; RetinaNet 512, SSD 300, YOLO 448)")
    a("--augment", choices=list(AUGMENTS), help="training augmentation: standard (scale jitter 0.6-1.4, crop, "
      "flip, colour), strong (scale jitter 0.5-1.5, half of the crops keeping every box, Ultralytics' colour gains) "
      "or ssd (SSD's photometric distortion, zoom out, min-IoU crop; SSD's default)")
    a("--scale-jitter", type=float, nargs=2, metavar=("MIN", "MAX"), help="random scale range of the standard / "
      "strong augmentation (default: standard 0.6 1.4, strong 0.5 1.5; preset small 0.8 1.25)")
    a("--anchors", choices=list(ANCHOR_MODES), help="auto: fit the RetinaNet anchor sizes (and, with the Max-IoU "
      "assigner, aspect ratios) to the training boxes at --img-size (k-means with 1 - IoU, as YOLOv2; see "
      "minidet/anchor_fit.py), kept in the run's configuration; --anchor-sizes / --anchor-ratios given win. SSD keeps "
      "its default boxes, YOLO v1 has none. default: the preset's / family's anchors. Default: auto for custom --data "
      "(their object sizes are unknown: the default anchors were chosen for COCO or the shapes data), default for "
      "the built-in shapes (the small preset's anchors are tuned on them)")
    a("--mosaic", type=float, metavar="P", help="probability that a training image becomes a mosaic of four "
      "(YOLOv4 / Ultralytics), except in the last 10%% of the epochs (at least one: Ultralytics' close_mosaic ends "
      "training on whole images, as evaluation sees them). Default: 0.5 for custom --data (more objects and "
      "contexts per image for small data sets; half of the images stay whole for the short default schedules), "
      "0 for the built-in shapes")
    a("--epochs", type=int, help="training epochs (default 12); or give --iters")
    a("--iters", type=int, metavar="N", help="train exactly this many optimizer steps instead of --epochs: ceil(N / batches "
      "per epoch) epochs, the last one ending at step N; the schedule, --lr-steps and the warmup cap are over N "
      "(default: unset, --epochs decides)")
    a("--batch-size", type=int, help="images per batch per process (default 16)")
    a("--optimizer", choices=["sgd", "adamw"], help="optimizer (default: preset small adamw, else sgd)")
    a("--lr", type=float, help="base learning rate, for --base-batch images (default: SGD 0.01, AdamW 0.003; "
      "preset small 0.006)")
    a("--base-batch", type=int, help="images per step (all processes) that --lr is given for; the optimizer "
      "uses lr x images per step / base-batch (default: SGD 16, AdamW unset = no scaling)")
    a("--momentum", type=float, help="SGD momentum (default 0.9)")
    a("--weight-decay", type=float, help="weight decay of conv / linear weights (never of norms, biases or loss "
      "parameters; default: SGD 1e-4, AdamW 0.05)")
    a("--schedule", choices=["step", "cosine", "constant"], help="learning-rate schedule (default: step; preset "
      "small cosine)")
    a("--lr-steps", type=float, nargs="+", metavar="EPOCH", help="epochs at which the step schedule multiplies "
      "the lr by 0.1 (default: 8/12 and 11/12 of the run)")
    a("--warmup-iters", type=int, help="linear warmup iterations from 0.001 x lr, at most 10%% of the run's "
      "iterations (detectron2's 1000 / mmdetection's 500 are tuned for 90k-iteration runs; default 500; "
      "preset small 100)")
    a("--clip-grad", type=float, help="max gradient norm, 0: no clipping (default 0; preset small 10)")
    a("--ema", **flag, help="keep an EMA of the weights for evaluation (default: off; preset small on)")
    a("--cls-loss", choices=[*CLASSIFICATION_LOSSES, *RANKING_LOSSES], help="classification loss (default: the "
      "family's: focal / ce / yolo_sse); the ranking losses ap, alrp train RetinaNet")
    a("--reg-loss", choices=list(REGRESSION_LOSSES), help="regression loss (default: the family's: "
      "l1 / smooth_l1 / l2; preset small RetinaNet giou)")
    a("--assigner", help="maxiou or atss (RetinaNet), ssd or maxiou (SSD), yolo (default: the family's: "
      "maxiou / ssd / yolo; preset small RetinaNet atss)")
    a("--assigner-option", dest="assigner_options", nargs="+", action=_KeyValues, metavar="KEY=VALUE",
      help="the assigner's constructor arguments, e.g. pos_iou_thr=0.6 neg_iou_thr=0.5 (Max-IoU) or topk=15 (ATSS)")
    a("--anchor-sizes", type=int, nargs=5, metavar="SIZE", help="RetinaNet anchor base sizes for P3-P7 "
      "(default: 32..512; ATSS 8 x stride; preset small 16..256)")
    a("--anchor-scales", type=float, nargs="+", metavar="S", help="RetinaNet anchor scales per base size "
      "(default: 2^0, 2^(1/3), 2^(2/3); ATSS: 1)")
    a("--anchor-ratios", type=float, nargs="+", metavar="R", help="RetinaNet anchor aspect ratios h/w "
      "(default: 0.5 1 2; ATSS: 1)")
    a("--coder-stds", type=float, nargs=4, metavar="STD", help="RetinaNet box-delta standard deviations "
      "(default 1 1 1 1)")
    a("--head-convs", type=int, metavar="N", help="3x3 convolutions in each RetinaNet head tower, classification "
      "and box (default: 4; tiny backbone 2; preset small 1)")
    a("--head-norm", choices=["gn", "none"], help="GroupNorm in the RetinaNet head towers (default none; "
      "preset small gn)")
    a("--frozen-stages", type=int, help="ResNet: freeze the stem (1) and the first k - 1 stages (default: 2, "
      "stem + stage 1, with --pretrained, else 0)")
    a("--frozen-bn", **flag, help="ResNet: frozen BatchNorm (default: on with --pretrained)")
    a("--ignore-iof-thr", type=float, metavar="T",
      help="priors whose intersection over their own area with a crowd / difficult region exceeds T are ignored, "
      "not background (mmdetection's ignore_iof_thr; default 0.5); a negative value turns this off (crowd pixels "
      "then train as background, as torchvision's and detectron2's references do)")
    a("--weighting", choices=list(WEIGHTINGS), help="loss-weighting scheme (default: the family's)")
    a("--weighting-option", dest="weighting_options", nargs="+", action=_KeyValues, metavar="KEY=VALUE",
      help="the weighting scheme's constructor arguments, e.g. init=20 (self_balance)")
    a("--alwa-interval", type=int, help="ALWA window C in iterations (default 100)")
    a("--loss-weights", type=float, nargs=2, metavar=("CLS", "REG"),
      help="fixed classification / regression loss weights (implies --weighting fixed), or ALWA's initial weights")
    a("--neg-pos-ratio", type=_ratio, metavar="R|all",
      help="SSD hard negative mining: negatives kept per positive, or 'all' (no mining; default 3)")
    a("--normalizer-momentum", type=float, metavar="M",
      help="RetinaNet / SSD: divide the losses by an EMA of the number of positives (momentum M, e.g. 0.9 as "
      "detectron2's RetinaNet) instead of the batch's own count (default)")
    a("--alrp-iou", choices=["giou", "iou"],
      help="aLRP Loss localisation error: 1 - GIoU (default), or 2 (1 - IoU)")
    a("--amp", nargs="?", const="fp16", choices=list(AMP_CHOICES),
      help="mixed precision: --amp (float16 + GradScaler, CUDA), bf16, off (float32), or auto: bf16 where the "
      "device computes it natively (a CPU with AVX512-BF16 / AMX, an Ampere or later GPU), else float32 — see "
      "minidet/engine/precision.py; chosen once, saved with the run (default: off; preset small auto)")
    a("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    a("--workers", type=_int_or_auto, help="DataLoader processes per training process, or 'auto' (default: on CPU "
      "none up to 2 cores, else cores / 4 (at most 4), the other cores for the network's threads; on CUDA up to 8)")
    a("--sync-bn", **flag, help="SyncBatchNorm across processes (DDP)")
    a("--channels-last", **flag, help="run the network in channels-last memory format (faster convolutions on "
      "recent GPUs with AMP; default off)")
    a("--out", help="run folder (default: runs/<model>-<data>-<time>)")
    a("--resume", help="continue a run from its last.pt: its saved configuration, except flags given now")
    a("--weights", help="start a new run from a checkpoint (fine-tuning); class layers are re-initialised when "
      "the class count differs")
    a("--eval-interval", type=_int_or_auto, help="evaluate every N epochs and after the last, or 'auto': about 10 "
      "evaluations per run, every ceil(epochs / 10) epochs (default: auto for custom --data; preset small 4; 1)")
    a("--log-interval", type=int, help="log every N iterations (default 10)")
    a("--max-bad-steps", type=int, help="stop after this many consecutive non-finite losses (default 10)")
    a("--diagnostics", **flag, help="log positives per image, the classification score / IoU "
      "correlation of positives and the negative / positive gradient ratio of the classification logits")
    a("--tensorboard", **flag, help="also log to TensorBoard (needs the tensorboard package)")
    a("--plots", **flag, help="draw results.png and the final evaluation's figures (PR curves, confusion matrix, "
      "mosaics) into the run folder (default on; --no-plots: numbers only, for sweeps)")
    a("--seed", type=int, help="random seed (default 0)")
    a("--quiet", **flag, help="no progress bars")
    return p


def read_recipe(path: str | Path, parser: argparse.ArgumentParser | None = None) -> dict:
    """A recipe's keys as flag names (dashes -> underscores); a clear error for unknown keys."""
    parser = parser or build_parser()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: recipe not found: {path}")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config: {path} is not valid YAML ({err})") from None
    if not isinstance(recipe, dict):
        raise ConfigError(f"--config: {path} must hold 'flag: value' lines")
    recipe = {k.replace("-", "_"): v for k, v in recipe.items()}
    known = {a.dest for a in parser._actions}
    unknown = [k for k in recipe if k not in known or k in ("config", "resume")]
    if unknown:
        raise ConfigError(f"--config: {path}: unknown keys {unknown}; the keys of a recipe are the flags of "
                          f"python -m minidet.train")
    return recipe


def given_flags(argv=None) -> dict:
    """The flags given on the command line (unset ones left out)."""
    return {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}


def parse_args(argv=None, saved: dict | None = None) -> argparse.Namespace:
    """Flags > saved configuration (resume) > recipe > preset > family > optimizer > engine
    defaults (minidet.configuration), as one namespace with every key set."""
    parser = build_parser()
    flags = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        recipe = read_recipe(flags["config"], parser) if "config" in flags else None
    except ConfigError as err:
        parser.error(str(err))
    cfg = resolve({k: v for k, v in flags.items() if k != "config"}, recipe, saved)
    cfg["config"] = flags.get("config")
    return argparse.Namespace(**cfg)


def validate(args: argparse.Namespace) -> None:
    """Refuse values that cannot work, naming the flag (ConfigError)."""
    def need(ok: bool, text: str) -> None:
        if not ok:
            raise ConfigError(text)

    need(args.img_size == "auto" or args.img_size >= 32, f"--img-size must be at least 32 pixels, got {args.img_size}")
    need(args.epochs is None or args.epochs >= 0, f"--epochs must be >= 0, got {args.epochs}")
    need(args.iters is None or args.iters >= 1, f"--iters must be >= 1 (optimizer steps), got {args.iters}")
    need(args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}")
    need(args.eval_interval == "auto" or args.eval_interval >= 1, f"--eval-interval must be >= 1 (epochs between evaluations), got {args.eval_interval}; "
         f"use --val-split none to skip evaluation")
    need(args.log_interval >= 1, f"--log-interval must be >= 1, got {args.log_interval}")
    need(args.max_bad_steps >= 1, f"--max-bad-steps must be >= 1, got {args.max_bad_steps}")
    need(args.lr > 0, f"--lr must be > 0, got {args.lr}")
    need(args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}")
    need(args.warmup_iters >= 0, f"--warmup-iters must be >= 0, got {args.warmup_iters}")
    need(args.clip_grad >= 0, f"--clip-grad must be >= 0 (0: no clipping), got {args.clip_grad}")
    need(args.workers == "auto" or args.workers >= 0, f"--workers must be >= 0 or auto, got {args.workers}")
    need(args.shapes_images >= 1, f"--shapes-images must be >= 1, got {args.shapes_images}")
    need(args.shapes_val_images >= 1, f"--shapes-val-images must be >= 1, got {args.shapes_val_images}")
    need(args.base_batch is None or args.base_batch >= 1, f"--base-batch must be >= 1, got {args.base_batch}")
    need(args.alwa_interval >= 1, f"--alwa-interval must be >= 1, got {args.alwa_interval}")
    need(args.frozen_stages >= 0, f"--frozen-stages must be >= 0, got {args.frozen_stages}")
    momentum = getattr(args, "normalizer_momentum", None)  # (a RetinaNet / SSD flag)
    need(momentum is None or 0 <= momentum < 1, f"--normalizer-momentum must be in [0, 1), got {momentum}")
    need(0 <= args.mosaic <= 1, f"--mosaic is a probability in [0, 1], got {args.mosaic}")
    if args.scale_jitter is not None:
        lo, hi = args.scale_jitter
        need(0 < lo <= hi, f"--scale-jitter MIN MAX needs 0 < MIN <= MAX, got {lo:g} {hi:g}")
    if getattr(args, "head_convs", None) is not None:
        need(args.head_convs >= 0, f"--head-convs must be >= 0, got {args.head_convs}")
    if args.lr_steps and args.epochs is not None:  # (with --iters the trainer checks them)
        need(all(0 < s <= args.epochs for s in args.lr_steps),
             f"--lr-steps must lie in (0, --epochs {args.epochs}], got {args.lr_steps}")
    check_device(args.device)


def run_dir_for(args) -> Path:
    if args.out:
        return Path(args.out)
    data = Path(str(args.data)).stem if args.data != "shapes" else "shapes"
    return Path("runs") / f"{args.model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def data_spec(args):
    """--data as build_dataset takes it (paths absolute, so that a checkpoint evaluates from any
    folder); the default shapes data is rendered at --img-size."""
    if args.data in (None, "shapes"):
        return {"format": "shapes", "_source": "shapes",
                "train": {"num_images": args.shapes_images, "image_size": args.img_size, "seed": 0},
                "val": {"num_images": args.shapes_val_images, "image_size": args.img_size, "seed": 0}}
    return str(Path(args.data).resolve()) if isinstance(args.data, str) else args.data


def configure(argv=None) -> tuple[argparse.Namespace, dict | None, list[str]]:
    """Parse, resolve and check the configuration -> (args, resume checkpoint or None, the
    changes the flags made to a resumed run's saved configuration)."""
    flags = given_flags(argv)
    resume, saved, changed = None, None, []
    if flags.get("resume"):
        resume = load_checkpoint(flags["resume"])
        saved = resume.get("args")
        if not isinstance(saved, dict) or "optimizer" not in resume:
            raise CheckpointError(f"--resume {flags['resume']}: this checkpoint holds weights only (no training "
                                  f"state to continue); start a new run from it with --weights {flags['resume']}")
        saved = {k: v for k, v in saved.items() if k not in ("_given", "data_spec", "config", "loader_workers")}
    args = parse_args(argv, saved)
    if saved is not None:
        changed = changes(parse_args([], saved).__dict__ | {"resume": None}, vars(args))
    if isinstance(args.data, str) and args.data != "shapes" and Path(args.data).exists():
        args.data = str(Path(args.data).resolve())  # stored absolute: resume and eval work from any folder
    validate(args)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args, resume, changed


def class_warnings(per_class: dict, train_set, args) -> list[str]:
    """Warnings for classes far below the others, with their box size at the training size."""
    stride = FAMILIES[args.model].strides[0]
    sizes = class_sizes(train_set.records, train_set.class_names)
    median_px = {c.name: c.median_px(args.img_size) for c in sizes}
    fix = {c.name: max(args.img_size, math.ceil(2 * stride / c.median_px(1) / 32) * 32) for c in sizes if c.boxes}
    return lagging_class_warnings(per_class, median_px, args.img_size, stride, fix)


def build_datasets(args):
    """(train set with its augmentation, val set or None); settles ``--img-size auto`` first
    (saved as the number: resume and evaluation use the same size)."""
    train_set = build_dataset(data_spec(args), args.train_split, strict=not args.lenient, fmt=args.format)
    if args.img_size == "auto":
        plan = plan_img_size(train_set.records, train_set.class_names, stride=FAMILIES[args.model].strides[0])
        args.img_size = plan.size
        if is_main():
            print(f"img size auto: {plan.size} (every class's median training box and the 10th-percentile box "
                  f"at >= 2 x the smallest stride, at most {plan.cap} = {plan.cap_reason}; --img-size N to "
                  "choose); per class:\n" + "\n".join(plan.lines))
    train_set.transform = TrainTransform(args.img_size, ssd=args.augment == "ssd", seed=args.seed,
                                         strong=args.augment == "strong",
                                         scale=tuple(args.scale_jitter) if args.scale_jitter else None)
    train_set.aug_seed = args.seed  # an item is then a function of (seed, epoch, index): resume repeats it
    val_set = None
    if args.val_split != "none":
        val_set = build_dataset(data_spec(args), args.val_split, strict=not args.lenient,
                                transform=EvalTransform(args.img_size), fmt=args.format)
    if is_main():
        for name, ds in (("train", train_set), ("val", val_set)):
            if ds is not None and ds.report.total:
                print(f"{name} data: {ds.report.summary()}")
    return train_set, val_set


def plan_training(args, train_set, world: int) -> RunPlan:
    """The run's plan (``plan_run``) for the training set under ``world`` processes, its lines
    printed, and the training set's mosaic (``--mosaic``), off in the last tenth of the plan's
    epochs (at least one)."""
    batches = train_batches(len(train_set), args.batch_size, world)
    if batches == 0:
        raise TrainingError(f"the training split has {len(train_set)} image(s) for {world} process(es): too few "
                            f"for one training batch (a last batch of a single image per process is dropped unless "
                            f"--batch-size is 1) — add images", every_process=True)
    plan, lines = plan_run(args, batches)
    if is_main() and lines:
        print("\n".join(lines))
    if args.mosaic > 0:
        epochs, close = plan.epochs, max(1, round(plan.epochs / 10))
        train_set.mosaic = Mosaic(size=args.img_size, p=args.mosaic, until_epoch=epochs - close, seed=args.seed)
        if is_main():
            print(f"mosaic: p {args.mosaic:g} in epochs 1-{epochs - close}, whole images in the last {close}"
                  if epochs > close else f"mosaic: off ({epochs} epoch(s): the last {close} use whole images)")
    return plan


def build_training_model(args, train_set, resume: dict | None, world: int, plan: RunPlan) -> torch.nn.Module:
    """The detector of the configuration: anchors fitted to the data (``--anchors auto``, a new
    run only), SyncBatchNorm under DDP with ``--sync-bn``, and the ``--weights`` it fine-tunes.
    A self-balancing weighting's period defaults to one epoch of ``plan``."""
    if args.anchors == "auto" and resume is None:  # (a resumed run keeps its saved, fitted anchors)
        summary = fit_for_config(vars(args), train_set.records, preset_values(vars(args)), train_set.class_names)
        if is_main():
            print(summary)
    model = build_model(args.model, train_set.num_classes, backbone=args.backbone, pretrained=args.pretrained,
                        sb_period=plan.batches_per_epoch, **model_options(vars(args)))
    if args.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.weights and resume is None:
        ckpt = load_checkpoint(args.weights)
        source = ckpt.get("config", {})
        if is_main() and (source.get("name"), source.get("backbone")) != (args.model, args.backbone):
            print(f"note: {args.weights} is a {source.get('name')} on {source.get('backbone')}, the new model a "
                  f"{args.model} on {args.backbone}: only the tensors whose names and shapes match are loaded")
        weights, what = checkpoint_weights(ckpt)  # a last.pt's EMA when it has one, as evaluation uses
        if is_main():
            print(f"fine-tuning from {args.weights}: {what}")
        load_matching_state(model, weights, verbose=is_main())
    return model


def report_run(args, trainer: Trainer, result: dict, final: dict | None, minutes: float, train_set,
               this_part: float | None = None) -> None:
    """Rank 0 after training: the final COCO table, per-class AP and warnings, summary.json and
    where the checkpoints are. ``minutes``: the run's training wall clock over every resumed part;
    ``this_part``: since the resume, when it was resumed."""
    run_dir = trainer.run_dir
    summary = {"best_AP": result["best_ap"], "iterations": result["iterations"], "minutes": round(minutes, 2)}
    if final is not None:
        from .evaluation import format_table

        print(format_table(final))
        summary["final"] = final
        per_class = per_class_results(trainer.last_evaluation)
        summary["per_class"] = per_class
        print(per_class_table(per_class))
        for line in class_warnings(per_class, train_set, args):
            print(line)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    written = [str(run_dir / "last.pt")] if (run_dir / "last.pt").is_file() else []
    if (run_dir / "best.pt").is_file():
        written.append(f"{run_dir / 'best.pt'} (AP {result['best_ap']:.4f})")
    since = f" ({this_part:.1f} min since the resume)" if this_part is not None else ""
    print(f"done in {minutes:.1f} min{since}; " + (f"checkpoints: {', '.join(written)}" if written else
                                                   "no checkpoint was written (no training epoch ran)"))
    if train_set.report.skipped_files:  # lenient: images found unreadable while loading
        print(f"train data: {train_set.report.summary()}")


def main(argv=None) -> int:
    try:
        args, resume, changed = configure(argv)
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rank, local_rank, world = init_distributed(args.device)
    device = torch.device(f"cuda:{local_rank}" if args.device.startswith("cuda") and world > 1 else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed training / evaluation sizes: pick the fastest kernels once
    auto_amp = args.amp == "auto"
    args.amp = resolve_amp(args.amp, device)  # (saved resolved: a resumed run keeps its precision)
    if auto_amp and is_main():
        print(f"amp auto: {args.amp} on this {device.type} (--amp off for float32)")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    threads, args.loader_workers = plan_cpu_use(device, args.workers, local_world)
    seed_everything(args.seed + rank)
    try:
        run_dir = Path(args.resume).parent if args.resume else run_dir_for(args)
        train_set, val_set = build_datasets(args)
        plan = plan_training(args, train_set, world)
        model = build_training_model(args, train_set, resume, world, plan)
        model.to(device)
        config = dict(model.config)
        if is_main():
            print(f"model: {args.model} ({args.backbone}), {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
                  f"parameters; {len(train_set)} training images, {train_set.num_classes} classes; run folder {run_dir}")
            print(f"{device.type}: {threads} thread(s) per process, {args.loader_workers} DataLoader worker(s)")
        args.data_spec = data_spec(args)  # what evaluation of the checkpoint must load again
        trainer = Trainer(args, model, plan, train_set, val_set, run_dir, device, train_set.class_names, config)
        resolved = {k: v for k, v in {**vars(args), **plan.saved_values()}.items()
                    if k not in ("config", "loader_workers", "data_spec")}
        if is_main():
            if resume is None:  # the run's configuration is written once, when it starts
                (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=True))
            print("configuration:\n  " + yaml.safe_dump(resolved, sort_keys=True).rstrip().replace("\n", "\n  "))
            if resume is not None:
                print(f"resuming with the saved configuration{'; changed by flags: ' if changed else ''}"
                      + "; ".join(changed))
        if resume is not None:
            trainer.restore(resume)
            if is_main():
                print(f"resumed from {args.resume}: epoch {trainer.state.epoch}, iteration {trainer.state.iteration}")
        result = trainer.fit()
        minutes = result["seconds"] / 60  # over every resumed part of the run
        this_part = (result["seconds"] - trainer.seconds_before) / 60 if resume is not None else None
        final = result["final"]  # the evaluation after the last epoch, or a fresh one (every rank takes part)
        if final is None and val_set is not None:
            final = trainer.evaluate()
        barrier()
        if is_main():
            report_run(args, trainer, result, final, minutes, train_set, this_part)
        return 0
    except (DataError, CheckpointError, TrainingError, ConfigError, ValueError, PretrainedWeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        if getattr(err, "every_process", False):  # every rank stops here: none exits before all have said why
            sys.stdout.flush()
            barrier()
        return 2
    finally:
        cleanup()

if __name__ == "__main__":
    sys.exit(main())
