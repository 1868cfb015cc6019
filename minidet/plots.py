"""Every chart minidet draws, with matplotlib's Agg renderer (``matplotlib.figure.Figure``
directly: no pyplot, no display, no global backend switch).

Run folder (``RunLogger.close`` and ``minidet.evaluation.figures``): ``plot_results``
(results.png), ``plot_pr_curves`` (pr_curves.png), ``plot_confusion_matrix``
(confusion_matrix.png), ``save_image_mosaic`` (val_labels.jpg / val_predictions.jpg). Studies
(minidet/study/report.py): ``bar_chart`` and ``line_chart`` draw into an Axes of ``new_figure``;
``figure_to_array`` renders a figure to pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .evaluation.coco import IOU_THRS, REC_THRS
from .evaluation.confusion import CONF_IOU_THRESH, CONF_SCORE_THRESH
from .run_records import finite, loss_keys, train_and_evals

__all__ = ["bar_chart", "figure_to_array", "line_chart", "new_figure", "plot_confusion_matrix",
           "plot_pr_curves", "plot_results", "pr_curve_values", "save_figure", "save_image_mosaic"]

DPI = 100


def new_figure(width_px: int, height_px: int, layout: str | None = "constrained") -> Figure:
    """An Agg-backed figure of exactly width_px x height_px pixels (at ``DPI``); ``layout`` None
    leaves the margins to the caller."""
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as RGB uint8 [H, W, 3]."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _smooth(ys: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Moving average over about ``frac`` of the points (odd window, edges by reflection)."""
    k = int(len(ys) * frac) // 2 * 2 + 1
    if k < 3:
        return ys
    padded = np.pad(ys, k // 2, mode="reflect")
    return np.convolve(padded, np.ones(k) / k, mode="valid")


def plot_results(records: Sequence[dict], out_png: str | Path) -> Path | None:
    """results.png: a grid of small panels, like Ultralytics' results.png: each train loss
    component (per logged iteration, with a moving average), the learning rate, the loss
    weights (when a weighting logged any) and the validation AP, AP50, AP75 per evaluation
    (by epoch). None (nothing written) when there are no records."""
    train, evals = train_and_evals(records)
    panels: list[tuple[str, str, list[tuple[str, list, list]]]] = []  # (title, x label, lines)

    def series(rows: list[dict], key: str, x: str) -> tuple[list, list]:
        pts = [(r[x], r[key]) for r in rows if finite(r.get(key))]
        return [p[0] for p in pts], [p[1] for p in pts]

    for k in loss_keys(train):
        panels.append((f"train/{k}", "iteration", [(k, *series(train, k, "iteration"))]))
    if any(finite(r.get("lr")) for r in train):
        panels.append(("lr", "iteration", [("lr", *series(train, "lr", "iteration"))]))
    weights = sorted({k for r in train for k in r if k.startswith("weight_")})
    if weights:
        panels.append(("loss weights", "iteration", [(k, *series(train, k, "iteration")) for k in weights]))
    for k in ("AP", "AP50", "AP75"):
        if any(finite(r.get(k)) for r in evals):
            panels.append((f"val/{k}", "epoch", [(k, *series(evals, k, "epoch"))]))
    if not panels:
        return None
    cols = min(5, len(panels))
    rows = math.ceil(len(panels) / cols)
    width, height = 320 * cols, 260 * rows
    fig = new_figure(width, height, layout=None)  # fixed pixel margins: half the time of "constrained"
    fig.subplots_adjust(left=50 / width, right=1 - 12 / width, bottom=40 / height, top=1 - 28 / height,
                        wspace=0.32, hspace=0.55)
    for i, (title, xlabel, lines) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, xs, ys in lines:
            if xlabel == "epoch" or len(xs) < 2:
                ax.plot(xs, ys, marker="o", markersize=4, label=label)
            elif title.startswith("train/"):
                ax.plot(xs, ys, linewidth=1, alpha=0.6, label="logged")
                ax.plot(xs, _smooth(np.asarray(ys, float)), ":", linewidth=2, label="smoothed")
            else:
                ax.plot(xs, ys, linewidth=1.5, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and (len(lines) > 1 or title.startswith("train/")):
            ax.legend(fontsize=7)
    return save_figure(fig, out_png)


def pr_curve_values(precision: np.ndarray, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From COCOeval's precision [T, R, K, A, M] (pycocotools' ``eval['precision']``) at IoU
    ``iou``, area "all", maxDets 100 -> (recall thresholds [R], precision per class [K, R] with
    nan for classes without ground truth, their mean over classes [R]: its mean is the AP at
    ``iou``, e.g. AP50)."""
    t = np.flatnonzero(np.isclose(IOU_THRS, iou))
    if t.size != 1:
        raise ValueError(f"IoU {iou} is not one of COCO's thresholds {IOU_THRS.round(2).tolist()}")
    p = np.asarray(precision, np.float64)[t[0], :, :, 0, 2].T  # [K, R]
    per_class = np.where(p > -1, p, np.nan)
    has_gt = ~np.isnan(per_class).all(1)
    mean = per_class[has_gt].mean(0) if has_gt.any() else np.full(p.shape[1], np.nan)
    return REC_THRS.copy(), per_class, mean


def plot_pr_curves(precision: np.ndarray, class_names: Sequence[str], out_png: str | Path, iou: float = 0.5) -> Path:
    """pr_curves.png: the precision-recall curve of each class (legend: its AP at ``iou``) and
    their mean (the "all classes" AP, e.g. AP50), exactly COCOeval's interpolated precision at
    101 recall points (area all, maxDets 100; ``pr_curve_values``). Above 20 classes the class
    curves are grey and unlabelled."""
    recall, per_class, mean = pr_curve_values(precision, iou)
    fig = new_figure(900, 640)
    ax = fig.add_subplot()
    many = len(class_names) > 20
    for name, p in zip(class_names, per_class, strict=True):
        if np.isnan(p).all():
            continue
        if many:
            ax.plot(recall, p, linewidth=1, color="grey", alpha=0.5)
        else:
            ax.plot(recall, p, linewidth=1.2, label=f"{name} {p.mean():.3f}")
    if not np.isnan(mean).all():
        ax.plot(recall, mean, linewidth=3, color="blue", label=f"all classes {mean.mean():.3f} AP@{iou:g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"precision-recall at IoU {iou:g} (COCO interpolation, area all, 100 detections per image)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
    return save_figure(fig, out_png)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], out_png: str | Path,
                          iou_thresh: float = CONF_IOU_THRESH, score_thresh: float = CONF_SCORE_THRESH) -> Path:
    """confusion_matrix.png of counts [C + 1, C + 1] ``[predicted, true]``, background last
    (``minidet.evaluation.confusion``): colour = fraction of each true class's column, the
    counts written in the cells (up to 30 classes); the thresholds are in the title."""
    matrix = np.asarray(matrix)
    names = [*class_names, "background"]
    n = len(names)
    side = int(min(2400, max(640, 40 * n + 260)))
    fig = new_figure(side, side)
    ax = fig.add_subplot()
    totals = matrix.sum(0, keepdims=True)
    frac = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class (column)")
    if n <= 31:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if frac[i, j] > 0.5 else "black")
    ticks = np.arange(n)
    ax.set_xticks(ticks, names, rotation=90 if n > 8 else 0, fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xlabel("true (background column: false positives)")
    ax.set_ylabel("predicted (background row: missed objects)")
    ax.set_title(f"confusion matrix: IoU >= {iou_thresh:g}, score >= {score_thresh:g}", fontsize=11)
    return save_figure(fig, out_png)


def save_image_mosaic(images: Sequence[np.ndarray], out_path: str | Path, columns: int | None = None) -> Path:
    """Tile RGB images [H, W, 3] (any sizes) row by row into one image, each in a cell of the
    largest height x width, grey padding (114) and a 2 px white grid; written with OpenCV
    (JPEG or PNG by suffix). ``columns`` default: ceil(sqrt(len(images)))."""
    if not images:
        raise ValueError("no images for the mosaic")
    cols = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    ch, cw = max(im.shape[0] for im in images), max(im.shape[1] for im in images)
    gap = 2
    canvas = np.full((rows * (ch + gap) - gap, cols * (cw + gap) - gap, 3), 255, np.uint8)
    for i, im in enumerate(images):
        y, x = (i // cols) * (ch + gap), (i % cols) * (cw + gap)
        canvas[y : y + ch, x : x + cw] = 114
        canvas[y : y + im.shape[0], x : x + im.shape[1]] = im[..., :3]
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


# --------------------------------------------------------------------------- study charts


def bar_chart(ax, labels: Sequence[str], means: Sequence[float], stds: Sequence[float], title: str, xlabel: str,
              groups: Sequence[str] | None = None) -> None:
    """Horizontal bars (mean, labelled with its value) with +-std error bars, one row per label
    (top to bottom), coloured by group (a legend when there are several); "n/a" for a nan mean."""
    groups = list(groups or [""] * len(labels))
    palette = [f"C{i}" for i in range(10)]
    colours = {g: palette[i % 10] for i, g in enumerate(dict.fromkeys(groups))}
    y = np.arange(len(labels))
    m = np.asarray(means, np.float64)
    s = np.nan_to_num(np.asarray(stds, np.float64), nan=0.0)
    ok = ~np.isnan(m)
    ax.barh(y[ok], np.maximum(m[ok], 0), xerr=s[ok], color=[colours[g] for g, k in zip(groups, ok, strict=True) if k],
            error_kw={"linewidth": 1, "capsize": 2}, height=0.7)
    top = float(np.max(m[ok] + s[ok])) if ok.any() else 1.0
    for i in np.flatnonzero(ok):
        ax.text(m[i] + s[i] + 0.01 * top, i, f"{m[i]:.3f}", va="center", fontsize=8)
    for i in np.flatnonzero(~ok):
        ax.text(0.01 * top, i, "n/a", va="center", fontsize=8, color="grey")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(top, 1e-6) * 1.12)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=10, loc="left", wrap=True)
    ax.grid(axis="x", alpha=0.3)
    if len(colours) > 1:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=g) for g, c in colours.items()], fontsize=8, loc="lower right")


def line_chart(ax, series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, xlabel: str,
               ylabel: str, log_y: bool = False) -> None:
    """Lines (label, xs, ys) on shared axes, non-finite values dropped (and non-positive ones
    with ``log_y``, a log-scale y axis); a single point is drawn as a marker."""
    drawn = 0
    for label, xs, ys in series:
        pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)
               if y is not None and math.isfinite(y) and (not log_y or y > 0)]
        if not pts:
            continue
        px, py = zip(*pts, strict=True)
        ax.plot(px, py, marker="o" if len(pts) == 1 else None, linewidth=1.5, label=label)
        drawn += 1
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title + ("" if drawn else " (no data)"), fontsize=10, loc="left", wrap=True)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel + (" (log scale)" if log_y else ""), fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
