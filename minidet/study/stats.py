"""Paired comparisons over seeds: mean, sample std and the Student-t confidence interval.

A study trains every cell with the same seeds, and a seed fixes the initialisation and the data
order, so the difference of a cell to its reference is taken seed by seed (a paired design) and
the interval is the one-sample t-interval of those differences. The t quantile comes from the
regularised incomplete beta function (continued fraction, Numerical Recipes 6.4) inverted by
bisection; tests check it against tabulated values and ``scipy.stats.t`` where scipy is installed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Interval", "t_quantile", "student_t_cdf", "mean_interval", "verdict", "direction_agreement"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection to 1e-12 relative accuracy."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    """n values: their mean, sample std and the two-sided ``level`` t-interval of the mean
    (``low`` / ``high`` are nan for n < 2)."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    level: float = 0.95


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean, sample std and t-interval of ``values`` (nan and None dropped). For paired seeds,
    pass the per-seed differences: this is then the paired t-interval."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    nan = float("nan")
    if not xs:
        return Interval(0, nan, nan, nan, nan, level)
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Interval(1, mean, nan, nan, nan, level)
    std = statistics.stdev(xs)
    half = t_quantile(0.5 + level / 2.0, len(xs) - 1) * std / math.sqrt(len(xs))
    return Interval(len(xs), mean, std, mean - half, mean + half, level)


def verdict(diff: Interval) -> str:
    """"better" / "worse" when the interval of a difference excludes 0, else "no detectable
    difference" (also for fewer than 2 pairs, where there is no interval)."""
    if diff.n < 2 or not (math.isfinite(diff.low) and math.isfinite(diff.high)):
        return "no detectable difference"
    if diff.low > 0:
        return "better"
    if diff.high < 0:
        return "worse"
    return "no detectable difference"


def direction_agreement(diff: Interval, paper_sign: int | None) -> str:
    """Our verdict against the paper's direction (+1 better, -1 worse, 0 no change, None: the
    paper gives none): "agrees" / "disagrees" / "no detectable difference" / "" (nothing to compare)."""
    if paper_sign is None:
        return ""
    ours = verdict(diff)
    if ours == "no detectable difference":
        return "agrees" if paper_sign == 0 else ours
    return "agrees" if (ours == "better") == (paper_sign > 0) and paper_sign != 0 else "disagrees"
