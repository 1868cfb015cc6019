"""eval/loss_study.py end to end at the quick budget: the balance study (5 cells x 2 seeds) writes
its table, CSV and plots, a second invocation skips the finished runs, and the measured gradient
ratio of aLRP Loss is 1 (its Theorem 2: positives and negatives get equal gradient mass)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "eval" / "loss_study.py"
sys.path.insert(0, str(ROOT / "eval"))

from loss_study import option_groups, run_key  # noqa: E402
from study_grids import BUDGETS, STUDIES  # noqa: E402


def _study(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(STUDY), "balance", "--budget", "quick", "--jobs", "2",
           "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_quick_balance_study_end_to_end(tmp_path):
    first = _study(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = tmp_path / "results" / "balance"
    cells = STUDIES["balance"](BUDGETS["quick"])

    table = (out / "quick.md").read_text()
    for cell in cells:
        row = next(line for line in table.splitlines() if line.startswith(f"| {cell.group} | {cell.name} | "))
        assert row.split(" | ")[2] == "2"  # both seeds
    assert "Hardware:" in table and "python eval/loss_study.py balance --budget quick" in table

    rows = list(csv.DictReader((out / "quick.csv").open()))
    assert [r["cell"] for r in rows] == [c.name for c in cells]
    for r in rows:
        assert 0.0 <= float(r["AP_mean"]) <= 1.0 and 0.0 <= float(r["oLRP_mean"]) <= 1.0
        assert float(r["minutes_mean"]) > 0
    alrp = next(r for r in rows if r["cell"].startswith("aLRP"))
    assert float(alrp["grad_ratio_mean"]) == pytest.approx(1.0, abs=1e-3)
    focal = next(r for r in rows if r["cell"] == "focal")
    assert float(focal["grad_ratio_mean"]) != pytest.approx(1.0, abs=1e-3)

    for name in ("quick_ap.png", "quick_grad_ratio.png", "quick_alwa_windows.png"):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 200 and img.shape[1] > 600
        assert (img < 250).mean() > 0.01  # something was drawn

    runs = [json.loads(line) for line in (out / "quick_runs.jsonl").read_text().splitlines()]
    assert len(runs) == 10 and all(len(r["series"]["iteration"]) == 12 for r in runs)

    # ΔAP vs the reference cell ("focal"), seed by seed, recomputed here from the raw records
    ap = {(r["cell"], r["seed"]): r["metrics"]["AP"] for r in runs}
    for cell in cells:
        row = next(line for line in table.splitlines() if line.startswith(f"| {cell.group} | {cell.name} | "))
        delta = row.split(" | ")[8]
        if cell.name == "focal":
            assert delta == "ref"
        else:
            diffs = [ap[(cell.name, s)] - ap[("focal", s)] for s in (0, 1)]
            assert float(delta.split(" ± ")[0]) == pytest.approx(sum(diffs) / 2, abs=6e-4)

    # resumable: nothing left to train; a dropped record comes back from the run cache untrained
    lines = (out / "quick_runs.jsonl").read_text().splitlines()
    (out / "quick_runs.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    again = _study(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 runs to do (9 already in" in again.stdout and " start " not in again.stdout
    assert len((out / "quick_runs.jsonl").read_text().splitlines()) == 10


def test_run_keys_ignore_option_order_and_budgets_share_one_schedule():
    assert option_groups(["--a", "1", "2", "--b", "--c", "x"]) == ["--a 1 2", "--b", "--c x"]
    assert run_key(["--model", "ssd", "--seed", "1"]) == run_key(["--seed", "1", "--model", "ssd"])
    assert run_key(["--model", "ssd", "--seed", "1"]) != run_key(["--model", "ssd", "--seed", "2"])
    for budget in BUDGETS.values():
        for make in STUDIES.values():
            for cell in make(budget):  # cells never change the schedule, only losses / weights / heads
                assert not {"--epochs", "--lr", "--img-size", "--batch-size", "--shapes-images"} & set(cell.flags)
