"""Bar and line charts drawn with OpenCV (already a minidet dependency), for the loss studies.

Each function returns a BGR uint8 image; ``grid`` tiles several, ``save`` writes a PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

PALETTE = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
           (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]  # matplotlib's tab10, BGR
FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (215, 215, 215)


def _text(img, s: str, org, scale: float = 0.45, color=BLACK, thick: int = 1) -> None:
    cv2.putText(img, s, (int(org[0]), int(org[1])), FONT, scale, color, thick, cv2.LINE_AA)


def _width(s: str, scale: float = 0.45) -> int:
    return cv2.getTextSize(s, FONT, scale, 1)[0][0]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (m * step) <= n:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.1e}"


def bar_chart(labels: Sequence[str], means: Sequence[float], stds: Sequence[float], title: str,
              xlabel: str, groups: Sequence[str] | None = None, width: int = 900) -> np.ndarray:
    """Horizontal bars (mean) with error bars (std), one row per label, coloured by group."""
    groups = list(groups or [""] * len(labels))
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(dict.fromkeys(groups))}
    row, top, left = 24, 50, max([_width(s) for s in labels] + [60]) + 20
    right, bottom = 40, 50
    h = top + row * len(labels) + bottom
    img = np.full((h, width, 3), 255, np.uint8)
    vals = [m + (s if s == s else 0) for m, s in zip(means, stds, strict=True) if m == m]
    hi = max(vals + [1e-6])
    ticks = _ticks(0.0, hi)
    hi = ticks[-1]
    plot_w = width - left - right

    def x_of(v: float) -> int:
        return int(left + plot_w * v / hi)

    for t in ticks:
        cv2.line(img, (x_of(t), top - 5), (x_of(t), top + row * len(labels)), GREY, 1)
        _text(img, _fmt(t), (x_of(t) - _width(_fmt(t)) / 2, top + row * len(labels) + 18))
    for i, (lab, m, s, g) in enumerate(zip(labels, means, stds, groups, strict=True)):
        y = top + i * row
        _text(img, lab, (left - 10 - _width(lab), y + row * 0.7))
        if m != m:  # nan: no finished run
            _text(img, "n/a", (left + 5, y + row * 0.7), color=(120, 120, 120))
            continue
        cv2.rectangle(img, (left, y + 4), (x_of(max(m, 0.0)), y + row - 4), colours[g], -1)
        if s == s and s > 0:
            cv2.line(img, (x_of(max(m - s, 0)), y + row // 2), (x_of(m + s), y + row // 2), BLACK, 1, cv2.LINE_AA)
        _text(img, f"{m:.3f}", (x_of(m + (s if s == s else 0)) + 4, y + row * 0.7), 0.4)
    cv2.line(img, (left, top - 5), (left, top + row * len(labels)), BLACK, 1)
    _text(img, title, (10, 25), 0.55, thick=1)
    _text(img, xlabel, (left + plot_w / 2 - _width(xlabel) / 2, h - 10))
    if len(colours) > 1:
        x = width - right
        for g, c in reversed(colours.items()):
            x -= _width(g) + 30
            cv2.rectangle(img, (x, 34), (x + 12, 44), c, -1)
            _text(img, g, (x + 16, 44), 0.4)
    return img


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str,
               ylabel: str, log_y: bool = False, size: tuple[int, int] = (640, 400)) -> np.ndarray:
    """Lines (label, xs, ys) on shared axes; ``log_y`` plots log10 of the positive values."""
    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    img = np.full((h, w, 3), 255, np.uint8)
    clean = []
    for label, xs, ys in series:
        pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)
               if y == y and math.isfinite(y) and (not log_y or y > 0)]
        if log_y:
            pts = [(x, math.log10(y)) for x, y in pts]
        clean.append((label, pts))
    all_pts = [p for _, pts in clean for p in pts]
    if not all_pts:
        _text(img, title + " (no data)", (10, 25), 0.55)
        return img
    x0, x1 = min(p[0] for p in all_pts), max(p[0] for p in all_pts)
    y0, y1 = min(p[1] for p in all_pts), max(p[1] for p in all_pts)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    xt, yt = _ticks(x0, x1), _ticks(y0, y1)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = w - left - right, h - top - bottom

    def pix(x: float, y: float) -> tuple[int, int]:
        return int(left + pw * (x - x0) / (x1 - x0 or 1)), int(top + ph * (1 - (y - y0) / (y1 - y0 or 1)))

    for t in yt:
        cv2.line(img, pix(x0, t), pix(x1, t), GREY, 1)
        s = _fmt(10 ** t) if log_y else _fmt(t)
        _text(img, s, (left - 8 - _width(s, 0.4), pix(x0, t)[1] + 4), 0.4)
    for t in xt:
        cv2.line(img, pix(t, y0), pix(t, y1), GREY, 1)
        _text(img, _fmt(t), (pix(t, y0)[0] - _width(_fmt(t), 0.4) / 2, top + ph + 16), 0.4)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), BLACK, 1)
    for i, (label, pts) in enumerate(clean):
        colour = PALETTE[i % len(PALETTE)]
        if len(pts) > 1:
            cv2.polylines(img, [np.array([pix(*p) for p in pts], np.int32)], False, colour, 2, cv2.LINE_AA)
        elif pts:
            cv2.circle(img, pix(*pts[0]), 3, colour, -1, cv2.LINE_AA)
        _text(img, label, (left + 10, top + 16 + 16 * i), 0.4, colour, 1)
    _text(img, title, (10, 24), 0.5)
    _text(img, xlabel, (left + pw / 2 - _width(xlabel) / 2, h - 12), 0.45)
    ylab = ylabel + (" (log scale)" if log_y else "")
    side = np.full((24, ph, 3), 255, np.uint8)
    _text(side, ylab, (ph / 2 - _width(ylab, 0.42) / 2, 17), 0.42)
    img[top : top + ph, 4:28] = np.rot90(side)  # vertical axis label
    return img


def grid(images: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Tile equally sized images row by row (blank tiles fill the last row)."""
    h, w = images[0].shape[:2]
    tiles = list(images) + [np.full((h, w, 3), 255, np.uint8)] * (-len(images) % columns)
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def save(img: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")
    return path
