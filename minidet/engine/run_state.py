"""The state of a training run: its counters (``TrainState``), the random-number generators, and
its checkpoints in the run folder (``RunCheckpoints``: atomic writes that gather every process's
RNG state, what this process knows last.pt holds, and the truthful message of an interrupted
run)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from ..distributed import gather_to_main, get_rank, is_main, world_size
from .checkpoint import save_checkpoint
from .interrupts import InterruptFlag

__all__ = ["TrainState", "RunCheckpoints", "seed_everything", "rng_state", "set_rng_state"]


@dataclass
class TrainState:
    epoch: int = 0  # the epoch in progress (or the next one)
    iteration: int = 0  # optimizer steps done
    batch_in_epoch: int = 0  # batches of the current epoch done
    best_ap: float = -1.0
    bad_steps: int = 0  # consecutive non-finite losses
    eval_pending: bool = False  # the epoch just done still has to be evaluated (an interrupted evaluation)

    def key(self) -> tuple:
        """What identifies the instant of the run (a checkpoint holding it needs no rewrite)."""
        return self.epoch, self.batch_in_epoch, self.iteration, self.eval_pending


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


def file_identity(path: Path) -> tuple | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


class RunCheckpoints:
    """last.pt / best.pt of ``run_dir`` and what this process knows last.pt holds.

    ``save`` writes atomically on rank 0 (a second Ctrl-C waits until the file is complete). The
    file holds every process's RNG state, "rng_per_rank" (in rank order, gathered to rank 0;
    "rng" is rank 0's): under DDP a collective on ``group``, so every process saves at the same
    point of the run. ``gather=False`` (a stop the processes did not agree on, where the others
    may be anywhere) skips the gathering: "rng_per_rank" is then None and a resume gives every
    process rank 0's state."""

    def __init__(self, run_dir: Path, interrupt: InterruptFlag, group=None) -> None:
        self.run_dir, self.interrupt, self.group = run_dir, interrupt, group
        self.saved_key: tuple | None = None  # TrainState.key() of what last.pt holds, when known
        self.saved_last: tuple | None = None  # (file identity, epoch, iteration) of that last.pt

    def save(self, name: str, state: TrainState, contents: Callable[[], dict], gather: bool = True) -> None:
        """Write run_dir/name from ``contents()`` (called on rank 0 only)."""
        with self.interrupt.critical():
            rngs = gather_to_main(rng_state(), group=self.group) if gather or self.group is None else None
            if is_main():
                ckpt = contents()
                ckpt["rng_per_rank"] = rngs
                path = save_checkpoint(ckpt, self.run_dir / name)
                if name == "last.pt":
                    self.saved_last = (file_identity(path), state.epoch, state.iteration)
            if name == "last.pt":
                self.saved_key = state.key()

    def last(self) -> str | None:
        """run_dir/last.pt as it is on disk now ("PATH (epoch E, iteration I)" when this process
        knows what it holds), or None when there is none."""
        path = self.run_dir / "last.pt"
        identity = file_identity(path)
        if identity is None:
            return None
        if self.saved_last is not None and self.saved_last[0] == identity:
            return f"{path} (epoch {self.saved_last[1]}, iteration {self.saved_last[2]})"
        return str(path)

    def restored(self, resume: str | None, state: TrainState) -> None:
        """A run resumed from ``resume``: when that is this folder's last.pt, it holds ``state``."""
        last = self.run_dir / "last.pt"
        if resume and last.is_file() and Path(resume).resolve() == last.resolve():
            self.saved_key = state.key()
            self.saved_last = (file_identity(last), state.epoch, state.iteration)

    def load(self, ckpt: dict, model, optimizer, scheduler, scaler, ema) -> TrainState:
        """Load a checkpoint's model, loss state, optimiser, schedule, scaler, EMA and this
        process's RNGs; -> its TrainState."""
        model.load_state_dict(ckpt["model"])
        if ckpt.get("criterion") is not None:
            model.criterion.load_state_dict(ckpt["criterion"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        known = {f.name for f in fields(TrainState)}  # (checkpoints before 2026-12 also hold "history")
        state = TrainState(**{k: v for k, v in ckpt["train_state"].items() if k in known})
        self.restore_rng(ckpt)
        return state

    def restore_rng(self, ckpt: dict) -> None:
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

    def exit_interrupted(self, state: TrainState, save: Callable[[], None] | None, updating: bool) -> NoReturn:
        """Call ``save`` (a last.pt write) unless None or last.pt holds ``state`` already, say
        truthfully what is on disk, exit with status 130. ``updating``: stopped inside an
        iteration (its state is not whole)."""
        if save is not None and self.saved_key != state.key():
            try:
                save()
            except KeyboardInterrupt:  # another Ctrl-C, held until the write ended
                pass
        last = self.run_dir / "last.pt"
        if is_main():
            if self.saved_key == state.key():
                print(f"\ninterrupted: saved {last} (epoch {state.epoch}, iteration {state.iteration}); continue with "
                      f"--resume {last}")
            else:
                how = ("stopped at once by a second Ctrl-C" if self.interrupt.forced else
                       f"stopped during iteration {state.iteration + 1}" if updating else "stopped")
                newest = self.last()
                if newest is not None:
                    print(f"\ninterrupted ({how}): the current state was not saved; the newest checkpoint is "
                          f"{newest}; continue with --resume {last}")
                else:
                    print(f"\ninterrupted ({how}) before the first checkpoint: no checkpoint was written; "
                          f"start the run again")
        raise SystemExit(130)
