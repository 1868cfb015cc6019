"""Train a detector: ``python -m minidet.train`` (also ``minidet-train``).

With no flags it trains the default small RetinaNet on the built-in shapes dataset on the CPU
and ends with a COCO AP table and a checkpoint in runs/. Every flag has a default and help;
``--config train/RECIPE.yaml`` loads a recipe whose keys are these flags (flags given on the
command line win). Multi-GPU / multi-node: ``torchrun --nproc_per_node=N -m minidet.train ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

from .data import EvalTransform, TrainTransform, build_dataset
from .data.problems import DataError
from .engine.checkpoint import CheckpointError, load_checkpoint
from .engine.distributed import barrier, cleanup, init_distributed, is_main
from .engine.trainer import Trainer, TrainingError, seed_everything
from .models import BACKBONES, MODELS, build_model, load_matching_state
from .weighting import WEIGHTINGS


def _ratio(text: str) -> float | None:
    if text == "all":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minidet.train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--config", default=None, help="recipe YAML whose keys are these flags (command-line flags win)")
    a("--model", default="retinanet", choices=MODELS, help="detector family")
    a("--backbone", default="tiny", choices=list(BACKBONES), help="backbone network")
    a("--pretrained", action="store_true", help="start the backbone from torchvision's ImageNet weights (needs network)")
    a("--data", default="shapes", help="dataset YAML, dataset folder (COCO / VOC / YOLO tree) or 'shapes'")
    a("--format", default=None, choices=["coco", "voc", "yolo"], help="format of a --data folder (default: its dataset.yaml / "
      "Ultralytics data.yaml, else guessed from the layout); must agree with a dataset YAML")
    a("--train-split", default="train", help="split to train on")
    a("--val-split", default="val", help="split to evaluate on ('none' to skip evaluation)")
    a("--shapes-images", type=int, default=2000, help="training images of the built-in shapes data")
    a("--lenient", action="store_true", help="skip and count broken images / annotations instead of stopping")
    a("--img-size", type=int, default=128, help="training and evaluation image size (square)")
    a("--epochs", type=int, default=12, help="training epochs")
    a("--batch-size", type=int, default=16, help="images per batch per process")
    a("--lr", type=float, default=0.003, help="base learning rate")
    a("--optimizer", default="adamw", choices=["sgd", "adamw"], help="optimizer")
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--weight-decay", type=float, default=0.05, help="weight decay")
    a("--schedule", default="cosine", choices=["step", "cosine", "constant"], help="learning-rate schedule")
    a("--warmup-iters", type=int, default=100, help="linear warmup iterations")
    a("--clip-grad", type=float, default=10.0, help="max gradient norm (0: no clipping)")
    a("--ema", action=argparse.BooleanOptionalAction, default=True, help="keep an EMA of the weights for evaluation")
    a("--cls-loss", default=None, help="classification loss (default: the family's: focal / ce / yolo_sse); "
      "also ap, alrp for RetinaNet")
    a("--reg-loss", default="giou", help="regression loss: l1, l2, smooth_l1, iou, giou, diou, ciou")
    a("--assigner", default="atss", help="maxiou or atss (RetinaNet), ssd or maxiou (SSD), yolo")
    a("--anchor-sizes", type=int, nargs=5, default=[16, 32, 64, 128, 256], metavar="SIZE", help="RetinaNet anchor base sizes for P3-P7 "
      "(default 32..512; ATSS: 8 x stride)")
    a("--ignore-iof-thr", type=float, default=0.5, metavar="T",
      help="priors whose intersection over their own area with a crowd / difficult region exceeds T are ignored, "
      "not background (mmdetection's ignore_iof_thr); a negative value turns this off (crowd pixels then train "
      "as background, as torchvision's and detectron2's references do)")
    a("--head-norm", default="gn", choices=["gn", "none"], help="GroupNorm in the RetinaNet head towers")
    a("--weighting", default=None, choices=list(WEIGHTINGS), help="loss-weighting scheme (default: the family's)")
    a("--alwa-interval", type=int, default=100, help="ALWA window C in iterations")
    a("--loss-weights", type=float, nargs=2, default=None, metavar=("CLS", "REG"),
      help="fixed classification / regression loss weights (implies --weighting fixed), or ALWA's initial weights")
    a("--neg-pos-ratio", type=_ratio, default=3.0, metavar="R|all",
      help="SSD hard negative mining: negatives kept per positive, or 'all' (no mining)")
    a("--alrp-iou", default="giou", choices=["giou", "iou"],
      help="aLRP Loss localisation error: 1 - GIoU, or 2 (1 - IoU)")
    a("--amp", default=None, nargs="?", const="fp16", choices=["fp16", "bf16"],
      help="mixed precision: --amp (float16 + GradScaler, CUDA) or --amp bf16")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    a("--workers", type=int, default=2, help="data loading processes per training process")
    a("--sync-bn", action="store_true", help="SyncBatchNorm across processes (DDP)")
    a("--out", default=None, help="run folder (default: runs/<model>-<data>-<time>)")
    a("--resume", default=None, help="continue a killed run from its last.pt (same flags)")
    a("--weights", default=None, help="start a new run from a checkpoint (fine-tuning); class layers are "
      "re-initialised when the class count differs")
    a("--eval-interval", type=int, default=4, help="evaluate every N epochs (and after the last)")
    a("--log-interval", type=int, default=10, help="log every N iterations")
    a("--max-bad-steps", type=int, default=10, help="stop after this many consecutive non-finite losses")
    a("--diagnostics", action="store_true", help="log positives per image, the classification score / IoU "
      "correlation of positives and the negative / positive gradient ratio of the classification logits")
    a("--tensorboard", action="store_true", help="also log to TensorBoard (needs the tensorboard package)")
    a("--seed", type=int, default=0, help="random seed")
    a("--quiet", action="store_true", help="no progress bars")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Flags > recipe (--config) > defaults."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        path = Path(pre.config)
        if not path.is_file():
            parser.error(f"recipe not found: {path}")
        recipe = yaml.safe_load(path.read_text()) or {}
        known = {a.dest for a in parser._actions}
        unknown = [k for k in recipe if k.replace("-", "_") not in known]
        if unknown:
            parser.error(f"{path}: unknown keys {unknown}; the keys of a recipe are the flags of python -m minidet.train")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in recipe.items()})
    args = parser.parse_args(argv)
    args._given = explicit_flags(argv if argv is not None else sys.argv[1:])
    return args


def explicit_flags(argv) -> set[str]:
    """Names of the options given on the command line (not defaults, not recipe values)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def run_dir_for(args) -> Path:
    if args.out:
        return Path(args.out)
    data = Path(str(args.data)).stem if args.data != "shapes" else "shapes"
    return Path("runs") / f"{args.model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def data_spec(args):
    """--data as build_dataset takes it; the default shapes data is rendered at --img-size."""
    if args.data in (None, "shapes"):
        return {"format": "shapes", "_source": "shapes",
                "train": {"num_images": args.shapes_images, "image_size": args.img_size, "seed": 0},
                "val": {"num_images": 200, "image_size": args.img_size, "seed": 0}}
    return args.data


