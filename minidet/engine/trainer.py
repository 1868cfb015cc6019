"""The training loop: AMP, gradient clipping, warmup + schedule, EMA, periodic evaluation with
the best checkpoint kept, exact resume, non-finite-loss guard, Ctrl-C checkpoint, DDP.

Ctrl-C (SIGINT) during ``Trainer.fit`` never stops the loop half-way through an iteration: it
sets a flag that the loop checks between iterations, between epochs and after an evaluation,
where the whole training state (weights, BatchNorm statistics, optimiser, schedule, scaler, EMA,
counters, RNGs) belongs to the same instant; last.pt is written there and the process exits with
status 130. Resuming from that last.pt then repeats the uninterrupted run exactly.

Under DDP the processes take every decision that changes the course of the loop together: a
step is applied by all or skipped by all (a non-finite loss on any process; fp16 gradients the
GradScaler refuses), and a Ctrl-C seen by any process stops all of them after the same
iteration. One small all_reduce per iteration carries both (``Trainer._agree``); on one process
the same decision costs one host sync and no collective. No collective hides where one process
may run alone (the loss averages its positive count over processes only inside the Trainer's
DDP steps, ``Criterion.sync_normalizer``). Checkpoints hold every process's RNG state, and the
validation detections are scored once, on rank 0."""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..configuration import ConfigError, lr_step_fractions
from ..data import build_loader
from ..data.loader import left_out
from ..data.problems import CountSkips, record_skipped
from ..distributed import gather_to_main, get_rank, is_main, world_size
from ..evaluation.detector_eval import DetectorEvaluation, evaluate_detector
from ..evaluation.figures import write_evaluation_figures
from ..evaluation.per_class import flat_per_class, per_class_results, worst_class
from ..progress import progress_bar
from ..weighting import SelfBalance
from .checkpoint import remove_stale_temp_files, save_checkpoint
from .ema import ModelEMA
from .logger import RunLogger
from .optim import build_optimizer, trainable_parameters
from .precision import amp_dtype
from .resources import plan_cpu_use
from .schedule import WARMUP_MAX_FRACTION, build_scheduler, capped_warmup, short_run_warning

ESTIMATE_AFTER_STEPS = 10  # steps measured before the time of the run is estimated

