"""Per-class results of an evaluation: AP@[.5:.95] and AP50 per class name, the printed table,
the flat keys of the run logs, and the warning for a class left far behind the others."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

__all__ = ["per_class_results", "per_class_table", "flat_per_class", "worst_class", "lagging_class_warnings",
           "LAG_FACTOR"]

LAG_FACTOR = 0.5  # a class below half the median AP of the others is "far below" them
MIN_OTHERS_AP = 0.1  # ... when the others have learnt something


def per_class_results(evaluation) -> dict[str, dict[str, float]]:
    """{class name: {"AP": AP@[.5:.95], "AP50": AP at IoU 0.5}} (nan: no gts of that class) from a
    ``DetectorEvaluation``."""
    ap, ap50 = evaluation.per_class(), evaluation.per_class(0.5)
    return {name: {"AP": ap[name], "AP50": ap50[name]} for name in ap}


def per_class_table(results: Mapping[str, Mapping[str, float]]) -> str:
    width = max([len(n) for n in results] + [5])
    lines = [f"{'class':<{width}}  AP@[.5:.95]    AP50"]
    for name, r in results.items():
        ap, ap50 = r["AP"], r.get("AP50", math.nan)
        lines.append(f"{name:<{width}}  {'     n/a' if ap != ap else f'{ap:8.3f}'}    "
                     f"{'  n/a' if ap50 != ap50 else f'{ap50:.3f}'}")
    return "\n".join(lines)


def flat_per_class(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{"AP/<class>": ..., "AP50/<class>": ...}: the keys of metrics.jsonl (``val/`` + key in results.csv)."""
    return {f"{k}/{name}": v for name, r in results.items() for k, v in r.items()}


def worst_class(results: Mapping[str, Mapping[str, float]]) -> tuple[str, float] | None:
    scored = [(name, r["AP"]) for name, r in results.items() if r["AP"] == r["AP"]]
    return min(scored, key=lambda x: x[1]) if len(scored) > 1 else None


def lagging_class_warnings(results: Mapping[str, Mapping[str, float]], median_px: Mapping[str, float],
                           img_size: int, stride: int, fix_size: Mapping[str, int] | None = None) -> list[str]:
    """A warning for each class whose AP is below LAG_FACTOR x the median AP of the other classes
    (when that median is at least MIN_OTHERS_AP), naming its median box side at the training size
    and the remedy: a larger --img-size when the box is under 2 x the smallest stride, else more
    examples or steps."""
    out = []
    for name, r in results.items():
        others = [o["AP"] for n, o in results.items() if n != name and o["AP"] == o["AP"]]
        if r["AP"] != r["AP"] or not others:
            continue
        typical = statistics.median(others)
        if typical < MIN_OTHERS_AP or r["AP"] >= LAG_FACTOR * typical:
            continue
        px = median_px.get(name, math.nan)
        text = (f"warning: class '{name}' has AP {r['AP']:.3f}, far below the other classes (median {typical:.3f}); "
                f"its median box is {px:.0f} px at --img-size {img_size} ({px / stride:.1f} x the smallest stride "
                f"{stride} px)")
        if px < 2 * stride:
            size = (fix_size or {}).get(name)
            text += f": too small to resolve, train at --img-size {size}" if size else \
                ": too small to resolve, train at a larger --img-size"
        else:
            text += ": its size is not the problem; it may need more training boxes or a longer run (--iters)"
        out.append(text)
    return out
