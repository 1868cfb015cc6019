"""Batching: collate items into a padded image batch + target list; DataLoader construction
with workers, pinned memory, a distributed-ready sampler and reproducible per-worker seeding.

Training epochs keep their last partial batch (as mmdetection's and Ultralytics' loaders do), so
that a small dataset is seen whole: 45 images at batch 16 are batches of 16, 16 and 13. Two
exceptions, the same for every sampler (``train_drop_last``): under torch.distributed every
process gets floor(images / processes) of them (the same number of batches on every process,
which DDP's collectives need; the rest, fewer than the processes, is left out, a different rest
every epoch), and a last batch of a single image per process is dropped (BatchNorm would
normalise over one image, and fails on a 1 x 1 feature map). ``left_out`` says what an epoch
leaves out."""

from __future__ import annotations

import functools
import random

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from .dataset import DetectionDataset

__all__ = ["collate", "build_loader", "seed_worker", "EpochSampler", "ShardSampler", "train_drop_last", "train_batches", "left_out"]


class EpochSampler(DistributedSampler):
    """A shuffling sampler whose order is a function of (seed, epoch) and that can start
    part-way into an epoch (``set_epoch(epoch, skip)`` skips the first ``skip`` indices of this
    process): what a resumed run needs. Shards over processes like DistributedSampler.

    ``with_epoch`` (default): it yields ``(epoch, index)`` pairs, which ``DetectionDataset``
    takes as an index: the epoch then travels with each index to the DataLoader workers, so
    that they can be persistent (a copy of the dataset made when a worker started never sees
    an epoch set later in the main process) while augmentations stay a function of (seed,
    epoch, index). Without it, plain indices."""

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True, with_epoch: bool = True) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=dist.get_world_size() if distributed else 1,
                         rank=dist.get_rank() if distributed else 0, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0
        self.with_epoch = with_epoch

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        indices = list(super().__iter__())[self.skip :]
        if self.with_epoch:
            return iter([(self.epoch, i) for i in indices])
        return iter(indices)

    def __len__(self) -> int:
        return super().__len__() - self.skip


