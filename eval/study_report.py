"""Tables (Markdown + CSV) and plots of a loss study from its per-run records."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import study_plots as plots
from study_grids import Cell

from minidet.diagnostics import WindowStats

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


def _stats(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def aggregate(study: str, cells: list[Cell], records: dict[tuple[str, int], dict]) -> list[dict]:
    """One row per cell: n runs, mean / sample std of every metric, mean train minutes, extras."""
    rows = []
    for cell in cells:
        runs = [r for (name, _), r in sorted(records.items()) if name == cell.name]
        row = {"cell": cell.name, "group": cell.group, "ref": cell.ref, "n": len(runs)}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = _stats([r["metrics"][m] for r in runs])
        ref = {seed: r for (name, seed), r in records.items() if name == cell.ref}
        row["dAP_mean"], row["dAP_std"] = _stats([r["metrics"]["AP"] - ref[seed]["metrics"]["AP"]
                                                  for (name, seed), r in sorted(records.items())
                                                  if name == cell.name and seed in ref])
        row["minutes_mean"], _ = _stats([r["minutes"] for r in runs])
        for _, key, _ in EXTRAS.get(study, []):
            row[f"{key}_mean"], row[f"{key}_std"] = _stats([r["late"].get(key) for r in runs])
        rows.append(row)
    return rows


def _pm(mean: float, std: float, digits: int = 3, signed: bool = False) -> str:
    if mean != mean:
        return "n/a"
    return f"{mean:{'+' if signed else ''}.{digits}f}" + (f" ± {std:.{digits}f}" if std == std else "")


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def markdown(study: str, title: str, rows: list[dict], header_lines: list[str]) -> str:
    extras = EXTRAS.get(study, [])
    cols = ["group", "cell", "runs", *METRICS, "ΔAP vs ref", *(h for h, _, _ in extras), "train min"]
    lines = [f"# {title}", "", *header_lines, "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        delta = "ref" if r["cell"] == r["ref"] else _pm(r["dAP_mean"], r["dAP_std"], signed=True)
        cells = [r["group"], r["cell"], str(r["n"]), *(_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS), delta,
                 *(_pm(r[f"{k}_mean"], r[f"{k}_std"], 2) for _, k, _ in extras),
                 "n/a" if r["minutes_mean"] != r["minutes_mean"] else f"{r['minutes_mean']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    refs = sorted({r["ref"] for r in rows if r["ref"]})
    lines += ["", "AP = COCO AP@[.5:.95]; AP90 = AP at IoU 0.90; oLRP: lower is better (1 = nothing found); "
              "mean ± sample std over seeds; train min = training wall clock per run. "
              "ΔAP vs ref: AP minus the AP of the reference cell trained with the same seed (same initialisation "
              f"and data order), mean ± std over seeds; references: {', '.join(refs) or 'none'}."]
    lines += [f"{h}: {why}." for h, _, why in extras]
    return "\n".join(lines) + "\n"


def ap_plot(title: str, rows: list[dict]):
    return plots.bar_chart([r["cell"] for r in rows], [r["AP_mean"] for r in rows], [r["AP_std"] for r in rows],
                           title, "COCO AP@[.5:.95] (mean, bar = +-1 std over seeds)", [r["group"] for r in rows])


def _mean_series(runs: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Per-iteration mean over seeds of one logged series (iterations all seeds have)."""
    by_it: dict[int, list[float]] = {}
    for r in runs:
        s = r["series"]
        for it, v in zip(s["iteration"], s.get(key, []), strict=False):
            if v is not None and math.isfinite(v):
                by_it.setdefault(it, []).append(v)
    its = sorted(i for i, v in by_it.items() if len(v) == len(runs))
    return its, [statistics.fmean(by_it[i]) for i in its]


def _smooth(xs: list[float], ys: list[float], k: int) -> tuple[list[float], list[float]]:
    if k <= 1 or len(ys) < k:
        return xs, ys
    out = [statistics.fmean(ys[i - k + 1 : i + 1]) for i in range(k - 1, len(ys))]
    return xs[k - 1 :], out


def _windows(runs: list[dict], key: str, size: int) -> tuple[list[float], list[float], list[float]]:
    """Per-window (``size`` iterations) mean and sample std of a series (``WindowStats``), averaged
    over seeds."""
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


def balance_plots(records: dict[tuple[str, int], dict], cells: list[Cell], window: int):
    """(gradient-ratio chart, ALWA per-window statistics grid)."""
    def runs_of(name: str) -> list[dict]:
        return [r for (n, _), r in sorted(records.items()) if n == name and "series" in r]

    grad = [c for c in cells if c.group == "gradient ratio"]
    lines = []
    for c in grad:
        xs, ys = _mean_series(runs_of(c.name), "grad_ratio")
        lines.append((c.name, *_smooth(xs, ys, 10)))
    ratio = plots.line_chart(lines, "negative / positive gradient magnitude of the classification logits "
                             "(mean over seeds, moving average of 10 iterations)", "iteration",
                             "sum|dL/ds| negatives / positives", log_y=True, size=(900, 450))
    fixed = next((c for c in cells if c.name == "focal"), None)
    alwa = [c for c in cells if c.group == "ALWA windows"]
    compare = ([fixed] if fixed else []) + alwa
    label = {c.name: ("focal, fixed 1:1" if c is fixed else c.name) for c in compare}
    panels = []
    for key, what in (("cls_weighted", "weighted cls loss"), ("reg_weighted", "weighted reg loss")):
        stats = {c.name: _windows(runs_of(c.name), key, window) for c in compare}
        panels.append(plots.line_chart([(label[n], x, m) for n, (x, m, _) in stats.items()],
                                       f"{what}: mean per window of {window} iterations", "iteration", "mean"))
        panels.append(plots.line_chart([(label[n], x, s) for n, (x, _, s) in stats.items()],
                                       f"{what}: std per window of {window} iterations", "iteration", "std"))
    weights = [(label[c.name], *_mean_series(runs_of(c.name), "weight_cls")) for c in compare]
    panels.insert(2, plots.line_chart(weights, "classification weight lambda_cls", "iteration", "lambda_cls"))
    totals = [(label[c.name], *_smooth(*_mean_series(runs_of(c.name), "loss"), 10)) for c in compare]
    panels.append(plots.line_chart(totals, "total weighted loss (moving average of 10)", "iteration", "loss"))
    return ratio, plots.grid(panels, 3)


def write_report(study: str, title: str, cells: list[Cell], records: dict[tuple[str, int], dict], out_dir: Path,
                 budget: str, header_lines: list[str], window: int) -> list[Path]:
    """Write <budget>.md, <budget>.csv and the PNG plots into out_dir; -> written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = aggregate(study, cells, records)
    written = [out_dir / f"{budget}.md", out_dir / f"{budget}.csv", out_dir / f"{budget}_ap.png"]
    plot_names = [f"{budget}_ap.png"]
    if study == "balance":
        plot_names += [f"{budget}_grad_ratio.png", f"{budget}_alwa_windows.png"]
    images = "\n".join(f"![{n}]({n})" for n in plot_names)
    written[0].write_text(markdown(study, title, rows, header_lines) + "\n" + images + "\n")
    write_csv(rows, written[1])
    plots.save(ap_plot(title, rows), written[2])
    if study == "balance":
        ratio, windows = balance_plots(records, cells, window)
        written += [plots.save(ratio, out_dir / plot_names[1]), plots.save(windows, out_dir / plot_names[2])]
    return written
