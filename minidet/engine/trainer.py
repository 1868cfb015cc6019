"""The training loop: AMP, gradient clipping, warmup + schedule, EMA, periodic evaluation with
the best checkpoint kept, exact resume, non-finite-loss guard, Ctrl-C checkpoint, DDP."""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..data import build_loader
from ..data.problems import CountSkips, record_skipped
from ..evaluation.detector_eval import DetectorEvaluation, evaluate_detector
from ..weighting import SelfBalance
from .checkpoint import save_checkpoint
from .distributed import is_main, world_size
from .ema import ModelEMA
from .logger import RunLogger
from .schedule import build_scheduler


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says why and what to do."""


@dataclass
class TrainState:
    epoch: int = 0  # the epoch in progress (or the next one)
    iteration: int = 0  # optimizer steps done
    batch_in_epoch: int = 0  # batches of the current epoch done
    best_ap: float = -1.0
    bad_steps: int = 0  # consecutive non-finite losses
    history: list = field(default_factory=list)


class _LossStep(nn.Module):
    """model.loss as a module, so that DDP wraps the whole forward including the criterion."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, targets):
        return self.model.loss(images, targets)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Owns the model, optimiser, schedule, scaler, EMA, loaders, logs and checkpoints.

    ``args`` is the resolved configuration (the train command's namespace); ``run_dir`` gets
    last.pt, best.pt, config.yaml, metrics.jsonl / .csv and plots.
    """

    def __init__(self, args, model: nn.Module, train_set, val_set, run_dir: Path, device: torch.device,
                 class_names: list[str], config: dict) -> None:
        self.args, self.model, self.device, self.run_dir = args, model, device, run_dir
        self.train_set, self.val_set = train_set, val_set
        self.class_names, self.config = class_names, config
        self.state = TrainState()
        self.train_set.aug_seed = args.seed
        self.train_loader = build_loader(train_set, args.batch_size, train=True, workers=args.workers, seed=args.seed,
                                         resumable=True)
        if len(self.train_loader) == 0:
            raise TrainingError(f"the training split has {len(train_set)} images, fewer than one batch of "
                                f"{args.batch_size} per process — lower --batch-size")
        self.val_loader = (CountSkips(build_loader(val_set, args.batch_size, train=False, workers=args.workers),
                                      val_set.report, "val data") if val_set else None)
        params = [p for p in model.parameters() if p.requires_grad]
        if args.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        self.total_iters = args.epochs * len(self.train_loader)
        self.scheduler = build_scheduler(self.optimizer, self.total_iters, args.warmup_iters, args.schedule)
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEMA(model) if args.ema else None
        for m in model.modules():  # aLRP's SB: one period = one epoch unless given
            if isinstance(m, SelfBalance) and m.period is None:
                m.period = len(self.train_loader)
        self.step_module = _LossStep(model)
        if world_size() > 1:
            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None)
        self.logger = RunLogger(run_dir, args.tensorboard) if is_main() else None

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(), "config": self.config, "class_names": self.class_names,
            "img_size": self.args.img_size, "data": getattr(self.args, "data_spec", self.args.data),
            "category_ids": getattr(self.train_set, "category_ids", None), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None, "train_state": vars(self.state).copy(),
            "rng": rng_state(), "args": vars(self.args),
        }

    def save(self, name: str, evaluated_weights: bool = False) -> None:
        """Write run_dir/name atomically (rank 0). ``evaluated_weights``: store the weights that
        were evaluated (the EMA when enabled) as "model", for best.pt."""
        if is_main():
            state = self.checkpoint()
            if evaluated_weights and self.ema is not None:
                state["model"] = self.ema.module.state_dict()
            save_checkpoint(state, self.run_dir / name)

    def restore(self, ckpt: dict) -> None:
        """Continue a run from its checkpoint (model, optimiser, schedule, scaler, EMA, RNGs)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.state = TrainState(**ckpt["train_state"])
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------------ loop

    def fit(self) -> dict:
        args = self.args
        last_stats = None  # the evaluation after the last epoch, if this call made it
        try:
            while self.state.epoch < args.epochs:
                self.train_epoch()
                last_stats = None
                if self.val_loader is not None and (
                        (self.state.epoch % args.eval_interval == 0) or self.state.epoch == args.epochs):
                    last_stats = self.evaluate_and_keep_best()
                self.save("last.pt")
        except KeyboardInterrupt:
            self.save("last.pt")
            if is_main():
                print(f"\ninterrupted: saved {self.run_dir / 'last.pt'} (epoch {self.state.epoch}, iteration "
                      f"{self.state.iteration}); continue with --resume {self.run_dir / 'last.pt'}")
            raise SystemExit(130) from None
        finally:
            if self.logger is not None:
                self.logger.close()
        return {"best_ap": self.state.best_ap, "iterations": self.state.iteration, "final": last_stats}

    def train_epoch(self) -> None:
        args, st = self.args, self.state
        self.model.train()
        self.train_set.epoch = st.epoch
        self.train_loader.sampler.set_epoch(st.epoch, skip=st.batch_in_epoch * args.batch_size)
        n_batches = len(self.train_loader) + st.batch_in_epoch
        bar = tqdm(self.train_loader, total=n_batches, initial=st.batch_in_epoch, desc=f"epoch {st.epoch + 1}/{args.epochs}",
                   disable=not is_main() or args.quiet, file=sys.stdout, dynamic_ncols=True, leave=True)
        t0, seen = time.perf_counter(), 0
        for images, targets in bar:
            record_skipped(self.train_set.report, targets)  # lenient: count images skipped in workers
            images = images.to(self.device, non_blocking=True)
            # labels stay on the CPU: the criterion checks their range there, without a device sync
            targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"],
                        "ignore_boxes": t["ignore_boxes"].to(self.device)} for t in targets]
            losses = self.step(images, targets)
            st.batch_in_epoch += 1
            seen += len(images) * world_size()
            if losses is None:
                continue
            if st.iteration % args.log_interval == 0 or st.batch_in_epoch == n_batches:
                record = {"kind": "train", "epoch": st.epoch, "iteration": st.iteration,
                          "lr": self.optimizer.param_groups[0]["lr"],
                          "img_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                          **{k: float(v) for k, v in losses.items()}}
                st.history.append({k: record[k] for k in ("iteration", "loss")})
                if self.logger is not None:
                    self.logger.log(record)
                bar.set_postfix({k: f"{record[k]:.3g}" for k in record
                                 if k in ("loss", "cls", "reg", "lr", "img_per_s") or k.startswith("weight_")})
        st.epoch += 1
        st.batch_in_epoch = 0

    def step(self, images, targets) -> dict | None:
        """One optimisation step; None when the loss was not finite (step skipped)."""
        args, st = self.args, self.state
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                losses = self.step_module(images, targets)
        except torch.OutOfMemoryError:
            raise TrainingError(
                f"out of memory at iteration {st.iteration}: lower --batch-size (now {args.batch_size}) or "
                f"--img-size (now {args.img_size}), use --amp bf16 / fp16, a smaller --backbone, or fewer --workers"
            ) from None
        loss = losses["loss"]
        if not torch.isfinite(loss):
            bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
            st.bad_steps += 1
            print(f"warning: non-finite loss at iteration {st.iteration} (components: {', '.join(bad)}); "
                  f"step skipped ({st.bad_steps} in a row)")
            self.optimizer.zero_grad(set_to_none=True)
            if st.bad_steps >= args.max_bad_steps:
                raise TrainingError(
                    f"{st.bad_steps} consecutive non-finite losses (last at iteration {st.iteration}, components "
                    f"{', '.join(bad)}); stopped. The last good checkpoint is {self.run_dir / 'last.pt'}. Lower --lr, "
                    f"raise --warmup-iters, set --clip-grad, or check the data with python -m minidet.data.check")
            return None
        st.bad_steps = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if args.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), args.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        diagnostics = getattr(self.model.criterion, "diagnostics", {})
        if "grad_ratio" in diagnostics:  # measured by a hook during this backward pass
            losses = {**losses, "grad_ratio": torch.tensor(diagnostics.pop("grad_ratio"))}
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        st.iteration += 1
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The 12 COCO stats of the (EMA) model on the validation split: every process predicts
        its shard, the detections are gathered over processes (``gather_objects``) and scored
        against the dataset's own ground truth by ``evaluate_detector``, the function
        ``python -m minidet.eval --weights`` uses. ``self.last_evaluation`` keeps the full result
        (including the COCO results list that was scored)."""
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        try:
            self.last_evaluation: DetectorEvaluation = evaluate_detector(
                model, self.val_set, self.val_loader, self.device,
                progress=is_main() and not self.args.quiet, desc="val")
        finally:
            model.train()
        return self.last_evaluation.stats

    def evaluate_and_keep_best(self) -> dict:
        stats = self.evaluate()
        st = self.state
        if is_main():
            print("val: " + ", ".join(f"{k} {v:.4f}" for k, v in stats.items() if k in ("AP", "AP50", "AP75", "AR100")))
            self.logger.log({"kind": "eval", "epoch": st.epoch, "iteration": st.iteration, **stats})
        if stats["AP"] > st.best_ap or not math.isfinite(st.best_ap):
            st.best_ap = stats["AP"]
            self.save("best.pt", evaluated_weights=True)
        return stats
