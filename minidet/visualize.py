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


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    names: Sequence[str]) -> np.ndarray:
    """A copy of the RGB image [H, W, 3] with boxes [K, 4] (xyxy pixels) and labels drawn."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    scale = max(0.35, min(h, w) / 700)
    thick = max(1, int(round(min(h, w) / 300)))
    for box, score, label in zip(np.asarray(boxes), np.asarray(scores), np.asarray(labels), strict=True):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = class_colour(int(label))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        text = f"{names[int(label)] if int(label) < len(names) else label} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        tx = min(max(0, x1), max(0, w - tw - 2))
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(h - base - 1, y1 + th + 2)  # inside when no room above
        cv2.rectangle(out, (tx, ty - th - 1), (tx + tw + 2, ty + base - 1), colour, -1)
        luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        cv2.putText(out, text, (tx + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0) if luma > 140 else (255, 255, 255), 1, cv2.LINE_AA)
    return out