class TrainingError(RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says why and what to do.

    ``every_process``: raised at the same point by every process of a distributed run, so that they
    can wait for each other before exiting (each one's message is then printed before torchrun
    stops the others)."""

    def __init__(self, message: str, *, every_process: bool = False):
        super().__init__(message)
        self.every_process = every_process


@dataclass
class TrainState:
    epoch: int = 0  # the epoch in progress (or the next one)
    iteration: int = 0  # optimizer steps done
    batch_in_epoch: int = 0  # batches of the current epoch done
    best_ap: float = -1.0
    bad_steps: int = 0  # consecutive non-finite losses
    eval_pending: bool = False  # the epoch just done still has to be evaluated (an interrupted evaluation)


class _StopRequested(Exception):
    """Internal: a Ctrl-C was seen and the loop reached a point where the state is consistent.
    ``agreed``: every process stops at this same point (under DDP: decided by an all_reduce of
    the flag), so that the checkpoint written now may gather from all of them."""

    def __init__(self, agreed: bool = True) -> None:
        super().__init__()
        self.agreed = agreed


def _notice(text: str) -> None:
    """Print from a signal handler: the main thread may be inside a write to the same stream
    (RuntimeError: reentrant call), then the bytes go to file descriptor 2 directly."""
    try:
        print(text, file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001
        try:
            os.write(2, text.encode() + b"\n")
        except OSError:
            pass


class InterruptFlag:
    """Ctrl-C (SIGINT) as a request to stop at the next safe point instead of a KeyboardInterrupt
    raised wherever the main thread happens to be (half-way through a forward pass, after
    ``optimizer.step()`` but before the step is counted, ...).

    While ``installed()`` (main thread only; the previous handler comes back afterwards, also on
    exceptions) the first SIGINT only sets ``requested``; the training loop checks it after each
    complete iteration, between epochs and after an evaluation. A second SIGINT stops at once
    with KeyboardInterrupt (``forced`` is set; nothing is saved from the half-done state), except
    inside ``critical()`` (a checkpoint being written), where it waits until the write ended.

    DataLoader workers share the terminal's process group and get the same SIGINT. Workers
    forked while the handler is installed inherit it: they ignore the first Ctrl-C as well (the
    batch being loaded still arrives) and stop at the second. Workers started otherwise (the
    spawn start method) stop at the first; the loop fetches no batch after the flag is set, and
    a fetch (or evaluation) that fails once it is set counts as the interrupt, not as an error."""

    def __init__(self) -> None:
        self.requested = False
        self.forced = False
        self._installed = False
        self._critical = 0
        self._held = False
        self._pid = os.getpid()

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            self.requested = True
            if os.getpid() == self._pid and is_main():  # not in forked DataLoader workers
                _notice("\nCtrl-C: stopping after the current step, then saving last.pt "
                        "(Ctrl-C again: stop at once, without saving)")
            return
        if self._critical:
            self._held = True
            return
        self.forced = True
        raise KeyboardInterrupt

    @contextmanager
    def installed(self):
        """Route SIGINT to this flag for the duration (a no-op outside the main thread or when
        already installed)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)
        self._pid = os.getpid()
        signal.signal(signal.SIGINT, self._handle)
        self._installed = True
        try:
            yield self
        finally:
            self._installed = False
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)

    @contextmanager
    def critical(self):
        """A section a second Ctrl-C must not cut (writing a checkpoint and noting that it was)."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
            if not self._critical and self._held:
                self._held = False
                self.forced = True
                raise KeyboardInterrupt


class _LossStep(nn.Module):
    """model.loss as a module, so that DDP wraps the whole forward including the criterion."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.criterion = model.criterion  # registered here so that DDP also averages the loss's gradients

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
        divisor = getattr(model, "size_divisor", 32)
        workers = getattr(args, "loader_workers", None)
        if workers is None:  # (a Trainer built without minidet.train's main)
            workers = plan_cpu_use(device, args.workers, apply=False)[1]
        self.train_loader = build_loader(train_set, args.batch_size, train=True, workers=workers, seed=args.seed,
                                         resumable=True, size_divisor=divisor)
        if len(self.train_loader) == 0:
            raise TrainingError(f"the training split has {len(train_set)} image(s) for {world_size()} process(es): "
                                f"too few for one training batch (a last batch of a single image per process is "
                                f"dropped unless --batch-size is 1) — add images", every_process=True)
        self.val_loader = (CountSkips(build_loader(val_set, args.batch_size, train=False, workers=workers,
                                                   size_divisor=divisor), val_set.report, "val data")
                           if val_set else None)
        self.optimizer = build_optimizer(model, args)  # decay for conv / linear weights only (see parameter_groups)
        self._trainable = trainable_parameters(model)  # what the optimizer updates (and clipping sees)
        self.batches_per_epoch = len(self.train_loader)
        self._plan_length()
        self.scheduler = build_scheduler(self.optimizer, self.total_iters, self.warmup_iters, args.schedule,
                                         lr_step_fractions(vars(args), self.batches_per_epoch))
        self.amp_dtype = amp_dtype(args.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEMA(model) if args.ema else None
        for m in model.criterion.modules():  # aLRP's SB: one period = one epoch unless given
            if isinstance(m, SelfBalance) and m.period is None:
                m.period = len(self.train_loader)
        self.step_module = _LossStep(model)
        if world_size() > 1:
            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None)
        self.logger = RunLogger(run_dir, args.tensorboard) if is_main() else None
        if is_main():  # temporary files of a checkpoint write that was killed (SIGKILL, power loss)
            for path in remove_stale_temp_files(run_dir):
                print(f"removed {path}, left by an interrupted checkpoint write")
        self.interrupt = InterruptFlag()
        self._flag_group = None  # all processes must agree on the iteration after which they stop
        self._agreed_stop = None  # the stop flag the last training step's all_reduce agreed on (DDP)
        if world_size() > 1:
            self._flag_group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self._updating = False  # True while an iteration, an epoch's end or an evaluation's record changes the state
        self._in_fit = False
        self._saved_key = None  # _state_key() of what last.pt holds, when this process knows it
        self._saved_last = None  # (file identity, epoch, iteration) of that last.pt

    def _plan_length(self) -> None:
        """The run's length in optimizer steps (``total_iters``), its epochs (``args.epochs``,
        derived from ``--iters`` as ceil(iters / batches per epoch): the last epoch then ends at
        that iteration) and its warmup (capped, ``capped_warmup``); on the main process one line
        for each of: the derived epochs, the images an epoch leaves out, the warmup cap, a run
        too short to learn (``short_run_warning``)."""
        args, per_epoch = self.args, self.batches_per_epoch
        min_iters = getattr(args, "min_iters", None)
        if not getattr(args, "iters", None) and min_iters and args.epochs * per_epoch < min_iters:
            if is_main():
                print(f"run length: {args.epochs} epochs of {per_epoch} batches are {args.epochs * per_epoch} optimizer "
                      f"steps; training {min_iters} (custom data from scratch: 12 epochs or {min_iters} steps, "
                      f"whichever is longer; --epochs / --iters to choose)")
            args.iters = min_iters
        if getattr(args, "iters", None):
            self.total_iters = args.iters
            args.epochs = math.ceil(args.iters / per_epoch)  # (saved in the checkpoint's "args" beside iters)
            if args.lr_steps and not all(0 < s * per_epoch <= args.iters for s in args.lr_steps):
                raise ConfigError(f"--lr-steps must lie in (0, {args.iters / per_epoch:g}] epochs of {per_epoch} "
                                  f"batches with --iters {args.iters}, got {args.lr_steps}")
        else:
            self.total_iters = args.epochs * per_epoch
        self.warmup_iters = capped_warmup(args.warmup_iters, self.total_iters)
        if args.eval_interval == "auto":  # about 10 evaluations per run
            args.eval_interval = max(1, math.ceil(args.epochs / 10))
        if not is_main():
            return
        if getattr(args, "iters", None):
            rest = args.iters - (args.epochs - 1) * per_epoch
            end = "" if rest == per_epoch else f", the last one ending after {rest} of them"
            print(f"--iters {args.iters}: {args.epochs} epoch(s) of {per_epoch} batches{end}")
        missing = left_out(self.train_loader, len(self.train_set), world_size())
        if missing:
            print(f"train data: {missing}")
        if self.warmup_iters < args.warmup_iters and self.total_iters > 0:
            print(f"warmup: {args.warmup_iters} -> {self.warmup_iters} iterations (at most "
                  f"{WARMUP_MAX_FRACTION:.0%} of the {self.total_iters}-iteration run)")
        from_scratch = not args.pretrained and not getattr(args, "weights", None)
        warning = short_run_warning(self.total_iters, per_epoch, args.epochs, bool(getattr(args, "iters", None)),
                                    from_scratch)
        if warning:
            print(warning)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(), "config": self.config, "class_names": self.class_names,
            "img_size": self.args.img_size, "data": getattr(self.args, "data_spec", self.args.data),
            "category_ids": getattr(self.train_set, "category_ids", None), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None, "train_state": vars(self.state).copy(),
            "criterion": self.model.criterion.state_dict(),  # the loss state, beside the network's weights
            "rng": rng_state(), "args": vars(self.args),
        }

    def save(self, name: str, evaluated_weights: bool = False, gather: bool = True) -> None:
        """Write run_dir/name atomically (rank 0). ``evaluated_weights``: store the weights that
        were evaluated (the EMA when enabled) as "model", for best.pt. A second Ctrl-C waits
        until the file is complete.

        The file holds every process's RNG state, "rng_per_rank" (in rank order, gathered to rank
        0; "rng" is rank 0's, as before): under DDP a collective, so every process calls save at
        the same point of the run. ``gather=False`` (under DDP: a stop that the processes did not
        agree on, where the others may be anywhere) skips the gathering: "rng_per_rank" is then
        None and a resume gives every process rank 0's state."""
        with self.interrupt.critical():
            rngs = (gather_to_main(rng_state(), group=self._flag_group) if gather or self._flag_group is None
                    else None)
            if is_main():
                state = self.checkpoint()
                state["rng_per_rank"] = rngs
                if evaluated_weights and self.ema is not None:
                    state["model"] = self.ema.module.state_dict()
                    state["model_weights"] = "ema"  # (checkpoint_weights: there are no raw weights here)
                path = save_checkpoint(state, self.run_dir / name)
                if name == "last.pt":
                    self._saved_last = (_file_identity(path), self.state.epoch, self.state.iteration)
            if name == "last.pt":
                self._saved_key = self._state_key()

    def _state_key(self) -> tuple:
        st = self.state
        return st.epoch, st.batch_in_epoch, st.iteration, st.eval_pending

    def _last_checkpoint(self) -> str | None:
        """run_dir/last.pt as it is on disk now ("PATH (epoch E, iteration I)" when this process
        knows what it holds), or None when there is none."""
        path = self.run_dir / "last.pt"
        identity = _file_identity(path)
        if identity is None:
            return None
        if self._saved_last is not None and self._saved_last[0] == identity:
            return f"{path} (epoch {self._saved_last[1]}, iteration {self._saved_last[2]})"
        return str(path)

    def restore(self, ckpt: dict) -> None:
        """Continue a run from its checkpoint (model, optimiser, schedule, scaler, EMA, RNGs).

        A run whose checkpoint has one optimiser group (written before ``parameter_groups``)
        continues with that single group, so that it still repeats itself exactly."""
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("criterion") is not None:
            self.model.criterion.load_state_dict(ckpt["criterion"])
        saved_groups = len(ckpt["optimizer"]["param_groups"])
        if saved_groups == 1 and len(self.optimizer.param_groups) != 1:
            self.optimizer = build_optimizer(self.model, self.args, grouped=False)
            self.scheduler = build_scheduler(self.optimizer, self.total_iters, self.warmup_iters, self.args.schedule,
                                             lr_step_fractions(vars(self.args), self.batches_per_epoch))
            if is_main():
                print("note: this run was started with weight decay on every parameter (one optimizer group); "
                      "it continues that way")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        known = {f.name for f in fields(TrainState)}  # (checkpoints before 2026-12 also hold "history")
        self.state = TrainState(**{k: v for k, v in ckpt["train_state"].items() if k in known})
        self._restore_rng(ckpt)
        resume = getattr(self.args, "resume", None)
        last = self.run_dir / "last.pt"
        if resume and last.is_file() and Path(resume).resolve() == last.resolve():
            self._saved_key = self._state_key()  # last.pt holds the state just restored
            self._saved_last = (_file_identity(last), self.state.epoch, self.state.iteration)

    def _restore_rng(self, ckpt: dict) -> None:
        """This process's own RNG state ("rng_per_rank"[rank]). Rank 0's ("rng") on every process
        when the checkpoint holds one state only (written before per-process states were saved,
        or by a stop the processes did not agree on) or was written by another number of
        processes; the run says so."""
        per_rank, world = ckpt.get("rng_per_rank"), world_size()
        if per_rank is not None and len(per_rank) == world:
            set_rng_state(per_rank[get_rank()])
            return
        set_rng_state(ckpt["rng"])
        if is_main() and (world > 1 or per_rank is not None):
            why = (f"was written by {len(per_rank)} processes and this run has {world}" if per_rank is not None
                   else "holds the random-number state of one process only")
            print(f"note: the checkpoint {why}: every process continues from rank 0's random-number state")

    # ------------------------------------------------------------------------ loop

    def fit(self) -> dict:
        """Train until ``args.epochs`` (with ``args.iters``: until that many applied steps, the
        last epoch ending early); evaluate every ``args.eval_interval`` epochs and after the
        last one (best.pt keeps the best AP); last.pt after every epoch. Ctrl-C: see
        ``InterruptFlag``; last.pt is then written at the next safe point and SystemExit(130)
        raised."""
        last_stats = None  # the evaluation after the last epoch, if this call made it
        self._in_fit = True
        try:
            with self.interrupt.installed():
                try:
                    last_stats = self._epochs()
                except _StopRequested as stop:
                    self._exit_interrupted(save=True, gather=stop.agreed)
                except KeyboardInterrupt:  # a second Ctrl-C, or one raised without the flag (not the main thread)
                    self._exit_interrupted(save=not self.interrupt.forced and not self._updating, gather=False)
                finally:
                    if self.logger is not None:
                        self.logger.close()
                if self._stop_requested():  # during the last save or while closing the logs
                    self._exit_interrupted(save=False)
        finally:
            self._in_fit = False
        return {"best_ap": self.state.best_ap, "iterations": self.state.iteration, "final": last_stats}

    def _length_done(self) -> bool:
        """Whether the run has its length: ``total_iters`` applied steps with --iters (an epoch
        more when skipped steps left it short), else ``args.epochs`` epochs."""
        if getattr(self.args, "iters", None):
            return self.state.iteration >= self.total_iters
        return self.state.epoch >= self.args.epochs

    def _epochs(self) -> dict | None:
        last_stats = None
        while not self._length_done() or self.state.eval_pending:
            if not self.state.eval_pending:
                self.train_epoch()
                last_stats = None
                self._check_stop()  # between epochs, before the evaluation
            if self.state.eval_pending:
                last_stats = self.evaluate_and_keep_best()
            self.save("last.pt")
            self._check_stop()  # after the evaluation and the save
        return last_stats

    def _stop_requested(self) -> bool:
        """Whether a Ctrl-C was seen, by any process. Under DDP a collective call, except right
        after a training step: its flag all_reduce (``_agree``) carried this process's flag too,
        and the answer it agreed on is used (once) instead of a second collective. A Ctrl-C
        that came after that all_reduce counts at the next one, on every process alike."""
        requested = self.interrupt.requested
        if self._flag_group is not None:
            agreed, self._agreed_stop = getattr(self, "_agreed_stop", None), None
            if agreed is None:
                flag = torch.tensor([int(requested)], dtype=torch.int32)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._flag_group)
                agreed = bool(flag.item())
            requested = agreed
            if agreed:
                self.interrupt.requested = True
        return requested

    def _check_stop(self) -> None:
        if self._stop_requested():
            raise _StopRequested

    def _exit_interrupted(self, save: bool, gather: bool = True) -> NoReturn:
        """Write last.pt when ``save`` and it does not hold the current state yet, say truthfully
        what is on disk, exit with status 130. ``gather``: every process stops here (see save)."""
        st = self.state
        if save and self._saved_key != self._state_key():
            try:
                self.save("last.pt", gather=gather)
            except KeyboardInterrupt:  # another Ctrl-C, held until the write ended
                pass
        last = self.run_dir / "last.pt"
        if is_main():
            if self._saved_key == self._state_key():
                print(f"\ninterrupted: saved {last} (epoch {st.epoch}, iteration {st.iteration}); continue with "
                      f"--resume {last}")
            else:
                how = ("stopped at once by a second Ctrl-C" if self.interrupt.forced else
                       f"stopped during iteration {st.iteration + 1}" if self._updating else "stopped")
                newest = self._last_checkpoint()
                if newest is not None:
                    print(f"\ninterrupted ({how}): the current state was not saved; the newest checkpoint is "
                          f"{newest}; continue with --resume {last}")
                else:
                    print(f"\ninterrupted ({how}) before the first checkpoint: no checkpoint was written; "
                          f"start the run again")
        raise SystemExit(130)

    def train_epoch(self) -> None:
        """One epoch, or its rest after a resume. Raises _StopRequested (internal) at a safe
        point after a Ctrl-C: between two iterations, without fetching another batch."""
        args, st = self.args, self.state
        self.model.train()
        self.train_set.epoch = st.epoch  # (the sampler hands the epoch to the persistent workers with each index)
        self.train_loader.sampler.set_epoch(st.epoch, skip=st.batch_in_epoch * args.batch_size)
        n_batches = len(self.train_loader) + st.batch_in_epoch
        by_iters = bool(getattr(args, "iters", None))  # then the epoch ends early at iteration total_iters
        shown = min(n_batches, st.batch_in_epoch + self.total_iters - st.iteration) if by_iters else n_batches
        bar = progress_bar(total=shown, initial=st.batch_in_epoch,
                           desc=f"epoch {st.epoch + 1}/{max(args.epochs, st.epoch + 1)}",
                           disable=not is_main() or args.quiet)
        t0, seen = time.perf_counter(), 0
        batches = iter(self.train_loader)
        try:
            while st.batch_in_epoch < n_batches and not (by_iters and st.iteration >= self.total_iters):
                self._check_stop()  # after each complete iteration
                try:
                    images, targets = next(batches)
                except StopIteration:
                    break
                except Exception:
                    if self.interrupt.requested:  # a DataLoader worker that the same Ctrl-C stopped
                        raise _StopRequested(agreed=self._flag_group is None) from None
                    raise
                if self._flag_group is None and self.interrupt.requested:  # (one process: no need to agree)
                    raise _StopRequested  # a Ctrl-C while the batch was loaded: it is not used
                record_skipped(self.train_set.report, targets)  # lenient: count images skipped in workers
                images = images.to(self.device, non_blocking=True)
                # labels stay on the CPU: the criterion checks their range there, without a device sync
                targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"],
                            "ignore_boxes": t["ignore_boxes"].to(self.device)} for t in targets]
                losses = self.step(images, targets)  # the iteration changes the state from here ...
                st.batch_in_epoch += 1
                seen += len(images) * world_size()
                if seen == ESTIMATE_AFTER_STEPS * len(images) * world_size():
                    self._announce_time(seen / max(time.perf_counter() - t0, 1e-9))
                if losses is not None and (st.iteration % args.log_interval == 0 or st.batch_in_epoch == n_batches
                                           or st.iteration == self.total_iters):
                    record = {"kind": "train", "epoch": st.epoch, "iteration": st.iteration,
                              "lr": self.optimizer.param_groups[0]["lr"],
                              "img_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                              **{k: float(v) for k, v in losses.items()}}
                    if self.logger is not None:
                        self.logger.log(record)
                    bar.set_postfix({k: f"{record[k]:.3g}" for k in record
                                     if k in ("loss", "cls", "reg", "lr", "img_per_s") or k.startswith("weight_")})
                self._updating = False  # ... to here
                bar.update(1)
        finally:
            bar.close()
        self._updating = True
        st.epoch += 1
        st.batch_in_epoch = 0
        st.eval_pending = self.val_loader is not None and (st.epoch % args.eval_interval == 0 or self._length_done())
        self._updating = False

    def _announce_time(self, img_per_s: float) -> None:
        """Once per process, after the first ESTIMATE_AFTER_STEPS steps: the time the rest of the
        run's steps will take at the measured speed (evaluations not included)."""
        if getattr(self, "_time_announced", False) or not is_main():
            return
        self._time_announced = True
        left = max(0, self.total_iters - self.state.iteration)
        minutes = left * self.args.batch_size * world_size() / img_per_s / 60
        print(f"speed: {img_per_s:.1f} images/s over the first {ESTIMATE_AFTER_STEPS} steps; the remaining {left} "
              f"steps take about {minutes:.1f} min (evaluations not included)", flush=True)

    def step(self, images, targets) -> dict | None:
        """One optimisation step; None when it was skipped: a non-finite loss (on any process),
        under fp16 inf / NaN gradients that the GradScaler refuses (its scale backs off), and
        otherwise inf / NaN gradients from a finite loss (a bad step like a non-finite loss:
        clipping would spread them to every weight). A
        skipped step leaves the weights, the schedule, the EMA and ``state.iteration`` as they
        were. From here until train_epoch has counted and logged it, the iteration is under way
        (``_updating``).

        Whether the step is applied is decided once, after the backward pass, from one small
        flag tensor (``_agree``): one host sync and no collective on one process; under DDP one
        all_reduce, so that every process skips or applies the same steps. The backward pass runs
        even when a loss is not finite: under DDP it averages the gradients, a collective that
        every process must enter (one process skipping it alone left the others waiting for
        ever); a non-finite loss makes every gradient NaN, which is then dropped everywhere."""
        args, st = self.args, self.state
        self._updating = True
        criterion = self.model.criterion
        try:
            # DDP: the loss normaliser is the positive count averaged over processes (an all_reduce
            # inside the loss, turned on for this forward only; see Criterion.sync_normalizer)
            criterion.sync_normalizer = self._flag_group is not None
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                losses = self.step_module(images, targets)
        except torch.OutOfMemoryError:
            raise TrainingError(
                f"out of memory at iteration {st.iteration}: lower --batch-size (now {args.batch_size}) or "
                f"--img-size (now {args.img_size}), use --amp bf16 / fp16, a smaller --backbone, or fewer --workers"
            ) from None
        finally:
            criterion.sync_normalizer = False
        loss = losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled() or args.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)  # fp16: also notes inf / NaN gradients, on the device
        grads = [p.grad for p in self._trainable if p.grad is not None]
        grad_norm = nn.utils.get_total_norm(grads) if grads else None  # (inf / NaN: checked in _agree)
        if args.clip_grad > 0 and grad_norm is not None:
            nn.utils.clip_grads_with_norm_(self._trainable, args.clip_grad, grad_norm)  # the network's and the loss's
        local_bad, any_bad, found_inf = self._agree(loss, grad_norm)
        bad_grads = found_inf and not self.scaler.is_enabled()  # without fp16's GradScaler: a broken step
        diagnostics = getattr(criterion, "diagnostics", {})
        grad_ratio = diagnostics.pop("grad_ratio", None)  # measured by a hook during this backward pass
        if any_bad or bad_grads:
            self.scaler.update()  # fp16: forget this step's gradients (the scale backs off); else nothing
            self.optimizer.zero_grad(set_to_none=True)
            bad = [k for k, v in losses.items() if not torch.isfinite(v).all()] if local_bad else []
            where = (f"components {', '.join(bad)}" if bad else "on another process" if any_bad else
                     "the gradients of finite losses")
            st.bad_steps += 1
            if not any_bad:  # finite losses everywhere, inf / NaN gradients (the same on every process)
                if is_main():
                    print(f"warning: non-finite gradients (finite loss) at iteration {st.iteration}; step skipped "
                          f"({st.bad_steps} in a row)")
            elif self._flag_group is None:
                print(f"warning: non-finite loss at iteration {st.iteration} (components: {', '.join(bad)}); "
                      f"step skipped ({st.bad_steps} in a row)")
            elif local_bad:
                print(f"warning: non-finite loss at iteration {st.iteration} on rank {get_rank()} (components: "
                      f"{', '.join(bad)}); step skipped by every process ({st.bad_steps} in a row)")
            elif is_main():
                print(f"warning: non-finite loss at iteration {st.iteration} on another process; step skipped by "
                      f"every process ({st.bad_steps} in a row)")
            if st.bad_steps >= args.max_bad_steps:
                newest = self._last_checkpoint()
                saved = (f"The last good checkpoint is {newest}." if newest is not None else
                         f"No checkpoint was written yet ({self.run_dir / 'last.pt'} does not exist).")
                raise TrainingError(
                    f"{st.bad_steps} consecutive non-finite losses (last at iteration {st.iteration}, {where}); "
                    f"stopped. {saved} Lower --lr, raise --warmup-iters, set --clip-grad, "
                    f"or check the data with python -m minidet.data.check", every_process=True)
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
        if self.ema is not None:
            self.ema.update(self.model)
        st.iteration += 1
        return {k: v.detach() for k, v in losses.items()}

    def _agree(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> tuple[bool, bool, bool]:
        """-> (this process's loss is not finite, some process's loss is not finite, inf / NaN
        gradients: the GradScaler's found_inf under fp16, else the total gradient norm), from one
        flag tensor [loss not finite, gradient norm not finite, GradScaler's found_inf per
        device...] built on the device.

        One process: read with one host sync, no collective. DDP: copied to the host (the one
        sync), this process's Ctrl-C flag appended, and MAX-reduced over processes with one
        all_reduce on the gloo flag group (MAX of "not finite" = MIN of "finite"): every process
        gets the same answer. That all_reduce is the iteration's stop check as well: its Ctrl-C
        entry is kept for the check before the next iteration (``_stop_requested``)."""
        flags = [(~torch.isfinite(loss.detach())).reshape(1).float()]
        if grad_norm is not None:
            flags.append((~torch.isfinite(grad_norm.detach())).reshape(1).float().to(flags[0].device))
        if self.scaler.is_enabled():  # filled by unscale_ (a private GradScaler accessor, stable since torch 1.6)
            flags += [f.reshape(1).to(flags[0].device, torch.float32)
                      for f in self.scaler._found_inf_per_device(self.optimizer).values()]
        flags = torch.cat(flags)
        if self._flag_group is None:
            values = flags.tolist()  # the step's one host sync
            return bool(values[0]), bool(values[0]), any(values[1:])
        host = flags.cpu()  # the step's one host sync
        local_bad = bool(host[0])
        host = torch.cat([host, torch.tensor([float(self.interrupt.requested)])])
        dist.all_reduce(host, op=dist.ReduceOp.MAX, group=self._flag_group)
        values = host.tolist()
        self._agreed_stop = bool(values[-1])
        return local_bad, bool(values[0]), any(values[1:-1])

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The 12 COCO stats of the (EMA) model on the validation split: every process predicts
        its shard, the detections are gathered to rank 0, which alone scores them against the
        dataset's own ground truth, and its stats are broadcast to the others
        (``evaluate_detector``, the function ``python -m minidet.eval --weights`` uses): every
        process returns the same stats (best.pt decisions agree). ``self.last_evaluation``
        keeps the full result on rank 0 (including the COCO results list that was scored), the
        stats only on the others. After the final evaluation (``state.epoch >= args.epochs``)
        rank 0 writes its figures into the run folder (``minidet.evaluation.figures``).

        A Ctrl-C during it lets it finish; the flag is checked after it: inside ``fit`` the loop
        then saves last.pt and stops, on its own (the final evaluation of python -m minidet.train)
        it exits with status 130. An evaluation that fails because the Ctrl-C also stopped its
        DataLoader workers counts as interrupted."""
        flag = self._interrupt_flag()
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        with flag.installed():
            try:
                self.last_evaluation: DetectorEvaluation = evaluate_detector(
                    model, self.val_set, self.val_loader, self.device,
                    progress=is_main() and not self.args.quiet, desc="val", amp_dtype=getattr(self, "amp_dtype", None))
            except Exception:
                if not flag.requested:
                    raise
                self._evaluation_interrupted()
            finally:
                model.train()
            if flag.requested and not getattr(self, "_in_fit", False):
                self._evaluation_interrupted()
        if is_main() and getattr(self, "run_dir", None) is not None and self.state.epoch >= self.args.epochs:
            write_evaluation_figures(self.last_evaluation, self.val_set, self.run_dir)
        return self.last_evaluation.stats

    def _interrupt_flag(self) -> InterruptFlag:
        if getattr(self, "interrupt", None) is None:  # a Trainer made without __init__ (evaluation only)
            self.interrupt = InterruptFlag()
        return self.interrupt

    def _evaluation_interrupted(self) -> NoReturn:
        if getattr(self, "_in_fit", False):  # fit saves last.pt with the evaluation still pending
            raise _StopRequested(agreed=getattr(self, "_flag_group", None) is None)
        if is_main():
            run_dir = getattr(self, "run_dir", None)
            newest = self._last_checkpoint() if run_dir is not None else None
            after = (f"; the trained weights are in {newest}, evaluate them with python -m minidet.eval --weights "
                     f"{run_dir / 'last.pt'}" if newest is not None else "")
            print(f"\ninterrupted during the evaluation{after}")
        raise SystemExit(130)

    def evaluate_and_keep_best(self) -> dict:
        stats = self.evaluate()
        st = self.state
        self._updating = True
        if is_main():
            per_class = per_class_results(self.last_evaluation)
            worst = worst_class(per_class)
            print("val: " + ", ".join(f"{k} {v:.4f}" for k, v in stats.items() if k in ("AP", "AP50", "AP75", "AR100"))
                  + (f"; worst class {worst[0]} AP {worst[1]:.4f}" if worst else ""))
            self.logger.log({"kind": "eval", "epoch": st.epoch, "iteration": st.iteration, **stats,
                             **flat_per_class(per_class)})
        st.eval_pending = False
        if stats["AP"] > st.best_ap or not math.isfinite(st.best_ap):
            st.best_ap = stats["AP"]
            self.save("best.pt", evaluated_weights=True)
        self._updating = False
        return stats


def _file_identity(path: Path) -> tuple | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size
