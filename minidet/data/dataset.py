"""The dataset every reader produces: records of (image file, boxes, labels) -> items.

An item is ``{"image": uint8 HxWx3 RGB, "boxes": float32 [N, 4] xyxy pixels, "labels": int64 [N],
"areas": float64 [N], "image_id", "path", "ignore_boxes": float32 [M, 4], "ignore_labels": int64
[M]}``, after the optional transform. Ignore regions are COCO ``iscrowd`` annotations and VOC
"difficult" objects, each with its class: never trained as positives or as background (priors
inside them are ignored), and ignored by evaluation the way pycocotools / the VOC devkit do.
``areas`` are the annotations' own areas (COCO ``area``, the segmentation area; box areas for
the other formats), which COCO's small / medium / large ranges use. Box checks happen once,
when a reader builds its records (``clean_boxes``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Dataset

from .image_io import read_rgb
from .problems import DataError, DataReport

OUTSIDE_TOLERANCE = 1.0  # px a box may stick out of the image before it counts as a problem
# A split whose decoded images take at most this many bytes keeps them in memory once decoded
# (in each process that reads it: the main process, every DataLoader worker)
CACHE_BYTES = 512 * 2**20


@dataclass
class Record:
    """One image and its annotations: boxes [N, 4] xyxy pixels, 0-based labels [N], areas [N]
    (None: the box areas), ignore regions [M, 4] with their labels [M]."""

    path: str
    image_id: int | str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    areas: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.areas is None:
            b = np.asarray(self.boxes, np.float64).reshape(-1, 4)
            self.areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        if len(self.ignore_labels) != len(self.ignore_boxes):
            raise ValueError(f"{self.path}: {len(self.ignore_boxes)} ignore boxes but {len(self.ignore_labels)} "
                             f"ignore labels")

    def item(self, image: np.ndarray) -> dict:
        """The untransformed item of this record with ``image``."""
        return {"image": image, "boxes": self.boxes.copy(), "labels": self.labels.copy(),
                "areas": np.asarray(self.areas, np.float64).copy(), "image_id": self.image_id, "path": self.path,
                "ignore_boxes": self.ignore_boxes.copy(), "ignore_labels": self.ignore_labels.copy()}


def clean_boxes(boxes: np.ndarray, width: float, height: float, where: Sequence[str],
                report: DataReport) -> tuple[np.ndarray, np.ndarray]:
    """Check xyxy boxes [N, 4] of an image of (width, height).

    ``where[i]`` names box i for messages (file, line or annotation id). Non-finite
    coordinates, x2 <= x1 or y2 <= y1, and boxes entirely outside the image are problems
    (dropped in lenient mode); boxes sticking out by more than 1 px are problems that lenient
    mode clips; smaller overhangs are clipped silently. -> (clean boxes [K, 4], kept mask [N]).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if not np.all(np.isfinite(boxes[i])):
            report.problem("non-finite box coordinate", f"{where[i]}: box {boxes[i].tolist()} has NaN or inf "
                           f"coordinates — fix or remove this annotation")
            keep[i] = False
        elif x2 <= x1 or y2 <= y1:
            report.problem("degenerate box (x2 <= x1 or y2 <= y1)",
                           f"{where[i]}: box {boxes[i].tolist()} (x1, y1, x2, y2) has no area — x2 must exceed x1 "
                           f"and y2 must exceed y1; fix or remove this annotation")
            keep[i] = False
        elif x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            report.problem("box outside the image",
                           f"{where[i]}: box {boxes[i].tolist()} lies entirely outside the {width}x{height} image — "
                           f"fix or remove this annotation")
            keep[i] = False
        elif (x1 < -OUTSIDE_TOLERANCE or y1 < -OUTSIDE_TOLERANCE or x2 > width + OUTSIDE_TOLERANCE
              or y2 > height + OUTSIDE_TOLERANCE):
            report.problem("box sticking out of the image (clipped)",
                           f"{where[i]}: box {boxes[i].tolist()} extends beyond the {width}x{height} image — "
                           f"fix the annotation (lenient mode clips it to the image)")
    out = boxes[keep].copy()
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out.astype(np.float32), keep


