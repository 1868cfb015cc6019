"""Mosaic: four training images in one (YOLOv4, Bochkovskiy et al. 2020, Sec. 3.3; Ultralytics'
``load_mosaic``).

Each image is resized so that its longer side is ``size`` (as ``TrainTransform`` starts), then
the four are placed around a random centre (xc, yc) of a size x size canvas: image 0 ends at
the centre from the top-left, 1 from the top-right, 2 from the bottom-left, 3 from the
bottom-right; each is cut by the canvas, so mostly the part of each image next to the centre
shows. Ultralytics draws the centre anywhere in the final crop; here it is drawn in the middle
half (0.25-0.75 size) so that no quadrant is smaller than a sixteenth of the canvas. Objects keep
their single-image scale (the transform's scale jitter follows), unlike a 2x2 grid shrunk to
size.

Boxes shift with their image and are clipped to its visible part; a box keeping less than
``min_visibility`` of its area is dropped with its label. Ignore regions (crowd / difficult)
follow their pixels too and are kept whenever any part of them shows, so that no crowd pixel
becomes background.

``DetectionDataset`` applies a ``Mosaic`` (its ``mosaic`` attribute) before the transform,
drawing from a generator seeded per (aug_seed, epoch, index) like the transform: an item stays a
function of those three, as exact resume needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from .transforms import MEAN_RGB

__all__ = ["Mosaic", "mosaic4"]


def _resize(item: dict, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image resized to longer side ``size`` -> (image, boxes [N, 4], ignore boxes [M, 4]) there."""
    image = item["image"]
    h, w = image.shape[:2]
    r = size / max(h, w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    if (nw, nh) != (w, h):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    f = np.array([nw / w, nh / h, nw / w, nh / h], np.float64)
    ignore = item.get("ignore_boxes", np.zeros((0, 4)))
    return image, np.asarray(item["boxes"], np.float64).reshape(-1, 4) * f, np.asarray(ignore, np.float64).reshape(-1, 4) * f


def _place(boxes: np.ndarray, shift: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] shifted by (dx, dy) and clipped to region (x1, y1, x2, y2) -> (clipped boxes,
    visible fraction of each box's area [N])."""
    moved = boxes + np.tile(shift, 2)
    clipped = moved.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(region[0], region[2])
    clipped[:, 1::2] = clipped[:, 1::2].clip(region[1], region[3])
    area = (moved[:, 2:] - moved[:, :2]).prod(1)
    visible = (clipped[:, 2:] - clipped[:, :2]).clip(0).prod(1)
    return clipped, np.where(area > 0, visible / np.maximum(area, 1e-12), 0.0)


def mosaic4(items: Sequence[dict], size: int, centre: tuple[float, float], min_visibility: float = 0.3) -> dict:
    """Four items -> one item of a size x size image around ``centre`` (xc, yc) (see the module
    docstring). The result keeps the first item's ``image_id`` / ``path``; ``areas`` are the
    areas of the kept boxes."""
    if len(items) != 4:
        raise ValueError(f"a mosaic needs 4 items, got {len(items)}")
    xc, yc = int(centre[0]), int(centre[1])
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = MEAN_RGB
    boxes, labels, ign_boxes, ign_labels = [], [], [], []
    for i, item in enumerate(items):
        image, b, ib = _resize(item, size)
        h, w = image.shape[:2]
        if i == 0:  # top-left: canvas region (x1a..x2a, y1a..y2a) <- image region (x1b.., y1b..)
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
        elif i == 1:  # top-right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, size), yc
            x1b, y1b = 0, h - (y2a - y1a)
        elif i == 2:  # bottom-left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(yc + h, size)
            x1b, y1b = w - (x2a - x1a), 0
        else:  # bottom-right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, size), min(yc + h, size)
            x1b, y1b = 0, 0
        if x2a <= x1a or y2a <= y1a:
            continue
        canvas[y1a:y2a, x1a:x2a] = image[y1b : y1b + (y2a - y1a), x1b : x1b + (x2a - x1a)]
        shift, region = np.array([x1a - x1b, y1a - y1b], np.float64), np.array([x1a, y1a, x2a, y2a], np.float64)
        placed, vis = _place(b, shift, region)
        keep = (vis >= min_visibility) & (vis > 0)
        boxes.append(placed[keep])
        labels.append(np.asarray(item["labels"], np.int64).reshape(-1)[keep])
        placed, vis = _place(ib, shift, region)
        keep = vis > 0
        ign_boxes.append(placed[keep])
        ign_labels.append(np.asarray(item.get("ignore_labels", np.full(len(ib), -1)), np.int64).reshape(-1)[keep])
    out_boxes = np.concatenate([np.zeros((0, 4)), *boxes]).astype(np.float32)
    bw = out_boxes.astype(np.float64)
    return {**items[0], "image": canvas, "boxes": out_boxes, "labels": np.concatenate([np.zeros(0, np.int64), *labels]),
            "areas": (bw[:, 2] - bw[:, 0]) * (bw[:, 3] - bw[:, 1]),
            "ignore_boxes": np.concatenate([np.zeros((0, 4)), *ign_boxes]).astype(np.float32),
            "ignore_labels": np.concatenate([np.zeros(0, np.int64), *ign_labels]),
            "mosaic": [it.get("path") for it in items]}


class Mosaic:
    """With probability ``p``, an item becomes a mosaic of itself and three random others
    (``mosaic4``); only in epochs before ``until_epoch`` (None: every epoch) — Ultralytics turns
    mosaic off for the last epochs (``close_mosaic``) so that training ends on whole images, as
    evaluation sees them."""

    def __init__(self, *, size: int, p: float = 0.5, min_visibility: float = 0.3, until_epoch: int | None = None,
                 seed: int = 0) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"mosaic probability must lie in [0, 1], got {p}")
        self.size, self.p, self.min_visibility, self.until_epoch = size, p, min_visibility, until_epoch
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Seed the choices (per (aug_seed, epoch, index) by the dataset)."""
        self.rng = np.random.default_rng([seed, 0x6D6F73])  # a stream apart from the transform's

    def active(self, epoch: int) -> bool:
        return self.p > 0 and (self.until_epoch is None or epoch < self.until_epoch)

    def __call__(self, item: dict, epoch: int, load: Callable[[int], dict], num_items: int) -> dict:
        """``item`` or its mosaic with three items drawn from ``load(j)``, j in [0, num_items)."""
        if not self.active(epoch) or self.rng.random() >= self.p:
            return item
        others = [load(int(j)) for j in self.rng.integers(0, num_items, size=3)]
        centre = self.rng.uniform(0.25 * self.size, 0.75 * self.size, size=2)
        return mosaic4([item, *others], self.size, (centre[0], centre[1]), self.min_visibility)
