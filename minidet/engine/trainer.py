"""The training loop: AMP, gradient clipping, warmup + schedule, EMA, periodic evaluation with
the best checkpoint kept, exact resume, non-finite-loss guard, Ctrl-C checkpoint, DDP.

``Trainer`` is made of parts: the run's length (``run_plan``), its state and checkpoints
(``run_state``), the step guard (``step_guard``: whether a step is applied, agreed by every
process), the Ctrl-C handling (``interrupts``: stop only between iterations, between epochs or
after an evaluation, where the whole state belongs to one instant; last.pt is written there and
resuming from it repeats the uninterrupted run exactly), validation (``validation``) and hooks
(``hooks``: the EMA, the logs, the evaluation + best.pt). Under DDP every decision that changes
the course of the loop is taken by all processes together; checkpoints hold every process's RNG
state, and the validation detections are scored once, on rank 0."""

from __future__ import annotations

import time
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..configuration import lr_step_fractions
from ..data import build_loader
from ..data.loader import left_out
from ..data.problems import CountSkips, record_skipped
from ..distributed import is_main, world_size
from .checkpoint import remove_stale_temp_files
from .ema import ModelEMA
from .hooks import EMAHook, EvalHook, LoggingHook, TrainerBase
from .interrupts import InterruptFlag, StopControl, StopRequested
from .logger import RunLogger
from .loss_step import _LossStep
from .optim import build_optimizer, trainable_parameters
from .precision import amp_dtype
from .run_plan import RunPlan
from .run_state import RunCheckpoints, TrainState, rng_state
from .schedule import build_scheduler
from .step_guard import StepGuard, TrainingError
from .validation import Validation

__all__ = ["Trainer", "TrainingError"]