class DetectionDataset(Dataset):
    """Records + class names + an optional transform ``f(item) -> item``.

    Unreadable images raise a DataError naming the file (strict) or are replaced by the next
    readable image with a warning (lenient; ``skipped_images`` counts them). A split whose decoded
    images fit in ``cache_bytes`` decodes each image once per process (a PNG / JPEG decode costs
    more than the whole augmentation of a 400 px tile).
    """

    def __init__(self, records: list[Record], class_names: Sequence[str], report: DataReport | None = None,
                 transform: Callable[[dict], dict] | None = None, category_ids: Sequence[int] | None = None,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.records = records
        fits = sum(r.width * r.height * 3 for r in records) <= cache_bytes
        self._decoded: dict[int, np.ndarray] | None = {} if fits else None
        self.class_names = list(class_names)
        self.report = report or DataReport()
        self.transform = transform
        self.category_ids = list(category_ids) if category_ids is not None else list(range(len(class_names)))
        self.skipped_images = 0
        # With aug_seed set, the transform is reseeded per (epoch, index): augmentations then do
        # not depend on worker count or order, and a resumed run repeats them exactly.
        self.aug_seed: int | None = None
        self.epoch = 0
        # a data.mosaic.Mosaic (training only): combines 4 items before the transform, seeded
        # with it per (aug_seed, epoch, index)
        self.mosaic = None
        # VOC's use_difficult: items carry the ignore regions as ordinary objects (training
        # only; evaluation reads the records, where they stay ignore regions)
        self.ignore_as_objects = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> dict:
        """The untransformed item of record ``index``."""
        r = self.records[index]
        image = self._read(index)
        h, w = image.shape[:2]
        if (w, h) != (r.width, r.height):
            rotated = " (the sizes are swapped: the annotations were made for the image before its EXIF rotation; " \
                "minidet uses images as displayed)" if (w, h) == (r.height, r.width) else ""
            raise DataError(f"{r.path}: the annotations say {r.width}x{r.height} but the image is {w}x{h} as "
                            f"displayed{rotated} — fix the image size in the annotation file")
        item = r.item(image)
        if self.ignore_as_objects and len(r.ignore_boxes):
            item["boxes"] = np.concatenate([item["boxes"], item.pop("ignore_boxes")])
            item["labels"] = np.concatenate([item["labels"], item.pop("ignore_labels")])
            b = item["boxes"].astype(np.float64)
            item["areas"] = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            item["ignore_boxes"], item["ignore_labels"] = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        return item

    def _read(self, index: int) -> np.ndarray:
        """The decoded image of record ``index``: from the cache when the split has one (kept
        read-only; every call gets its own copy, which the transforms may change)."""
        if self._decoded is None:
            return read_rgb(self.records[index].path)
        if index not in self._decoded:
            image = read_rgb(self.records[index].path)
            image.flags.writeable = False
            self._decoded[index] = image
        return self._decoded[index].copy()

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """Item ``index`` (transformed). ``index`` may also be an ``(epoch, index)`` pair, what the
        training loader's ``EpochSampler`` yields: the augmentation then follows that epoch, not
        ``self.epoch`` — DataLoader workers hold a copy of the dataset made when they started
        (persistent workers), which an epoch set in the main process never reaches. With
        ``aug_seed`` set an item is a function of (aug_seed, epoch, index) only.

        Lenient mode replaces an unreadable image by the next readable one; the item then
        carries ``"skipped": [(path, message), ...]`` so that the main process can count the
        skip (``problems.record_skipped``) even when this runs in a DataLoader worker process,
        whose copy of ``self.report`` it never sees."""
        epoch = self.epoch
        if isinstance(index, tuple):
            epoch, index = index
        skipped: list[tuple[str, str]] = []
        item = self._load_readable(index, skipped)
        seed = None if self.aug_seed is None else (self.aug_seed * 1_000_003 + epoch * 100_003 + index) % 2**32
        if self.mosaic is not None:
            if seed is not None:
                self.mosaic.reseed(seed)
            item = self.mosaic(item, epoch, lambda j: self._load_readable(j, skipped), len(self.records))
        if self.transform is not None:
            if seed is not None and hasattr(self.transform, "reseed"):
                self.transform.reseed(seed)
            item = self.transform(item)
        if skipped:
            item["skipped"] = skipped
        return item

    def _load_readable(self, index: int, skipped: list[tuple[str, str]]) -> dict:
        """``load(index)``; lenient: the next readable image instead, each skip appended to ``skipped``."""
        for attempt in range(len(self.records)):
            i = (index + attempt) % len(self.records)
            try:
                return self.load(i)
            except DataError as err:
                if self.report.strict:
                    raise
                self.skipped_images += 1
                skipped.append((self.records[i].path, str(err)))
                if self.report.image_skipped(self.records[i].path, str(err)):  # warn once per file and process
                    print(f"warning: skipping an unreadable image: {err}")
        raise DataError("no readable image in the dataset")