FAMILY_FLAG_DEFAULTS = {"assigner": "atss", "reg_loss": "giou"}  # the shapes defaults, RetinaNet only


def model_options(args) -> dict:
    opts = {k: getattr(args, k) for k in ("cls_loss", "reg_loss", "assigner", "weighting") if getattr(args, k)}
    if args.model != "retinanet":  # other families keep their own defaults unless flags are given
        for k, v in FAMILY_FLAG_DEFAULTS.items():
            if opts.get(k) == v and k not in getattr(args, "_given", set()):
                opts.pop(k)
    if args.weighting in ("alwa1", "alwa2"):
        opts["alwa_interval"] = args.alwa_interval
    if getattr(args, "loss_weights", None):
        opts["loss_weights"] = tuple(args.loss_weights)
    if args.model == "ssd" and getattr(args, "neg_pos_ratio", 3.0) != 3.0:
        opts["neg_pos_ratio"] = args.neg_pos_ratio
    if getattr(args, "alrp_iou", "giou") != "giou":
        opts["alrp_iou"] = args.alrp_iou
    if args.anchor_sizes and args.model == "retinanet":
        opts["anchor_sizes"] = tuple(args.anchor_sizes)
    if getattr(args, "ignore_iof_thr", 0.5) != 0.5:
        opts["ignore_iof_thr"] = args.ignore_iof_thr
    if args.head_norm not in (None, "none") and args.model == "retinanet":
        opts["head_norm"] = args.head_norm
    return opts


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, local_rank, world = init_distributed(args.device)
    device = torch.device(f"cuda:{local_rank}" if args.device.startswith("cuda") and world > 1 else args.device)
    seed_everything(args.seed + rank)
    try:
        resume = load_checkpoint(args.resume) if args.resume else None
        if resume is not None:  # the run continues with its own configuration, except flags given now
            vars(args).update({k: v for k, v in resume["args"].items()
                               if k not in args._given and k not in ("resume", "_given", "data_spec")})
        run_dir = Path(args.resume).parent if args.resume else run_dir_for(args)
        train_set = build_dataset(data_spec(args), args.train_split, strict=not args.lenient,
                                  transform=TrainTransform(args.img_size, seed=args.seed), fmt=args.format)
        val_set = None
        if args.val_split != "none":
            val_set = build_dataset(data_spec(args), args.val_split, strict=not args.lenient,
                                    transform=EvalTransform(args.img_size), fmt=args.format)
        if is_main():
            for name, ds in (("train", train_set), ("val", val_set)):
                if ds is not None and ds.report.total:
                    print(f"{name} data: {ds.report.summary()}")
        model = build_model(args.model, train_set.num_classes, backbone=args.backbone, pretrained=args.pretrained,
                            **model_options(args))
        if args.diagnostics:
            model.criterion.diagnostics_enabled = True
        if args.sync_bn and world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if args.weights and resume is None:
            ckpt = load_checkpoint(args.weights)
            load_matching_state(model, ckpt["model"], verbose=is_main())
        model.to(device)
        config = dict(model.config)
        resolved = {k: v for k, v in vars(args).items() if k not in ("config", "_given", "data_spec")}
        if is_main():
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=True))
            print("configuration:\n  " + yaml.safe_dump(resolved, sort_keys=True).rstrip().replace("\n", "\n  "))
            print(f"model: {args.model} ({args.backbone}), {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
                  f"parameters; {len(train_set)} training images, {train_set.num_classes} classes; run folder {run_dir}")
        args.data_spec = data_spec(args)  # what evaluation of the checkpoint must load again
        trainer = Trainer(args, model, train_set, val_set, run_dir, device, train_set.class_names, config)
        if resume is not None:
            trainer.restore(resume)
            if is_main():
                print(f"resumed from {args.resume}: epoch {trainer.state.epoch}, iteration {trainer.state.iteration}")
        t0 = time.perf_counter()
        result = trainer.fit()
        minutes = (time.perf_counter() - t0) / 60
        final = result["final"]  # the evaluation after the last epoch, or a fresh one (every rank takes part)
        if final is None and val_set is not None:
            final = trainer.evaluate()
        barrier()
        if is_main():
            summary = {"best_AP": result["best_ap"], "iterations": result["iterations"], "minutes": round(minutes, 2)}
            if final is not None:
                from .evaluation import format_table

                print(format_table(final))
                summary["final"] = final
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            print(f"done in {minutes:.1f} min; checkpoints: {run_dir / 'last.pt'}" +
                  (f", {run_dir / 'best.pt'} (AP {result['best_ap']:.4f})" if val_set is not None else ""))
            if train_set.report.skipped_files:  # lenient: images found unreadable while loading
                print(f"train data: {train_set.report.summary()}")
        return 0
    except (DataError, CheckpointError, TrainingError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
