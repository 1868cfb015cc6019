"""How many intra-op threads and DataLoader worker processes a training process uses.

Measured on the project's 2-core machine (eval/README.md, "CPU threads and workers": the
no-flag model, 2 epochs of 640 shapes images, wall clock): 2 threads + 0 workers 20.4 s,
2 + 1 23.3 s, 2 + 2 22.0 s, 1 + 1 27.9 s, 1 + 0 27.1 s. With the shapes renders cached the data
pipeline is a small part of a step, so on 2 cores both cores go to the network's threads and
loading happens in the main process; a worker process would only take a core from the
convolutions. OpenCV stays single-threaded in every process (its own pool competes with
torch's). The rule:

- CPU training: ``cores`` = the process's cores (CPU affinity, shared among the local processes
  under torchrun); up to 2 cores: no worker, ``cores`` threads; more: ``cores // 4`` workers
  (at most 4; not measured here) and the remaining cores as threads.
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
        n_workers = (0 if cores <= 2 else min(4, cores // 4)) if auto else int(workers)
        threads = max(1, cores - n_workers) if auto else max(1, cores - min(n_workers, 1))
    if "OMP_NUM_THREADS" in os.environ:
        threads = torch.get_num_threads()
    if apply:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        cv2.setNumThreads(1)
    return threads, n_workers
