"""How many intra-op threads and DataLoader worker processes a training process uses.

Measured on a 2-core machine (eval/README.md, "CPU threads and workers"): torch's default of
one OpenMP thread per core plus DataLoader workers that render and augment at the same time
oversubscribe the cores, and an OpenMP team with a thread descheduled waits at every barrier —
runs were several times slower whenever anything else ran. The rule:

- CPU training: the process's cores (affinity, shared among the local processes under torchrun)
  are split into one DataLoader worker (when there are at least 2 cores; its augmentation runs
  beside the network) and intra-op threads for the rest; OpenCV stays single-threaded in every
  process (its thread pool would compete with both).
- CUDA training: up to 8 workers, one core kept for the main process; threads as torch chose.
- ``--workers N`` and ``OMP_NUM_THREADS`` (or ``torch.set_num_threads`` before training) win.
"""

from __future__ import annotations

import os

import cv2
import torch

__all__ = ["available_cores", "plan_cpu_use"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else the count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan_cpu_use(device: torch.device, workers: int | str | None, local_world_size: int = 1,
                 apply: bool = True) -> tuple[int, int]:
    """-> (intra-op threads, DataLoader workers) by the rule in the module docstring;
    ``workers`` None / "auto" chooses, an int is kept. With ``apply`` the threads are set
    (``torch.set_num_threads``; not when OMP_NUM_THREADS is set) and OpenCV made single-threaded."""
    cores = max(1, available_cores() // max(1, local_world_size))
    auto = workers in (None, "auto")
    if device.type == "cuda":
        n_workers = min(8, max(1, cores - 1)) if auto else int(workers)
        threads = torch.get_num_threads()
    else:
        n_workers = (1 if cores >= 2 else 0) if auto else int(workers)
        threads = max(1, cores - min(n_workers, 1))
    if "OMP_NUM_THREADS" in os.environ:
        threads = torch.get_num_threads()
    if apply:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        cv2.setNumThreads(1)
    return threads, n_workers
