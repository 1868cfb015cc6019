"""A study's tables (Markdown + CSV) and charts from its run records.

Every row: mean ± sample std over seeds of each metric, and the paired difference of its AP to the
reference cell (same seed = same initialisation and data order) with its 95 % t-interval and the
verdict ("better" / "worse" only when the interval excludes 0). Rows with a paper direction say
whether we agree. Charts: AP bars with 95 % interval whiskers, AP-vs-iteration curves per cell, and
for ``balance`` the gradient-ratio and ALWA window plots.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from .. import plots
from ..diagnostics import WindowStats
from .grids import Cell
from .stats import Interval, direction_agreement, mean_interval, verdict

__all__ = ["aggregate", "convergence", "markdown", "write_report", "CONVERGED_RATIO"]

CONVERGED_RATIO = 0.95
METRICS = ("AP", "AP50", "AP75", "AP90", "oLRP")
# study -> extra columns: (header, key in record["late"], explanation)
EXTRAS = {
    "alwa": [("final lambda_cls", "weight_cls", "ALWA's classification weight at the end of training")],
    "ranking": [("rho (Spearman)", "score_iou_spearman", "rank correlation of the positives' class score and IoU, "
                 "last quarter of training"),
                ("grad ratio", "grad_ratio", "negatives' / positives' classification-gradient magnitude, last quarter"),
                ("final w_reg", "weight_reg", "localisation weight at the end (SB for aLRP + SB)")],
    "families": [("rho (Spearman)", "score_iou_spearman", "rank correlation of the positives' class score and IoU, "
                  "last quarter of training")],
    "balance": [("grad ratio", "grad_ratio", "negatives' / positives' classification-gradient magnitude, last quarter"),
                ("final lambda_cls", "weight_cls", "classification weight at the end of training")],
}


def _runs(records: dict[tuple[str, int], dict], name: str) -> list[tuple[int, dict]]:
    return sorted((seed, r) for (cell, seed), r in records.items() if cell == name)


def aggregate(study: str, cells: list[Cell], records: dict[tuple[str, int], dict]) -> list[dict]:
    """One row per cell: seeds, mean / std of every metric, the paired ΔAP interval to its
    reference, the verdict, the paper's direction and our agreement with it."""
    rows = []
    for cell in cells:
        runs = _runs(records, cell.name)
        row: dict = {"cell": cell.name, "group": cell.group, "ref": cell.ref, "n": len(runs),
                     "seeds": " ".join(str(s) for s, _ in runs)}
        for m in METRICS:
            iv = mean_interval([r["metrics"][m] for _, r in runs])
            row[f"{m}_mean"], row[f"{m}_std"] = iv.mean, iv.std
        row["AP_ci_low"], row["AP_ci_high"] = (lambda iv: (iv.low, iv.high))(mean_interval([r["metrics"]["AP"]
                                                                                         for _, r in runs]))
        diff = _paired_diff(runs, records, cell.ref)
        is_ref = cell.name == cell.ref
        row.update(pairs=diff.n, dAP_mean=diff.mean, dAP_std=diff.std, dAP_ci_low=diff.low, dAP_ci_high=diff.high,
                   verdict="ref" if is_ref else _pending(diff) or verdict(diff))
        row.update(_paper_columns(cell, runs, records, diff, is_ref))
        row["minutes_mean"] = mean_interval([r["minutes"] for _, r in runs]).mean
        for _, key, _ in EXTRAS.get(study, []):
            iv = mean_interval([r["late"].get(key) for _, r in runs])
            row[f"{key}_mean"], row[f"{key}_std"] = iv.mean, iv.std
        rows.append(row)
    return rows


def _paired_diff(runs: list[tuple[int, dict]], records: dict, other: str) -> Interval:
    """AP of ``runs`` minus AP of cell ``other`` with the same seed: the paired interval."""
    ref = dict(_runs(records, other))
    return mean_interval([r["metrics"]["AP"] - ref[s]["metrics"]["AP"] for s, r in runs if s in ref])


