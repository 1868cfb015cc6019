"""Bar and line charts for the loss studies, drawn by minidet.plots (matplotlib, Agg).

Each chart function returns a BGR uint8 image of the requested pixel size; ``grid`` tiles
several, ``save`` writes a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from minidet import plots


def _render(fig) -> np.ndarray:
    return cv2.cvtColor(plots.figure_to_array(fig), cv2.COLOR_RGB2BGR)


def bar_chart(labels: Sequence[str], means: Sequence[float], stds: Sequence[float], title: str,
              xlabel: str, groups: Sequence[str] | None = None, width: int = 900) -> np.ndarray:
    """Horizontal bars (mean) with error bars (std), one row per label, coloured by group."""
    fig = plots.new_figure(width, 110 + 24 * len(labels))
    plots.bar_chart(fig.add_subplot(), labels, means, stds, title, xlabel, groups)
    return _render(fig)


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str,
               ylabel: str, log_y: bool = False, size: tuple[int, int] = (640, 400)) -> np.ndarray:
    """Lines (label, xs, ys) on shared axes; ``log_y``: a log-scale y axis (positive values)."""
    fig = plots.new_figure(*size)
    plots.line_chart(fig.add_subplot(), series, title, xlabel, ylabel, log_y)
    return _render(fig)


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
