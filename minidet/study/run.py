"""One cell x seed of a study: ``python -m minidet.train`` then ``python -m minidet.eval`` (COCO +
oLRP on the final weights, the EMA where the run keeps one) in this process, and a compact
``record.json`` of the outcome. Both run with ``--no-plots``: the study draws its own charts from
the records. A run folder with ``last.pt`` and no ``summary.json`` continues
with ``--resume``; one with ``summary.json`` is only evaluated again.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import torch
import yaml

from ..run_records import last_per_key
from .precision import precision_text

__all__ = ["run_cell", "summarise", "hardware"]

SERIES_KEYS = ("cls", "reg", "cls_weighted", "reg_weighted", "weight_cls", "weight_reg", "loss", "grad_ratio",
               "score_iou_pearson", "score_iou_spearman", "num_pos")


def _mean(values: list[float]) -> float:
    values = [v for v in values if v == v and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def hardware(device: str) -> str:
    """The machine in words: CPU model and cores (or the GPU), torch version, threads per run."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    where = f"{cpu}, {cores} cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name(0)} ({where})"
    return f"{where}; torch {torch.__version__}, {torch.get_num_threads()} threads per run"


def summarise(run_dir: Path, flags: list[str], device: str = "cpu") -> dict:
    """record.json content from the run folder's summary, evaluation and training log."""
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    coco, lrp, per_iou = metrics["coco"], metrics["lrp"], metrics["AP_per_IoU"]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = last_per_key([r for r in logged if r["kind"] == "train"], "iteration")
    evals = last_per_key([r for r in logged if r["kind"] == "eval"], "iteration")
    tail = train[-max(1, len(train) // 4):]  # the last quarter of training
    series: dict[str, list] = {"iteration": [r["iteration"] for r in train]}
    for k in SERIES_KEYS:
        if any(k in r for r in train):
            series[k] = [round(r[k], 6) if k in r and math.isfinite(r[k]) else None for r in train]
    amp = yaml.safe_load((run_dir / "config.yaml").read_text()).get("amp")  # --amp auto resolved on this machine
    return {
        "flags": flags,
        "hardware": hardware(device),
        "precision": precision_text(amp),
        "minutes": summary["minutes"],
        "iterations": summary["iterations"],
        "metrics": {"AP": coco["AP"], "AP50": coco["AP50"], "AP75": coco["AP75"], "AP90": per_iou["0.90"],
                    **{k: lrp[k] for k in ("oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN")}},
        "late": {k: _mean([r.get(k, float("nan")) for r in tail])
                 for k in ("score_iou_pearson", "score_iou_spearman", "grad_ratio", "weight_cls", "weight_reg")},
        "curve": {"iteration": [r["iteration"] for r in evals], "AP": [r["AP"] for r in evals],
                  "AP50": [r["AP50"] for r in evals]},
        "series": series,
    }


def run_cell(run_dir: Path, flags: list[str]) -> int:
    """Train (or resume), evaluate and write run_dir/record.json; -> exit status (0: done)."""
    from minidet import eval as minidet_eval
    from minidet import train as minidet_train

    run_dir.mkdir(parents=True, exist_ok=True)
    summary = run_dir / "summary.json"
    try:
        json.loads(summary.read_text())
    except (OSError, ValueError):  # none yet, or torn by a kill during its write: training finishes it
        summary.unlink(missing_ok=True)
    if not summary.is_file():
        resume = ["--resume", str(run_dir / "last.pt")] if (run_dir / "last.pt").is_file() else []
        rc = minidet_train.main([*flags, "--no-plots", "--out", str(run_dir), *resume])
        if rc:
            return rc
    device = flags[flags.index("--device") + 1] if "--device" in flags else "cpu"
    rc = minidet_eval.main(["--weights", str(run_dir / "last.pt"), "--metrics", "coco", "lrp", "--device", device,
                            "--no-plots", "--out", str(run_dir / "eval")])
    if rc:
        return rc
    record = summarise(run_dir, flags, device)
    tmp = run_dir / "record.json.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(run_dir / "record.json")
    return 0
