"""Drawing detections: boxes in a readable colour per class, "name score" labels kept inside
the image."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128)]


def class_colour(label: int) -> tuple[int, int, int]:
    return PALETTE[label % len(PALETTE)]


DRAW_MIN_SIDE = 512  # the demo's annotated images: short side at least this many pixels
DRAW_MAX_SIDE = 4096  # ... and long side at most this many (only huge images are shrunk)


def drawing_scale(height: int, width: int, min_side: int = DRAW_MIN_SIDE, max_side: int = DRAW_MAX_SIDE) -> float:
    """The factor an image is resized by for drawing: a short side under ``min_side`` is enlarged
    to it (the long side stopping at ``max_side``), a long side over ``max_side`` is shrunk to it,
    and everything in between is drawn at its own size (1.0)."""
    short, long = min(height, width), max(height, width)
    if long > max_side:
        return max_side / long
    if short >= min_side:
        return 1.0
    return min(min_side / short, max_side / long)


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None, labels: np.ndarray,
                    names: Sequence[str], *, min_side: int | None = None,
                    max_side: int = DRAW_MAX_SIDE) -> np.ndarray:
    """A copy of the RGB image [H, W, 3] with boxes [K, 4] (xyxy pixels of ``image``) and
    "name score" labels drawn (``scores`` None: names only, e.g. ground truth). ``min_side`` (e.g. ``DRAW_MIN_SIDE``): draw on a copy resized by
    ``drawing_scale`` so small images come out readable; None draws at the image's own size.
    Line width and font grow with the drawn size; labels sit on a filled box of the class colour,
    above the box or inside it at the image's top, and never leave the image."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    h, w = image.shape[:2]
    factor = drawing_scale(h, w, min_side, max_side) if min_side else 1.0
    if factor != 1.0:
        size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
        out = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA)
        boxes = boxes * np.array([size[0] / w, size[1] / h, size[0] / w, size[1] / h])
        w, h = size
    else:
        out = np.ascontiguousarray(image.copy())
    short = min(h, w)
    scale = max(0.35, short / 800)
    thick = max(1, int(round(short / 256)))
    text_thick = max(1, int(round(scale * 1.6)))
    labels = np.asarray(labels).reshape(-1)
    named_only = scores is None
    scores = np.ones(len(labels)) if named_only else np.asarray(scores).reshape(-1)
    for k in np.argsort(scores, kind="stable"):  # highest scores last, so their labels end on top
        x1, y1, x2, y2 = (int(round(v)) for v in np.clip(boxes[k], 0, [w - 1, h - 1, w - 1, h - 1]))
        label, colour = int(labels[k]), class_colour(int(labels[k]))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        text = f"{names[label] if label < len(names) else label}" + ("" if named_only else f" {scores[k]:.2f}")
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, text_thick)
        pad = max(1, text_thick)
        box_h = th + base + 2 * pad
        tx = min(max(0, x1), max(0, w - tw - 2 * pad))
        top = y1 - box_h if y1 - box_h >= 0 else min(max(0, y1), max(0, h - box_h))  # inside when no room above
        cv2.rectangle(out, (tx, top), (tx + tw + 2 * pad, top + box_h), colour, -1)
        luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        cv2.putText(out, text, (tx + pad, top + pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0) if luma > 140 else (255, 255, 255), text_thick, cv2.LINE_AA)
    return out
