"""Image + box transforms: albumentations pipelines (BboxParams keeps boxes and labels with
the image) plus SSD's expand / IoU-crop, and the exact letterbox used for evaluation. The
standard augmentation's geometry (scale, pad, crop, flip) runs in numpy (``scale_pad_crop``,
tested pixel for pixel against albumentations' transforms) and only its colour jitter in
albumentations: its per-box bookkeeping was most of the time of a small image.

- ``TrainTransform``: resize so the longer side is ``size``, random scale, pad + random crop to
  size x size (boxes clipped; boxes keeping less than ``min_visibility`` of their area dropped
  with their labels), horizontal flip, colour jitter; with ``ssd=True`` SSD's photometric
  distortion, expand (zoom out) and min-IoU random crop come first. ``strong=True`` (for small
  data sets): scale jitter 0.5-1.5, half of the crops box-safe (albumentations'
  RandomSizedBBoxSafeCrop: every box kept, the crop resized to size x size) and Ultralytics'
  colour gains. ``data.mosaic`` combines four images before the transform.
- ``EvalTransform``: letterbox — resize by one factor so the image fits size x size, pad at the
  bottom/right. ``unletterbox`` maps predicted boxes back to original pixels exactly.

Transforms act on items (``{"image", "boxes", "labels", "ignore_boxes", "ignore_labels", ...}``);
ignore regions follow the image with their labels. They add ``"orig_size"`` (h, w) and ``"scale"``
(sx, sy: original pixel -> transformed pixel); ``TrainTransform`` replaces ``"areas"`` by the
areas of the transformed boxes.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

__all__ = ["TrainTransform", "EvalTransform", "unletterbox", "ssd_expand", "ssd_iou_crop", "AUGMENTS"]

SSD_MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)  # None: keep the image as is; 0: any crop
STRONG_SCALE = (0.5, 1.5)  # Ultralytics' default scale gain 0.5
AUGMENTS = ("standard", "strong", "ssd")
MEAN_RGB = (123, 117, 104)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def scale_crop_params(rng: np.random.Generator, height: int, width: int, size: int,
                      scale: tuple[float, float], hflip: float) -> tuple[int, int, int, int, bool]:
    """Random (new_h, new_w, top, left, flip) of ``scale_pad_crop``: the longer side resized to
    ``size`` times a factor uniform in ``scale``, a crop offset uniform over the padded image,
    a horizontal flip with probability ``hflip``."""
    f = size / max(height, width) * rng.uniform(*scale)
    nh, nw = max(1, round(height * f)), max(1, round(width * f))
    top = int(rng.integers(0, max(nh, size) - size + 1))
    left = int(rng.integers(0, max(nw, size) - size + 1))
    return nh, nw, top, left, bool(rng.random() < hflip)


def scale_pad_crop(image: np.ndarray, boxes: np.ndarray, params: tuple[int, int, int, int, bool], size: int,
                   min_visibility: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize to (new_h, new_w) (bilinear), pad at the bottom / right with the mean colour to at
    least size x size, crop size x size at (top, left), flip -> (image [size, size, C], boxes
    [K, 4] clipped to the crop, keep [N] bool: which input boxes survive — those with a positive
    clipped width and height keeping at least ``min_visibility`` of their area). The same
    geometry as albumentations' Resize, PadIfNeeded(top_left), Crop, HorizontalFlip with
    BboxParams(min_visibility, clip=True, filter_invalid_bboxes=True) (tests/test_transforms.py),
    without its per-box bookkeeping (~1 ms per image, most of a small image's pipeline)."""
    nh, nw, top, left, flip = params
    h, w = image.shape[:2]
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    out = image[top : top + size, left : left + size]
    if out.shape[0] < size or out.shape[1] < size:
        fill = MEAN_RGB if image.ndim == 3 and image.shape[2] == 3 else 0
        out = cv2.copyMakeBorder(out, 0, size - out.shape[0], 0, size - out.shape[1], cv2.BORDER_CONSTANT, value=fill)
    b = boxes.astype(np.float64) * np.array([nw / w, nh / h, nw / w, nh / h]) - np.array([left, top, left, top])
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    c = b.clip(0, size)
    cw, ch = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
    keep = (cw > 0) & (ch > 0) & (cw * ch >= min_visibility * area)
    c = c[keep]
    if flip:
        out = cv2.flip(np.ascontiguousarray(out), 1)
        c = np.stack([size - c[:, 2], c[:, 1], size - c[:, 0], c[:, 3]], axis=1)
    return np.ascontiguousarray(out), c.astype(np.float32).reshape(-1, 4), keep


