"""The image-size rule before classes were looked at (the 10th percentile of all boxes pooled):
what ``minidet.class_sizes.plan_img_size`` improves on, kept as the tests' reference."""

import math
from collections.abc import Sequence

import numpy as np


def suggest_img_size(records: Sequence, *, stride: int = 8, min_side: float | None = None, percentile: float = 10,
                     multiple: int = 32, min_size: int = 128, max_size: int = 1024) -> int:
    """An image size (longer side, a multiple of ``multiple``) at which the ``percentile``-th
    percentile object side sqrt(w h) reaches ``min_side`` px (default 2 x ``stride``, the model's
    smallest stride: then about two prior centres fall inside such an object along each axis —
    ATSS and FCOS only take priors whose centre lies inside the box). Boxes are measured
    relative to their image's longer side, so the answer does not depend on the native size;
    it is raised to ``min_size``, then capped by the images' own median longer side (rounded up
    to ``multiple``: upsampling adds no detail) and by ``max_size``."""
    min_side = 2 * stride if min_side is None else min_side
    rel, longer = [], []
    for r in records:
        longer.append(max(r.width, r.height))
        b = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        if len(b):
            rel.append(np.sqrt(((b[:, 2:] - b[:, :2]).clip(0)).prod(1)) / max(r.width, r.height))
    if not longer:
        raise ValueError("suggest_img_size needs at least one image")
    def up(x: float) -> int:
        return int(math.ceil(x / multiple) * multiple)

    cap = min(up(float(np.median(longer))), max_size)
    rel = np.concatenate(rel) if rel else np.zeros(0)
    rel = rel[rel > 0]
    need = min_side / np.percentile(rel, percentile) if len(rel) else min_size
    return min(up(max(need, min_size)), cap)
