"""Ctrl-C during training: a request to stop at the next safe point (``InterruptFlag``), the
stop as every process agrees on it (``StopControl``), and ``StopRequested``, which the training
loop raises at such a point."""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

import torch
import torch.distributed as dist

from ..distributed import is_main

__all__ = ["InterruptFlag", "StopRequested", "StopControl"]


class StopRequested(Exception):
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


class StopControl:
    """Whether a Ctrl-C was seen, by any process. Under DDP (``group``: the gloo flag group) a
    collective call, except right after a training step: its flag all_reduce (``StepGuard``)
    carried this process's flag too and left the answer in ``agreed``, which is used (once)
    instead of a second collective. A Ctrl-C that came after that all_reduce counts at the next
    one, on every process alike."""

    def __init__(self, flag: InterruptFlag, group=None) -> None:
        self.flag, self.group = flag, group
        self.agreed: bool | None = None

    def requested(self) -> bool:
        requested = self.flag.requested
        if self.group is not None:
            agreed, self.agreed = self.agreed, None
            if agreed is None:
                value = torch.tensor([int(requested)], dtype=torch.int32)
                dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
                agreed = bool(value.item())
            requested = agreed
            if agreed:
                self.flag.requested = True
        return requested

    def check(self) -> None:
        """Raise StopRequested at a safe point when a stop was requested."""
        if self.requested():
            raise StopRequested

    def next_batch(self, batches) -> tuple | None:
        """The next batch of the DataLoader iterator ``batches`` (None at its end), never one
        fetched across a Ctrl-C: StopRequested instead."""
        try:
            batch = next(batches)
        except StopIteration:
            return None
        except Exception:
            if self.flag.requested:  # a DataLoader worker that the same Ctrl-C stopped
                raise StopRequested(agreed=self.group is None) from None
            raise
        if self.group is None and self.flag.requested:  # (one process: no need to agree)
            raise StopRequested  # a Ctrl-C while the batch was loaded: it is not used
        return batch