def ssd_expand(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, max_ratio: float = 4.0,
               p: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """SSD "zoom out": place the image at a random spot of a canvas up to ``max_ratio`` times
    larger, filled with the mean colour; boxes shift with it."""
    if rng.random() >= p:
        return image, boxes
    h, w = image.shape[:2]
    r = rng.uniform(1, max_ratio)
    ch, cw = int(h * r), int(w * r)
    top, left = int(rng.uniform(0, ch - h)), int(rng.uniform(0, cw - w))
    canvas = np.empty((ch, cw, 3), image.dtype)
    canvas[:] = MEAN_RGB
    canvas[top : top + h, left : left + w] = image
    return canvas, boxes + np.array([left, top, left, top], boxes.dtype)


def ssd_iou_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 trials: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SSD's random crop: pick a minimum IoU from {keep, 0.1, 0.3, 0.5, 0.7, 0.9, any}; try
    crops of 0.3-1x the sides (aspect 0.5-2) until one overlaps some gt by at least that much;
    keep the boxes whose centres fall inside, clipped to the crop."""
    h, w = image.shape[:2]
    min_iou = SSD_MIN_IOUS[int(rng.integers(len(SSD_MIN_IOUS)))]
    if min_iou is None or len(boxes) == 0:
        return image, boxes, labels
    for _ in range(trials):
        cw, ch = rng.uniform(0.3 * w, w), rng.uniform(0.3 * h, h)
        if not 0.5 <= ch / cw <= 2:
            continue
        x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        crop = np.array([x0, y0, x0 + cw, y0 + ch])
        if _iou_matrix(crop[None], boxes).max() < min_iou:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = np.all((centres > crop[:2]) & (centres < crop[2:]), axis=1)
        if not inside.any():
            continue
        x0, y0, x1, y1 = int(crop[0]), int(crop[1]), int(crop[2]), int(crop[3])
        kept = boxes[inside].copy()
        kept[:, 0::2] = kept[:, 0::2].clip(x0, x1) - x0
        kept[:, 1::2] = kept[:, 1::2].clip(y0, y1) - y0
        return image[y0:y1, x0:x1], kept, labels[inside]
    return image, boxes, labels


class TrainTransform:
    """Training augmentation to a size x size image (see the module docstring)."""

    def __init__(self, size: int = 512, scale: tuple[float, float] | None = None, hflip: float = 0.5,
                 color_jitter: float = 0.3, min_visibility: float = 0.3, ssd: bool = False, seed: int = 0, *,
                 strong: bool = False) -> None:
        self.size, self.ssd, self.strong = size, ssd, strong and not ssd
        scale = scale or (STRONG_SCALE if self.strong else (0.6, 1.4))
        # the standard geometry runs in numpy (scale_pad_crop); albumentations does the rest
        self.scale, self.hflip, self.min_visibility = tuple(scale), hflip, min_visibility
        self.fast = not ssd and not self.strong
        photometric = [A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                     hue=min(0.5, color_jitter / 6), p=0.8)] if color_jitter > 0 else []
        if self.strong and color_jitter > 0:  # Ultralytics' HSV gains (v 0.4, s 0.7, h 0.015) and its rare extras
            photometric = [A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.7, hue=0.015, p=0.8),
                           A.ToGray(p=0.01), A.Blur(p=0.01), A.CLAHE(p=0.01)]
        if ssd:
            geometric = [A.Resize(size, size)]
        else:
            # strong: half of the crops contain every box (RandomSizedBBoxSafeCrop: a random crop
            # around the union of the boxes, resized to size x size), so no object is cut away
            crop = (A.OneOf([A.RandomCrop(size, size), A.RandomSizedBBoxSafeCrop(size, size)], p=1.0)
                    if self.strong else A.RandomCrop(size, size))
            geometric = [
                A.LongestMaxSize(max_size=size),
                A.RandomScale(scale_limit=(scale[0] - 1, scale[1] - 1), p=1.0),
                A.PadIfNeeded(size, size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=MEAN_RGB),
                crop,
            ]
        # fast: the geometry in numpy and only the colour jitter here (reseeded per image: keep it small)
        self.pipeline = A.Compose(
            [*([] if self.fast else [*geometric, A.HorizontalFlip(p=hflip)]), *photometric],
            bbox_params=None if self.fast else A.BboxParams(
                format="pascal_voc", label_fields=["labels", "ignore"], min_visibility=min_visibility, clip=True,
                filter_invalid_bboxes=True),
            seed=seed,
        )
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Seed every random choice (called per DataLoader worker)."""
        self.rng = np.random.default_rng(seed)
        self.pipeline.set_random_seed(seed)

    def __call__(self, item: dict) -> dict:
        image = item["image"]
        h, w = image.shape[:2]
        ignore_boxes = item.get("ignore_boxes", np.zeros((0, 4), np.float32))
        ignore_labels = item.get("ignore_labels", np.full(len(ignore_boxes), -1))
        boxes = np.concatenate([item["boxes"], ignore_boxes]).astype(np.float32)
        labels = np.concatenate([item["labels"], ignore_labels]).astype(np.int64)
        ignore = np.r_[np.zeros(len(item["boxes"]), bool), np.ones(len(ignore_boxes), bool)]
        if self.ssd:
            image, boxes = ssd_expand(image, boxes, self.rng)
            crop_img, crop_boxes, keep_idx = ssd_iou_crop(image, boxes, np.arange(len(boxes)), self.rng)
            image, boxes, labels, ignore = crop_img, crop_boxes, labels[keep_idx], ignore[keep_idx]
        if self.fast:
            params = scale_crop_params(self.rng, *image.shape[:2], self.size, self.scale, self.hflip)
            image, b, keep = scale_pad_crop(image, boxes, params, self.size, self.min_visibility)
            out = self.pipeline(image=image)
            lab, ign = labels[keep], ignore[keep]
        else:
            out = self.pipeline(image=image, bboxes=boxes, labels=labels, ignore=ignore)
            b = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            lab = np.asarray(out["labels"], np.int64)
            ign = np.asarray(out["ignore"], bool)
        bw = b.astype(np.float64)
        return {**item, "image": out["image"], "boxes": b[~ign], "labels": lab[~ign], "ignore_boxes": b[ign],
                "ignore_labels": lab[ign], "areas": ((bw[:, 2] - bw[:, 0]) * (bw[:, 3] - bw[:, 1]))[~ign],
                "orig_size": (h, w), "scale": (1.0, 1.0)}


class EvalTransform:
    """Letterbox to size x size: one resize factor (aspect kept), padding at bottom/right."""

    def __init__(self, size: int = 512) -> None:
        self.size = size

    def __call__(self, item: dict) -> dict:
        image = item["image"]
        h, w = image.shape[:2]
        r = self.size / max(h, w)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        sx, sy = nw / w, nh / h
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        canvas = np.empty((self.size, self.size, 3), np.uint8)
        canvas[:] = MEAN_RGB
        canvas[:nh, :nw] = resized
        factors = np.array([sx, sy, sx, sy], np.float32)
        return {**item, "image": canvas, "boxes": item["boxes"] * factors,
                "ignore_boxes": item["ignore_boxes"] * factors, "orig_size": (h, w), "scale": (sx, sy),
                "orig_boxes": item["boxes"], "orig_ignore_boxes": item["ignore_boxes"]}


def unletterbox(boxes, scale: tuple[float, float], orig_size: tuple[int, int]):
    """Boxes [N, 4] in letterboxed pixels -> original image pixels (clipped to it).
    Works on numpy arrays and torch tensors."""
    sx, sy = scale
    h, w = orig_size
    out = boxes / boxes.new_tensor([sx, sy, sx, sy]) if hasattr(boxes, "new_tensor") else boxes / np.array([sx, sy, sx, sy])
    out[..., 0::2] = out[..., 0::2].clip(0, w)
    out[..., 1::2] = out[..., 1::2].clip(0, h)
    return out
