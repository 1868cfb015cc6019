"""Run logs: metrics.jsonl (one line per logging step / evaluation), metrics.csv (the same
records as a table), optional TensorBoard, and at the end results.csv (one row per evaluation:
the epoch's mean train losses, lr, validation AP / AP50 / AP75, like Ultralytics' results.csv) and
results.png (``minidet.plots.plot_results``; not with ``plots=False``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..run_records import finite, loss_keys, train_and_evals


class RunLogger:
    """Writes records to <run>/metrics.jsonl as they come; ``close()`` writes metrics.csv,
    results.csv and results.png."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, *, plots: bool = True) -> None:
        self.run_dir = run_dir
        self.plots = plots  # results.png at close
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("warning: --tensorboard needs the tensorboard package (pip install tensorboard); skipping it")

    def log(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record.get("iteration", 0)
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("iteration", "epoch"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        records = self.records()
        keys = sorted({k for r in records for k in r})
        with (self.run_dir / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(records)
        if self.tb is not None:
            self.tb.close()
        try:  # called while an error or a Ctrl-C may be on its way out: a chart must not replace it
            write_results_csv(records, self.run_dir / "results.csv")
            if self.plots:
                from ..plots import plot_results  # matplotlib is imported only when the run ends

                plot_results(records, self.run_dir / "results.png")
        except Exception as err:  # noqa: BLE001
            print(f"warning: could not write results.csv / results.png in {self.run_dir}: {type(err).__name__}: {err}")


def results_rows(records: list[dict]) -> list[dict]:
    """One row per evaluation, in epoch order: ``epoch`` (epochs done), ``iteration``,
    ``train/<loss>`` (mean of that epoch's logged values; empty without training records),
    ``lr`` (the last logged in that epoch), ``val/AP``, ``val/AP50``, ``val/AP75`` and per class
``val/AP/<class>``, ``val/AP50/<class>``. A resumed
    run's repeated records count once (the last)."""
    train, evals = train_and_evals(records)
    losses = loss_keys(train)
    rows = []
    for e in evals:
        epoch = [r for r in train if r.get("epoch") == e["epoch"] - 1]  # train records count from 0
        row = {"epoch": e["epoch"], "iteration": e.get("iteration", "")}
        for k in losses:
            values = [r[k] for r in epoch if finite(r.get(k))]
            row[f"train/{k}"] = sum(values) / len(values) if values else ""
        row["lr"] = epoch[-1].get("lr", "") if epoch else ""
        for k in ("AP", "AP50", "AP75"):
            row[f"val/{k}"] = e.get(k, "")
        for k, v in e.items():  # per class: AP/<class>, AP50/<class>
            if k.startswith(("AP/", "AP50/")):
                row[f"val/{k}"] = v
        rows.append(row)
    return rows


def write_results_csv(records: list[dict], path: Path) -> Path:
    """results.csv from ``results_rows`` (a header only when nothing was evaluated)."""
    rows = results_rows(records)
    losses = sorted({k for r in rows for k in r if k.startswith("train/")}, key=lambda k: (k != "train/loss", k))
    per_class = list(dict.fromkeys(k for r in rows for k in r if k.startswith(("val/AP/", "val/AP50/"))))
    fields = ["epoch", "iteration", *losses, "lr", "val/AP", "val/AP50", "val/AP75", *per_class]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