class ShardSampler(Sampler):
    """This process's share of the indices, in order, without padding (for evaluation)."""

    def __init__(self, dataset: Dataset) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        self.indices = list(range(rank, len(dataset), world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def collate(batch: list[dict], size_divisor: int = 32) -> tuple[Tensor, list[dict]]:
    """Items -> (images float32 [B, 3, H, W] in [0, 1], zero-padded at the bottom/right to a
    common size that is a multiple of ``size_divisor``; targets: one dict per image with
    "boxes" [N, 4] float32, "labels" [N] int64, "ignore_boxes" [M, 4], "ignore_labels" [M] (-1:
    unknown class), "image_id", "path",
    "orig_size", "scale", "image_size" (h, w before padding))."""
    hs = [it["image"].shape[0] for it in batch]
    ws = [it["image"].shape[1] for it in batch]
    d = size_divisor
    H, W = -(-max(hs) // d) * d, -(-max(ws) // d) * d
    images = torch.zeros(len(batch), 3, H, W, dtype=torch.float32)
    targets = []
    for i, it in enumerate(batch):
        img = torch.from_numpy(np.ascontiguousarray(it["image"])).permute(2, 0, 1)
        images[i, :, : hs[i], : ws[i]] = img.float().div_(255)
        targets.append({
            "boxes": torch.as_tensor(it["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(it["labels"], dtype=torch.int64).reshape(-1),
            "ignore_boxes": torch.as_tensor(it.get("ignore_boxes", np.zeros((0, 4))), dtype=torch.float32).reshape(-1, 4),
            "ignore_labels": torch.as_tensor(it.get("ignore_labels", np.full(len(it.get("ignore_boxes", ())), -1)),
                                             dtype=torch.int64).reshape(-1),
            "image_id": it.get("image_id"),
            "path": it.get("path"),
            "orig_size": it.get("orig_size", (hs[i], ws[i])),
            "scale": it.get("scale", (1.0, 1.0)),
            "image_size": (hs[i], ws[i]),
            "skipped": list(it.get("skipped", ())),  # lenient: (path, message) of images skipped while loading
        })
        for key in ("orig_boxes", "orig_ignore_boxes"):  # untouched annotations, for evaluation
            if key in it:
                targets[-1][key] = torch.as_tensor(it[key], dtype=torch.float32).reshape(-1, 4)
    return images, targets


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: seed python, numpy and the dataset's transform from the
    worker's torch seed (which the loader's generator determines)."""
    cv2.setNumThreads(1)  # the worker is one of the machine's cores; OpenCV's pool would compete
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "reseed"):
        transform.reseed(seed)


def train_drop_last(per_process: int, batch_size: int) -> bool:
    """Whether a training epoch of ``per_process`` images per process drops its last partial
    batch: only when that batch would hold a single image (see the module docstring)."""
    return batch_size > 1 and per_process % batch_size == 1


def train_batches(n_images: int, batch_size: int, world: int = 1) -> int:
    """Batches per epoch of each process in a training loader that ``build_loader`` makes over
    ``n_images`` under ``world`` processes: floor(n_images / world) images per process, the last
    partial batch kept unless ``train_drop_last`` drops it. Known before any loader exists (the run
    plan needs it to build the model)."""
    per_process = n_images // world
    full, rest = divmod(per_process, batch_size)
    return full + (rest > 0 and not train_drop_last(per_process, batch_size))


def left_out(loader: DataLoader, n_images: int, world: int = 1) -> str | None:
    """'K of N images ... (why)' for the images a training ``loader`` (built by build_loader,
    before any skip) leaves out of every epoch; None when it uses them all."""
    per_process = len(loader.sampler)
    single = per_process % loader.batch_size if loader.drop_last else 0
    shard = n_images - world * per_process
    if not single and not shard:
        return None
    why = []
    if shard:
        why.append(f"{shard} so that each of the {world} processes gets the same {per_process}")
    if single:
        why.append(f"{single * world} because the last batch would hold a single image per process, too few for "
                   f"BatchNorm statistics")
    return f"{shard + single * world} of {n_images} images are left out of every epoch ({'; '.join(why)})"


def build_loader(dataset: Dataset, batch_size: int, train: bool, workers: int = 0, seed: int = 0,
                 pin_memory: bool | None = None, drop_last: bool | None = None, resumable: bool = False,
                 size_divisor: int = 32) -> DataLoader:
    """A DataLoader over ``dataset``; under torch.distributed each process reads its own shard
    (call ``loader.sampler.set_epoch(epoch)`` every epoch). ``resumable`` uses EpochSampler
    (``(epoch, index)`` pairs for a DetectionDataset); workers are persistent (started once, kept
    across epochs); batches are padded to a multiple of ``size_divisor`` (the model's
    ``size_divisor``). Training keeps the last partial batch unless it holds a single image
    (``train_drop_last``; ``drop_last`` overrides)."""
    generator = torch.Generator().manual_seed(seed)
    distributed = dist.is_available() and dist.is_initialized()
    # The resumable sampler hands the epoch to a DetectionDataset with every index: its workers
    # can then live across epochs. Another dataset gets plain indices and fresh workers per epoch
    # (they copy whatever epoch the main process set on it when the epoch starts).
    persistent = workers > 0
    if train and resumable:
        with_epoch = isinstance(dataset, DetectionDataset)
        sampler = EpochSampler(dataset, seed=seed, with_epoch=with_epoch)
        persistent = persistent and with_epoch
    elif distributed:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=True) if train else ShardSampler(dataset)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    if drop_last is None:
        drop_last = train and train_drop_last(len(sampler), batch_size)
    if workers > 0:
        # forked workers hang in OpenCV's thread pool once this process has used it (seen with 2
        # workers after OpenCV wrote and resized 512 px images here, eval/bench_data.py); the
        # workers are the parallelism, so OpenCV stays single-threaded
        cv2.setNumThreads(1)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=collate if size_divisor == 32 else functools.partial(collate, size_divisor=size_divisor),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last, worker_init_fn=seed_worker,
        generator=generator, persistent_workers=persistent,
    )
