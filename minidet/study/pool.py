"""Training processes for a study: ``jobs`` worker processes, each on cores / jobs threads, each
running one cell x seed at a time (minidet.study.run.run_cell) with its output in the run
folder's log.txt.

Workers are spawned (not forked: torch and OpenCV thread pools do not survive a fork) and die
with the study process (Linux: PR_SET_PDEATHSIG), so a killed study leaves no orphan writing into
a run folder; a run folder is also locked (flock) while a process trains in it, so two study
commands never train the same run at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import multiprocessing
import os
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

__all__ = ["StudyPool", "BUSY", "INTERRUPTED"]

BUSY = 75  # exit status of a run whose folder another process holds


INTERRUPTED = 130  # exit status of a run the study's Ctrl-C stopped or kept from starting
_STOP = None  # in a worker: the study's stop event (set on Ctrl-C)


def _init_worker(threads: int, stop) -> None:
    global _STOP
    _STOP = stop
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    import torch

    torch.set_num_threads(threads)


def _run_one(run_dir: str, flags: list[str]) -> int:
    """In a worker: lock the run folder, send fd 1 / 2 to its log.txt, train + evaluate. After
    the study's Ctrl-C a run still queued for this worker does not start."""
    from .run import run_cell

    if _STOP is not None and _STOP.is_set():
        return INTERRUPTED

    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lock = (folder / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return BUSY
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with (folder / "log.txt").open("a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            return run_cell(folder, flags)
        except SystemExit as stop:  # the trainer's own exits (an interrupt: 130)
            return stop.code if isinstance(stop.code, int) else 1
        except Exception:  # noqa: BLE001 - reported by the study as this run's failure, with the log
            import traceback

            traceback.print_exc()
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            lock.close()


class StudyPool:
    """``submit(run_dir, flags)`` -> Future of the run's exit status."""

    def __init__(self, jobs: int) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // jobs)
        # the trainer keeps the thread count of OMP_NUM_THREADS; spawned workers inherit it
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
        context = multiprocessing.get_context("spawn")
        # the executor hands a worker its next run before the current one ends, past the reach of
        # cancel_futures: on Ctrl-C such a run sees this event and returns without training
        self.stop = context.Event()
        self.executor = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                                            initargs=(int(os.environ["OMP_NUM_THREADS"]), self.stop))

    def submit(self, run_dir: Path, flags: list[str]) -> Future:
        return self.executor.submit(_run_one, str(run_dir), list(flags))

    def shutdown(self, cancel: bool = False) -> None:
        """Wait for the workers; ``cancel``: start no further run (after a Ctrl-C)."""
        if cancel:
            self.stop.set()
        self.executor.shutdown(wait=True, cancel_futures=cancel)