def _pending(diff: Interval) -> str | None:
    return {0: "not run yet", 1: "1 pair: no interval yet"}.get(diff.n)  # a partial study


def _paper_columns(cell: Cell, runs: list[tuple[int, dict]], records: dict, diff: Interval, is_ref: bool) -> dict:
    """paper, vs_paper and the paired ΔAP to the cell the paper compares the row with
    (``PaperRow.versus``; the row's own ΔAP when that is its reference)."""
    versus = cell.paper.versus if cell.paper and cell.paper.versus else cell.ref
    if versus != cell.ref:
        diff = _paired_diff(runs, records, versus)
    cols = {"paper": cell.paper.text if cell.paper else "", "paper_versus": versus if cell.paper else "",
            "paper_dAP_mean": diff.mean, "paper_ci_low": diff.low, "paper_ci_high": diff.high}
    agreement = "" if is_ref or not cell.paper else _pending(diff) or direction_agreement(diff, cell.paper.sign)
    return {**cols, "vs_paper": agreement}


def _vs_paper_cell(row: dict) -> str:
    """The "vs paper" entry; with the pair it was judged on when that is not the row's reference."""
    if not row["vs_paper"] or row["paper_versus"] in ("", row["ref"]):
        return row["vs_paper"]
    return (f"{row['vs_paper']} (vs {row['paper_versus']}: {_pm(row['paper_dAP_mean'], float('nan'), signed=True)} "
            f"{_ci(row['paper_ci_low'], row['paper_ci_high'])})")


def convergence(cells: list[Cell], records: dict[tuple[str, int], dict]) -> dict | None:
    """The check of the study's reference: mean AP at the budget and at 2x the schedule over the
    seeds both have, their ratio and whether it reaches CONVERGED_RATIO."""
    check = next((c for c in cells if c.schedule == 2), None)
    if check is None:
        return None
    twice = dict(_runs(records, check.name))
    once = {s: r for s, r in _runs(records, check.ref) if s in twice}
    seeds = sorted(once)
    if not seeds:
        return {"reference": check.ref, "seeds": [], "ratio": float("nan"), "converged": None}
    at1 = mean_interval([once[s]["metrics"]["AP"] for s in seeds])
    at2 = mean_interval([twice[s]["metrics"]["AP"] for s in seeds])
    ratio = at1.mean / at2.mean if at2.mean > 0 else float("nan")
    return {"reference": check.ref, "seeds": seeds, "at_budget": at1, "at_2x": at2, "ratio": ratio,
            "converged": bool(ratio >= CONVERGED_RATIO)}


def convergence_line(check: dict | None) -> str:
    if check is None:
        return "Convergence check: none."
    if not check["seeds"]:
        return f"Convergence check (`{check['reference']}` at 1x and 2x the schedule): not run yet."
    a, b = check["at_budget"], check["at_2x"]
    state = "converged" if check["converged"] else "**NOT converged**"
    return (f"Convergence check (`{check['reference']}`, seeds {', '.join(map(str, check['seeds']))}): AP "
            f"{_pm(a.mean, a.std)} at this budget, {_pm(b.mean, b.std)} at 2x the schedule; ratio "
            f"{check['ratio']:.3f} (>= {CONVERGED_RATIO} means converged): {state}.")


def _pm(mean: float, std: float, digits: int = 3, signed: bool = False) -> str:
    if mean != mean:
        return "n/a"
    return f"{mean:{'+' if signed else ''}.{digits}f}" + (f" ± {std:.{digits}f}" if std == std else "")


