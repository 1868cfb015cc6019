"""torch.distributed helpers: set-up from torchrun's environment, rank checks, gathering.

Every function here that talks to other processes is a collective: all processes of the group
must call it, in the same order. Without distribution (or a group of one) none of them
communicates."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str) -> tuple[int, int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU.
    -> (rank, local_rank, world_size); (0, 0, 1) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return rank, local_rank, world


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    """This process's rank; 0 without distribution."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_to_main(obj, group=None) -> list | None:
    """Every rank's ``obj`` (in rank order) on rank 0, None on the others: a collective over
    ``group`` (all processes: the default group, or a group of every rank with another backend,
    e.g. gloo beside NCCL); [obj] without distribution. Cheaper than an all-gather when only
    rank 0 needs the result."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0, group=group)
    return out


def broadcast_from_main(obj, group=None):
    """Rank 0's ``obj`` on every rank (a collective; the other ranks' ``obj`` is ignored);
    ``obj`` itself without distribution."""
    if world_size() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