class Trainer(TrainerBase):
    """Owns the model, optimiser, schedule, scaler, EMA, loaders, logs and checkpoints.

    ``args``: the resolved configuration (train.main's namespace, with ``loader_workers`` and
    ``data_spec``), never changed; ``plan``: the run's length (``run_plan.plan_run``); ``run_dir``
    gets last.pt, best.pt, config.yaml, metrics.jsonl / .csv and plots."""

    def __init__(self, args, model: nn.Module, plan: RunPlan, train_set, val_set, run_dir: Path,
                 device: torch.device, class_names: list[str], config: dict) -> None:
        super().__init__()
        self.args, self.model, self.plan, self.device, self.run_dir = args, model, plan, device, run_dir
        self.train_set, self.val_set = train_set, val_set
        self.class_names, self.config = class_names, config
        self.state = TrainState()
        self.seconds_before = 0.0  # training wall clock of the run's parts before a resume
        self._started: float | None = None  # perf_counter() when fit started
        self._build_loaders()
        self.optimizer = build_optimizer(model, args)  # decay for conv / linear weights only (see parameter_groups)
        self._trainable = trainable_parameters(model)  # what the optimizer updates (and clipping sees)
        self.scheduler = self._scheduler()
        self.amp_dtype = amp_dtype(args.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEMA(model) if args.ema else None
        # DDP: the loss normaliser is the positive count averaged over processes (an all_reduce
        # inside the loss, for the training forward only; see Criterion.normalizer_synced)
        self.step_module = _LossStep(model, sync_normalizer=world_size() > 1)
        if world_size() > 1:
            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None)
        self._build_parts()

    def _build_loaders(self) -> None:
        args, train_set, val_set = self.args, self.train_set, self.val_set
        divisor, workers = self.model.size_divisor, args.loader_workers
        self.train_loader = build_loader(train_set, args.batch_size, train=True, workers=workers, seed=args.seed,
                                         resumable=True, size_divisor=divisor)
        if len(self.train_loader) != self.plan.batches_per_epoch:
            raise RuntimeError(f"the plan's {self.plan.batches_per_epoch} batches per epoch are not the loader's "
                               f"{len(self.train_loader)}")
        dropped = left_out(self.train_loader, len(train_set), world_size()) if is_main() else None
        if dropped:
            print(f"train data: {dropped}")
        self.val_loader = (CountSkips(build_loader(val_set, args.batch_size, train=False, workers=workers,
                                                   size_divisor=divisor), val_set.report, "val data")
                           if val_set else None)

    def _build_parts(self) -> None:
        """Logs, Ctrl-C handling, checkpoints, the step guard, validation and the hooks (the run
        folder is made here: a configuration refused earlier leaves none behind)."""
        if is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = RunLogger(self.run_dir, self.args.tensorboard, plots=self.args.plots) if is_main() else None
        if is_main():  # temporary files of a checkpoint write that was killed (SIGKILL, power loss)
            for path in remove_stale_temp_files(self.run_dir):
                print(f"removed {path}, left by an interrupted checkpoint write")
        self.interrupt = InterruptFlag()
        group = None  # all processes must agree on the iteration after which they stop
        if world_size() > 1:
            group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self.stop = StopControl(self.interrupt, group)
        self.checkpoints = RunCheckpoints(self.run_dir, self.interrupt, group)
        self.guard = StepGuard(scaler=self.scaler, stop=self.stop, max_bad_steps=self.args.max_bad_steps,
                               last_checkpoint=lambda: self._last_checkpoint(), run_dir=self.run_dir)
        self.validation = Validation(model=self.model, ema=self.ema, val_set=self.val_set, val_loader=self.val_loader,
                                     device=self.device, amp_dtype=self.amp_dtype, quiet=self.args.quiet,
                                     interrupt=self.interrupt, on_interrupt=lambda: self.eval_hook.interrupted())
        self.updating = False  # True while an iteration, an epoch's end or an evaluation's record changes the state
        self.eval_hook = EvalHook()
        self.register_hooks([*([EMAHook()] if self.ema is not None else []), LoggingHook(), self.eval_hook])

    def _scheduler(self):
        lr_steps = lr_step_fractions({**vars(self.args), **self.plan.saved_values()}, self.plan.batches_per_epoch)
        return build_scheduler(self.optimizer, self.plan.total_iters, self.plan.warmup_iters, self.args.schedule,
                               lr_steps)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(), "config": self.config, "class_names": self.class_names,
            "img_size": self.args.img_size, "data": self.args.data_spec,
            "category_ids": self.train_set.category_ids, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None, "train_state": vars(self.state).copy(),
            "criterion": self.model.criterion.state_dict(),  # the loss state, beside the network's weights
            "rng": rng_state(), "args": {**vars(self.args), **self.plan.saved_values()},
            "train_seconds": self.elapsed_seconds(),  # (like "args", not part of the run's state)
        }

    def elapsed_seconds(self) -> float:
        """Training wall clock of the run: its parts before a resume and this one."""
        return self.seconds_before + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def save(self, name: str, evaluated_weights: bool = False, gather: bool = True) -> None:
        """Write run_dir/name (``RunCheckpoints.save``). ``evaluated_weights``: store the weights
        that were evaluated (the EMA when enabled) as "model", for best.pt."""
        def contents() -> dict:
            ckpt = self.checkpoint()
            if evaluated_weights and self.ema is not None:
                ckpt["model"] = self.ema.module.state_dict()
                ckpt["model_weights"] = "ema"  # (checkpoint_weights: there are no raw weights here)
            return ckpt

        self.checkpoints.save(name, self.state, contents, gather)

    def _last_checkpoint(self) -> str | None:  # (a method: tests delay it)
        return self.checkpoints.last()

    def restore(self, ckpt: dict) -> None:
        """Continue a run from its checkpoint (``RunCheckpoints.load``). A run whose checkpoint
        has one optimiser group (written before ``parameter_groups``) continues with that single
        group, so that it still repeats itself exactly."""
        if len(ckpt["optimizer"]["param_groups"]) == 1 and len(self.optimizer.param_groups) != 1:
            self.optimizer = build_optimizer(self.model, self.args, grouped=False)
            self.scheduler = self._scheduler()
            if is_main():
                print("note: this run was started with weight decay on every parameter (one optimizer group); "
                      "it continues that way")
        self.state = self.checkpoints.load(ckpt, self.model, self.optimizer, self.scheduler, self.scaler, self.ema)
        self.seconds_before = float(ckpt.get("train_seconds", 0.0))  # (checkpoints before 2026-12-07: 0)
        self.checkpoints.restored(self.args.resume, self.state)

    # ------------------------------------------------------------------------ loop

    def fit(self) -> dict:
        """Train for ``plan`` (epochs, or applied steps with ``iters``); evaluate every
        ``plan.eval_interval`` epochs and after the last one (best.pt keeps the best AP);
        last.pt after every epoch. Ctrl-C: see ``InterruptFlag``; last.pt is then written at the
        next safe point and SystemExit(130) raised."""
        self._started = time.perf_counter()
        with self.interrupt.installed():
            self.call_hooks("before_train")
            try:
                self._epochs()
            except StopRequested as stop:
                self._exit_interrupted(save=True, gather=stop.agreed)
            except KeyboardInterrupt:  # a second Ctrl-C, or one raised without the flag (not the main thread)
                self._exit_interrupted(save=not self.interrupt.forced and not self.updating, gather=False)
            finally:
                self.call_hooks("after_train")
            if self.stop.requested():  # during the last save or while closing the logs
                self._exit_interrupted(save=False)
        return {"best_ap": self.state.best_ap, "iterations": self.state.iteration, "final": self.eval_hook.latest,
                "seconds": self.elapsed_seconds()}

    def _epochs(self) -> None:
        st = self.state
        while not self.plan.done(st.epoch, st.iteration) or st.eval_pending:
            if not st.eval_pending:
                self.train_epoch()
                self.stop.check()  # between epochs, before the evaluation
            self.call_hooks("after_epoch")  # the evaluation, when one is due
            self.save("last.pt")
            self.stop.check()  # after the evaluation and the save

    def _exit_interrupted(self, save: bool, gather: bool = True) -> NoReturn:
        save_last = (lambda: self.save("last.pt", gather=gather)) if save else None
        self.checkpoints.exit_interrupted(self.state, save_last, self.updating)

    def train_epoch(self) -> None:
        """One epoch, or its rest after a resume. Raises StopRequested at a safe point after a
        Ctrl-C: between two iterations, without fetching another batch."""
        st, plan = self.state, self.plan
        self.model.train()
        self.train_set.epoch = st.epoch  # (the sampler hands the epoch to the persistent workers with each index)
        self.train_loader.sampler.set_epoch(st.epoch, skip=st.batch_in_epoch * self.args.batch_size)
        n_batches = len(self.train_loader) + st.batch_in_epoch
        shown = min(n_batches, st.batch_in_epoch + plan.total_iters - st.iteration) if plan.iters else n_batches
        self.call_hooks("before_epoch", n_batches, shown)
        batches = iter(self.train_loader)
        try:
            while st.batch_in_epoch < n_batches and not (plan.iters and st.iteration >= plan.total_iters):
                self.stop.check()  # after each complete iteration
                batch = self.stop.next_batch(batches)
                if batch is None:
                    break
                images, targets = self._to_device(*batch)
                losses = self.step(images, targets)  # the iteration changes the state from here ...
                st.batch_in_epoch += 1
                self.call_hooks("after_step", losses, len(images))
                self.updating = False  # ... to here
        finally:
            self.call_hooks("end_epoch")
        self.updating = True
        st.epoch += 1
        st.batch_in_epoch = 0
        st.eval_pending = self.val_loader is not None and (st.epoch % plan.eval_interval == 0
                                                           or plan.done(st.epoch, st.iteration))
        self.updating = False

    def _to_device(self, images, targets) -> tuple:
        record_skipped(self.train_set.report, targets)  # lenient: count images skipped in workers
        images = images.to(self.device, non_blocking=True)
        # labels stay on the CPU: the criterion checks their range there, without a device sync
        return images, [{"boxes": t["boxes"].to(self.device), "labels": t["labels"],
                         "ignore_boxes": t["ignore_boxes"].to(self.device)} for t in targets]

    def step(self, images, targets) -> dict | None:
        """One optimisation step; None when ``StepGuard`` skipped it (a non-finite loss on any
        process, inf / NaN gradients, fp16's GradScaler refusing): the weights, schedule, EMA and
        ``state.iteration`` stay. The backward pass runs even for a non-finite loss: under DDP it
        is a collective every process must enter; the NaN gradients are then dropped everywhere."""
        args, st = self.args, self.state
        self.updating = True
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                losses = self.step_module(images, targets)
        except torch.OutOfMemoryError:
            raise TrainingError(
                f"out of memory at iteration {st.iteration}: lower --batch-size (now {args.batch_size}) or "
                f"--img-size (now {args.img_size}), use --amp bf16 / fp16, a smaller --backbone, or fewer --workers"
            ) from None
        loss = losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled() or args.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)  # fp16: also notes inf / NaN gradients, on the device
        grads = [p.grad for p in self._trainable if p.grad is not None]
        grad_norm = nn.utils.get_total_norm(grads) if grads else None  # (inf / NaN: checked by the guard)
        if args.clip_grad > 0 and grad_norm is not None:
            nn.utils.clip_grads_with_norm_(self._trainable, args.clip_grad, grad_norm)  # the network's and the loss's
        local_bad, any_bad, found_inf = self.guard.agree(loss, grad_norm, self.optimizer)
        grad_ratio = self.model.criterion.diagnostics.pop("grad_ratio", None)  # measured by a hook during this backward pass
        if any_bad or (found_inf and not self.scaler.is_enabled()):  # without fp16's GradScaler: a broken step
            self.scaler.update()  # fp16: forget this step's gradients (the scale backs off); else nothing
            self.optimizer.zero_grad(set_to_none=True)
            self.guard.skipped(losses, local_bad, any_bad, st)
            return None
        st.bad_steps = 0
        if found_inf:  # fp16: inf / NaN gradients; the GradScaler skips the step and lowers its scale
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            return None
        # the gradients are unscaled and known to be finite: scaler.step(optimizer) would only check
        # that again (a second host sync) before calling optimizer.step()
        self.optimizer.step()
        self.scaler.update()
        if grad_ratio is not None:
            losses = {**losses, "grad_ratio": torch.tensor(grad_ratio)}
        self.scheduler.step()
        self.call_hooks("after_update")  # the EMA
        st.iteration += 1
        return {k: v.detach() for k, v in losses.items()}

    # ------------------------------------------------------------------ evaluation

    @property
    def last_evaluation(self):
        return self.validation.last_evaluation

    def evaluate(self) -> dict:
        """The evaluation of the (EMA) model (``EvalHook.evaluate``)."""
        return self.eval_hook.evaluate()