def _ci(low: float, high: float) -> str:
    return "n/a" if low != low else f"[{low:+.3f}, {high:+.3f}]"


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def markdown(study: str, title: str, rows: list[dict], header_lines: list[str]) -> str:
    extras = EXTRAS.get(study, [])
    cols = ["group", "cell", "seeds", *METRICS, "ΔAP vs ref (paired)", "95% interval", "verdict", "paper",
            "vs paper", *(h for h, _, _ in extras), "train min"]
    lines = [f"# {title}", "", *header_lines, "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        is_ref = r["verdict"] == "ref"
        cells = [r["group"], r["cell"], str(r["n"]), *(_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS),
                 "ref" if is_ref else _pm(r["dAP_mean"], r["dAP_std"], signed=True),
                 "" if is_ref else _ci(r["dAP_ci_low"], r["dAP_ci_high"]), r["verdict"], r["paper"], _vs_paper_cell(r),
                 *(_pm(r[f"{k}_mean"], r[f"{k}_std"], 2) for _, k, _ in extras),
                 "n/a" if r["minutes_mean"] != r["minutes_mean"] else f"{r['minutes_mean']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    refs = sorted({r["ref"] for r in rows if r["ref"]})
    lines += ["", "seeds = runs in the row; AP = COCO AP@[.5:.95] on the validation split of the data; AP90 = AP at "
              "IoU 0.90; oLRP: lower is better; metrics are mean ± sample std over seeds. ΔAP vs ref: AP minus the "
              "AP of the reference cell with the same seed (same initialisation and data order), mean ± std over "
              "the pairs, with the 95% Student-t interval of the mean difference; verdict 'better' / 'worse' only "
              "when that interval excludes 0. paper: the direction the paper reports for this row; vs paper: "
              "agrees / disagrees / no detectable difference, judged on the paired ΔAP to the cell the paper "
              "compares the row with (given in brackets with its interval when that is not the reference). "
              f"References: {', '.join(refs) or 'none'}. "
              "train min = training wall clock per run."]
    lines += [f"{h}: {why}." for h, _, why in extras]
    return "\n".join(lines) + "\n"


def ap_chart(title: str, rows: list[dict], path: Path) -> Path:
    """AP bars (mean over seeds) with whiskers = the 95% t-interval of the mean."""
    half = [(r["AP_ci_high"] - r["AP_ci_low"]) / 2 if r["AP_ci_low"] == r["AP_ci_low"] else float("nan")
            for r in rows]
    fig = plots.new_figure(900, 110 + 24 * len(rows))
    plots.bar_chart(fig.add_subplot(), [f"{r['cell']} (n={r['n']})" for r in rows], [r["AP_mean"] for r in rows],
                    half, title, "COCO AP@[.5:.95]: mean over seeds, whiskers = 95% t-interval of the mean",
                    [r["group"] for r in rows])
    return plots.save_figure(fig, path)


def _mean_series(runs: list[dict], block: str, key: str) -> tuple[list[float], list[float]]:
    """Per-iteration mean over runs of one logged series (iterations every run has)."""
    by_it: dict[int, list[float]] = {}
    for r in runs:
        s = r.get(block) or {}
        for it, v in zip(s.get("iteration", []), s.get(key, []), strict=False):
            if v is not None and math.isfinite(v):
                by_it.setdefault(it, []).append(v)
    its = sorted(i for i, v in by_it.items() if len(v) == len(runs))
    return its, [statistics.fmean(by_it[i]) for i in its]


def curves_chart(title: str, cells: list[Cell], records: dict, path: Path) -> Path:
    """Validation AP against iteration, one line per cell (mean over its seeds)."""
    series = []
    for c in cells:
        runs = [r for _, r in _runs(records, c.name)]
        if runs:
            series.append((f"{c.name} (n={len(runs)})", *_mean_series(runs, "curve", "AP")))
    fig = plots.new_figure(900, 560)
    plots.line_chart(fig.add_subplot(), series, f"{title}: validation AP during training (mean over seeds)",
                     "iteration", "COCO AP@[.5:.95]")
    return plots.save_figure(fig, path)


def _smooth(xs: list[float], ys: list[float], k: int) -> tuple[list[float], list[float]]:
    if k <= 1 or len(ys) < k:
        return xs, ys
    return xs[k - 1 :], [statistics.fmean(ys[i - k + 1 : i + 1]) for i in range(k - 1, len(ys))]


def _windows(runs: list[dict], key: str, size: int) -> tuple[list[float], list[float], list[float]]:
    """Per-window (``size`` iterations) mean and sample std of a series (``WindowStats``), averaged
    over runs."""
    per_run = []
    for r in runs:
        ws = WindowStats(size)
        closed = (ws.update({key: v}) for v in r["series"].get(key, []) if v is not None)
        per_run.append([stats[key] for stats in closed if stats is not None])
    n = min(len(w) for w in per_run) if per_run else 0
    centres = [(j + 0.5) * size for j in range(n)]
    means = [statistics.fmean(w[j][0] for w in per_run) for j in range(n)]
    stds = [statistics.fmean(w[j][1] for w in per_run) for j in range(n)]
    return centres, means, stds


def balance_charts(records: dict, cells: list[Cell], window: int, ratio_path: Path, windows_path: Path) -> list[Path]:
    """The gradient-ratio chart and the ALWA per-window statistics grid."""
    def runs_of(name: str) -> list[dict]:
        return [r for _, r in _runs(records, name) if "series" in r]

    lines = [(c.name, *_smooth(*_mean_series(runs_of(c.name), "series", "grad_ratio"), 10))
             for c in cells if c.group == "gradient ratio"]
    fig = plots.new_figure(900, 450)
    plots.line_chart(fig.add_subplot(), lines, "negative / positive gradient magnitude of the classification logits "
                     "(mean over seeds, moving average of 10 iterations)", "iteration",
                     "sum|dL/ds| negatives / positives", log_y=True)
    written = [plots.save_figure(fig, ratio_path)]
    fixed = next((c for c in cells if c.name == "focal"), None)
    compare = ([fixed] if fixed else []) + [c for c in cells if c.group == "ALWA windows"]
    label = {c.name: ("focal, fixed 1:1" if c is fixed else c.name) for c in compare}
    fig = plots.new_figure(1920, 800)
    axes = fig.subplots(2, 3).flatten()
    panel = 0
    for key, what in (("cls_weighted", "weighted cls loss"), ("reg_weighted", "weighted reg loss")):
        stats = {c.name: _windows(runs_of(c.name), key, window) for c in compare}
        plots.line_chart(axes[panel], [(label[n], x, m) for n, (x, m, _) in stats.items()],
                         f"{what}: mean per window of {window} iterations", "iteration", "mean")
        plots.line_chart(axes[panel + 1], [(label[n], x, s) for n, (x, _, s) in stats.items()],
                         f"{what}: std per window of {window} iterations", "iteration", "std")
        panel += 3
    plots.line_chart(axes[2], [(label[c.name], *_mean_series(runs_of(c.name), "series", "weight_cls"))
                               for c in compare], "classification weight lambda_cls", "iteration", "lambda_cls")
    plots.line_chart(axes[5], [(label[c.name], *_smooth(*_mean_series(runs_of(c.name), "series", "loss"), 10))
                               for c in compare], "total weighted loss (moving average of 10)", "iteration", "loss")
    written.append(plots.save_figure(fig, windows_path))
    return written


def write_report(study: str, title: str, cells: list[Cell], records: dict[tuple[str, int], dict], out_dir: Path,
                 tag: str, header_lines: list[str], window: int) -> list[Path]:
    """<tag>.md, <tag>.csv, <tag>_ap.png, <tag>_curves.png (and the balance charts) in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = aggregate(study, cells, records)
    check = convergence(cells, records)
    names = [f"{tag}_ap.png", f"{tag}_curves.png"]
    if study == "balance":
        names += [f"{tag}_grad_ratio.png", f"{tag}_alwa_windows.png"]
    md = markdown(study, title, rows, [convergence_line(check), "", *header_lines])
    md += "\n" + "\n".join(f"![{n}]({n})" for n in names) + "\n"
    (out_dir / f"{tag}.md").write_text(md)
    write_csv(rows, out_dir / f"{tag}.csv")
    written = [out_dir / f"{tag}.md", out_dir / f"{tag}.csv", ap_chart(title, rows, out_dir / names[0]),
               curves_chart(title, cells, records, out_dir / names[1])]
    if study == "balance":
        written += balance_charts(records, cells, window, out_dir / names[2], out_dir / names[3])
    return written
