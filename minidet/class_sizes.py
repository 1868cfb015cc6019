"""Per-class box sizes, and the image size at which every class stays resolvable.

A box is measured as its side sqrt(w h) relative to its image's longer side, so the numbers do not
depend on the native resolution; at a training size S (the longer side after resizing) the side
is ``rel * S`` pixels. A class is resolvable when its median box side reaches ``min_side`` =
2 x the model's smallest stride: about two prior centres then fall inside such a box along each
axis (ATSS and FCOS only take priors whose centre lies inside the box), and a Max-IoU anchor of the
same size half a stride off still overlaps it by IoU >= 0.5.

``plan_img_size`` (``--img-size auto``) takes the smallest size (a multiple of 32) at which
1. the 10th-percentile box of all classes pooled reaches ``min_side`` (the rule before classes
   were looked at), and
2. the median box of every class holding at least ``MIN_SHARE`` of the boxes (and ``MIN_BOXES``)
   reaches ``min_side``,
raised to ``min_size`` and capped by the images' own median longer side (upsampling adds no
detail) and by the compute ceiling ``COMPUTE_CEILING``. It returns one line per class saying what
that class gets, and for a class the cap leaves under-resolved, why and the flag that fixes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_SHARE", "MIN_BOXES", "COMPUTE_CEILING", "ClassSizes", "class_sizes", "SizePlan", "plan_img_size",
           "size_report"]

MIN_SHARE = 0.01  # a class with fewer boxes than this share is too rare to set the image size
MIN_BOXES = 5
COMPUTE_CEILING = 640  # px, longer side: the automatic size never goes above it (--img-size does)
QUANTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class ClassSizes:
    """One class's boxes: ``rel`` [N] sqrt(w h) / image longer side of each box."""

    name: str
    rel: np.ndarray
    share: float

    @property
    def boxes(self) -> int:
        return len(self.rel)

    @property
    def meaningful(self) -> bool:
        return self.share >= MIN_SHARE and self.boxes >= MIN_BOXES

    def median_px(self, size: int) -> float:
        return float(np.median(self.rel)) * size if self.boxes else float("nan")

    def quantiles_px(self, size: int) -> list[float]:
        return [float(np.percentile(self.rel, q)) * size for q in QUANTILES] if self.boxes else []


def class_sizes(records: Sequence, class_names: Sequence[str]) -> list[ClassSizes]:
    """Relative box sides per class of ``records`` (``boxes`` [N, 4] xyxy, ``labels`` [N],
    ``width``, ``height``); degenerate boxes are left out."""
    per: list[list[np.ndarray]] = [[] for _ in class_names]
    for r in records:
        b = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        if not len(b):
            continue
        side = np.sqrt((b[:, 2:] - b[:, :2]).clip(0).prod(1)) / max(r.width, r.height)
        labels = np.asarray(r.labels).reshape(-1)
        for c in np.unique(labels):
            per[int(c)].append(side[(labels == c) & (side > 0)])
    rels = [np.concatenate(p) if p else np.zeros(0) for p in per]
    total = max(1, sum(len(x) for x in rels))
    return [ClassSizes(name, rel, len(rel) / total) for name, rel in zip(class_names, rels, strict=True)]


def _up(x: float, multiple: int = 32) -> int:
    return int(math.ceil(x / multiple) * multiple)


@dataclass(frozen=True)
class SizePlan:
    """The chosen size, the rule's inputs and one printable line per class."""

    size: int
    stride: int
    min_side: float
    cap: int
    cap_reason: str
    classes: list[ClassSizes]
    lines: list[str]

    def under_resolved(self) -> list[ClassSizes]:
        """Meaningful classes whose median box stays under ``min_side`` at the chosen size."""
        return [c for c in self.classes if c.meaningful and c.median_px(self.size) < self.min_side]


def plan_img_size(records: Sequence, class_names: Sequence[str], *, stride: int = 8, min_side: float | None = None,
                  percentile: float = 10, min_size: int = 128, ceiling: int = COMPUTE_CEILING) -> SizePlan:
    """The automatic training size by the module's rule, with a line per class."""
    min_side = 2 * stride if min_side is None else min_side
    longer = [max(r.width, r.height) for r in records]
    if not longer:
        raise ValueError("plan_img_size needs at least one image")
    own = _up(float(np.median(longer)))
    cap, cap_reason = (own, f"the images' own size (median longer side {float(np.median(longer)):.0f} px)") \
        if own <= ceiling else (ceiling, f"the compute ceiling of the automatic size ({ceiling} px)")
    classes = class_sizes(records, class_names)
    pooled = np.concatenate([c.rel for c in classes]) if classes else np.zeros(0)
    need = [min_side / np.percentile(pooled, percentile)] if len(pooled) else []
    need += [min_side / float(np.median(c.rel)) for c in classes if c.meaningful]
    size = min(_up(max([min_size, *need])), cap)
    lines = []
    for c in classes:
        head = f"  {c.name}: {c.boxes} boxes ({c.share:.1%})"
        if not c.boxes:
            lines.append(head + ", none in the training split")
            continue
        m = c.median_px(size)
        text = f"{head}, median side {m:.0f} px at {size} px = {m / stride:.1f} x the smallest stride ({stride} px)"
        if not c.meaningful:
            text += f"; too rare to set the size (under {MIN_SHARE:.0%} of the boxes or {MIN_BOXES} boxes)"
        elif m < min_side:
            fix = _up(min_side / float(np.median(c.rel)))
            above = " (above the images' own size: upsampled)" if fix > own else ""
            text += (f"; UNDER-RESOLVED (median under 2 x stride = {min_side:.0f} px) because of {cap_reason}: "
                     f"--img-size {fix} resolves it{above}")
        lines.append(text)
    return SizePlan(size, stride, min_side, cap, cap_reason, classes, lines)


def size_report(classes: Sequence[ClassSizes], size: int, stride: int) -> list[str]:
    """One line per class: boxes, share, box-side quantiles in px at ``size``, and a flag when its
    median falls under the smallest stride (or under 2 x, where priors get scarce)."""
    width = max([len(c.name) for c in classes] + [5])
    qs = " / ".join(f"p{q}" for q in QUANTILES)
    lines = [f"  {'class':<{width}}  {'boxes':>7}  {'share':>6}  sqrt(w h) px at {size} ({qs})"]
    for c in classes:
        if not c.boxes:
            lines.append(f"  {c.name:<{width}}  {0:7d}  {0:6.1%}  -")
            continue
        q = c.quantiles_px(size)
        m = q[2]
        flag = ("  <- median UNDER the smallest stride" if m < stride else
                "  <- median under 2 x the smallest stride" if m < 2 * stride else "")
        lines.append(f"  {c.name:<{width}}  {c.boxes:7d}  {c.share:6.1%}  "
                     + " / ".join(f"{v:.0f}" for v in q) + flag)
    return lines
