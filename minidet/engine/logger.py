"""Run logs: metrics.jsonl (one line per logging step / evaluation), metrics.csv, optional
TensorBoard, and PNG plots at the end (when matplotlib is installed)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path


class RunLogger:
    """Writes records to <run>/metrics.jsonl as they come; ``close()`` writes metrics.csv and plots."""

    def __init__(self, run_dir: Path, tensorboard: bool = False) -> None:
        self.run_dir = run_dir
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
        plot_run(records, self.run_dir)


def plot_run(records: list[dict], out: Path) -> list[Path]:
    """losses.png, weights.png and ap.png from the records; nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    written = []
    panels = [("losses.png", "loss components", train, lambda k: k in ("loss", "cls", "reg", "coord", "obj", "noobj", "class")),
              ("weights.png", "loss weights", train, lambda k: k.startswith("weight_")),
              ("ap.png", "validation AP", evals, lambda k: k in ("AP", "AP50", "AP75"))]
    for name, title, rows, wanted in panels:
        keys = sorted({k for r in rows for k in r if wanted(k)})
        if not rows or not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in keys:
            pts = [(r["iteration"], r[k]) for r in rows if isinstance(r.get(k), int | float) and math.isfinite(r[k])]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=k)
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
