"""Benchmark: images/s of the training data pipeline at 512 x 512, with 0 and 2 workers.

    python eval/bench_data.py
    python eval/bench_data.py --images 256 --workers 0 2 4

Three sources: the built-in shapes dataset (images rendered on the fly), the same images written
to disk as a COCO dataset and decoded from PNG every time, and that dataset as the trainer reads a
split this small ("decoded once, kept": each image decoded once per process; DataLoader workers
that are not persistent, as here, start every epoch with an empty cache). The pipeline: read/render, TrainTransform
(resize, random scale, pad + crop, flip, colour jitter) and collate into a padded float batch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from minidet.data import ShapesDataset, TrainTransform, build_dataset, build_loader
from minidet.data.dataset import DetectionDataset
from minidet.data.shapes import write_coco


def images_per_second(dataset, workers: int, batch: int, epochs: int = 2) -> float:
    loader = build_loader(dataset, batch_size=batch, train=True, workers=workers, seed=0, pin_memory=False)
    for _ in loader:  # warm-up epoch: worker start-up, caches
        pass
    n, t = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _targets in loader:
            n += images.shape[0]
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=128, help="images in the benchmark dataset")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args()
    transform = TrainTransform(args.size)
    shapes = ShapesDataset(args.images, args.size, transform=transform)
    with tempfile.TemporaryDirectory() as tmp:
        write_coco(ShapesDataset(args.images, args.size), Path(tmp), "train")
        coco = build_dataset({"format": "coco", "root": tmp, "train": {"images": "train",
                              "annotations": "annotations/instances_train.json"}}, "train", transform=transform)
        print(f"train pipeline at {args.size}x{args.size}, batch {args.batch}, {args.images} images")
        print("| source | workers | images/s |")
        print("|---|---:|---:|")
        uncached = DetectionDataset(coco.records, coco.class_names, coco.report, transform, cache_bytes=0)
        for name, ds in (("shapes (rendered on the fly)", shapes), ("COCO PNG files (decoded)", uncached),
                         ("COCO PNG files (decoded once, kept)", coco)):
            for w in args.workers:
                print(f"| {name} | {w} | {images_per_second(ds, w, args.batch):.1f} |", flush=True)


if __name__ == "__main__":
    main()
