"""python -m minidet.study end to end at the quick budget: every study writes its tables and
charts, each ΔAP interval is the paired t-interval of the raw records, aLRP's gradient ratio is 1,
a rebuild trains nothing, and a study killed (SIGKILL to its whole process group) at a random
instant and run again ends with the same records as the uninterrupted one."""

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minidet.study.budgets import BUILTIN
from minidet.study.grids import STUDIES
from minidet.study.records import run_key

T_975_DF1 = 12.706205  # t_{0.975} with 1 degree of freedom (2 seeds), from the printed table
COMPARED = ("flags", "iterations", "metrics", "curve", "late")


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "minidet.study", *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _records(results: Path, study: str) -> dict:
    rows = [json.loads(line) for line in (results / study / "quick_runs.jsonl").read_text().splitlines()]
    return {(r["cell"], r["seed"]): r for r in rows}


@pytest.fixture(scope="module")
def quick_all(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    t0 = time.perf_counter()
    done = subprocess.run(_cmd("all", "--budget", "quick", "--jobs", "2", "--work", str(root / "work"),
                               "--results", str(root / "results")), capture_output=True, text=True, timeout=900,
                          env=_env())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return root, done.stdout, time.perf_counter() - t0


def test_every_study_writes_tables_with_paired_intervals(quick_all):
    root, stdout, _ = quick_all
    budget = BUILTIN["quick"]
    assert "runs to train" in stdout and "min left]" in stdout  # progress with the time left
    for name, study in STUDIES.items():
        out = root / "results" / name
        cells = study.cells(budget.alwa_intervals)
        table = (out / "quick.md").read_text()
        assert "Convergence check (`" + study.reference + "`, seeds 0, 1)" in table
        rows = list(csv.DictReader((out / "quick.csv").open()))
        assert [r["cell"] for r in rows] == [c.name for c in cells]
        assert all(r["n"] == "2" for r in rows)  # both seeds, the 2x check included
        records = _records(root / "results", name)
        for cell, row in zip(cells, rows, strict=True):
            if cell.name == cell.ref:
                assert row["verdict"] == "ref"
                continue
            diffs = [records[(cell.name, s)]["metrics"]["AP"] - records[(cell.ref, s)]["metrics"]["AP"] for s in (0, 1)]
            mean, sd = sum(diffs) / 2, abs(diffs[0] - diffs[1]) / math.sqrt(2)
            half = T_975_DF1 * sd / math.sqrt(2)
            assert float(row["dAP_mean"]) == pytest.approx(mean, abs=1e-5)
            assert float(row["dAP_ci_low"]) == pytest.approx(mean - half, abs=1e-5)
            assert float(row["dAP_ci_high"]) == pytest.approx(mean + half, abs=1e-5)
            expected = "better" if mean - half > 0 else "worse" if mean + half < 0 else "no detectable difference"
            assert row["verdict"] == expected
            if cell.paper is not None and cell.paper.sign is not None:
                assert row["vs_paper"] in ("agrees", "disagrees", "no detectable difference")
        for png in ("quick_ap.png", "quick_curves.png"):
            assert (out / png).stat().st_size > 10_000
    balance = {r["cell"]: r for r in csv.DictReader((root / "results" / "balance" / "quick.csv").open())}
    assert float(balance["aLRP (GIoU) + SB"]["grad_ratio_mean"]) == pytest.approx(1.0, abs=1e-3)  # aLRP Thm. 2
    assert float(balance["focal"]["grad_ratio_mean"]) != pytest.approx(1.0, abs=1e-3)
    assert (root / "results" / "balance" / "quick_alwa_windows.png").is_file()


def test_rebuild_from_records_trains_nothing(quick_all):
    root, _, _ = quick_all
    before = (root / "results" / "ranking" / "quick.md").read_text()
    again = subprocess.run(_cmd("ranking", "--budget", "quick", "--work", str(root / "work"), "--results",
                                str(root / "results")), capture_output=True, text=True, timeout=300, env=_env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert "runs to train" not in again.stdout
    assert (root / "results" / "ranking" / "quick.md").read_text() == before
    # each record says which precision --amp auto chose on the machine that trained it
    precisions = {r["precision"] for r in _records(root / "results", "ranking").values()}
    assert len(precisions) == 1 and precisions <= {"float32", "bf16 autocast"}
    assert f"Precision (`--amp auto`: bfloat16 autocast where the CPU has native bfloat16, else float32): " \
           f"{precisions.pop()} (18 runs)." in before


def test_a_run_that_fills_several_cells_counts_once_in_the_header(quick_all):
    """alwa's C = 100 and init 1:1 cells are its SmoothL1 ALWA_2 run: the table header counts
    distinct runs and adds their training minutes once."""
    root, _, _ = quick_all
    records = _records(root / "results", "alwa")
    runs = {run_key(r["flags"]): r for r in records.values()}
    assert len(runs) < len(records)  # the shared cells
    table = (root / "results" / "alwa" / "quick.md").read_text()
    minutes = sum(r["minutes"] for r in runs.values())
    assert (f"{len(runs)} runs recorded (they fill {len(records)} cell x seed entries); their training time "
            f"adds up to {minutes:.1f} min.") in table


def test_killed_study_resumes_to_the_same_records(quick_all, tmp_path):
    root, _, _ = quick_all
    args = _cmd("ranking", "--budget", "quick", "--jobs", "2", "--work", str(tmp_path / "work"),
                "--results", str(tmp_path / "results"))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                            start_new_session=True)
    delay = random.Random().uniform(4.0, 25.0)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, f"killed after {delay:.1f} s\n" + done.stdout[-3000:] + done.stderr[-3000:]
    resumed, whole = _records(tmp_path / "results", "ranking"), _records(root / "results", "ranking")
    assert resumed.keys() == whole.keys()
    for key, rec in whole.items():
        for field in COMPARED:
            assert resumed[key][field] == rec[field], (key, field, f"killed after {delay:.1f} s")


def test_bad_budget_is_one_line(tmp_path):
    missing = subprocess.run(_cmd("ranking", "--budget", "nope"), capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "'nope'" in missing.stderr
    bad = tmp_path / "b.yaml"
    bad.write_text("flags: --epochs\nseeds: [0]\n")
    broken = subprocess.run(_cmd("ranking", "--budget", str(bad)), capture_output=True, text=True, timeout=120)
    assert broken.returncode == 2 and str(bad) in broken.stderr and "Traceback" not in broken.stderr


def test_run_keys_ignore_option_order_and_cells_never_change_the_schedule():
    from minidet.study.records import option_groups, run_key

    assert option_groups(["--a", "1", "2", "--b", "--c", "x"]) == ["--a 1 2", "--b", "--c x"]
    assert run_key(["--model", "ssd", "--seed", "1"]) == run_key(["--seed", "1", "--model", "ssd"])
    assert run_key(["--model", "ssd", "--seed", "1"]) != run_key(["--model", "ssd", "--seed", "2"])
    assert run_key(["--epochs", "36", "--seed", "1", "--epochs", "72"]) == run_key(["--seed", "1", "--epochs", "72"])
    assert run_key(["--epochs", "72", "--seed", "1", "--epochs", "36"]) != run_key(["--seed", "1", "--epochs", "72"])
    for study in STUDIES.values():
        assert not {"--epochs", "--iters", "--img-size", "--batch-size", "--shapes-images"} & set(study.flags)
        for cell in study.cells((20, 100, 200, 500)):  # only losses / weights / heads / assigners
            assert not {"--epochs", "--iters", "--lr", "--img-size", "--batch-size", "--shapes-images"} & set(cell.flags)


def test_the_convergence_check_doubles_the_schedule():
    from minidet.study.budgets import Budget

    epochs = Budget("b", ("--img-size", "128", "--epochs", "12"), (0, 1, 2), "", eval_interval=2)
    assert epochs.schedule_flags(1) == ["--eval-interval", "2"]
    assert epochs.schedule_flags(2) == ["--eval-interval", "2", "--epochs", "24", "--eval-interval", "4"]
    trainer_decides = Budget("d", (), (0, 1, 2), "")
    assert trainer_decides.schedule_flags(1) == [] and trainer_decides.schedule_flags(2) == []
    assert trainer_decides.schedule_flags(2, reference_iterations=1000) == ["--iters", "2000"]


def test_a_budgets_learning_rate_reaches_the_trainer_over_the_studys_own(tmp_path):
    from types import SimpleNamespace

    from minidet.study.__main__ import plan
    from minidet.study.budgets import Budget
    from minidet.train import build_parser

    budget = Budget("b", ("--epochs", "48", "--lr", "0.12"), (0, 1), "", eval_interval=8)
    args = SimpleNamespace(cells=["convergence check"], data="shapes", device="cpu", work=tmp_path / "work",
                           results=tmp_path / "results", tag="b")
    jobs = list(plan(args, [STUDIES["alwa"]], budget, (0, 1), {"alwa": {}}).values())
    assert len(jobs) == 4
    for job in jobs:
        parsed = build_parser().parse_args(job.flags)
        assert parsed.optimizer == "sgd" and parsed.lr == 0.12  # the study's "--lr 0.06" comes first
    # the 2x runs start first, so the two pairs side by side end together
    assert [job.users[0][1].schedule for job in jobs] == [2, 2, 1, 1]
    assert [build_parser().parse_args(job.flags).epochs for job in jobs] == [96, 96, 48, 48]


def test_a_run_another_study_recorded_is_not_trained_again(quick_all, tmp_path):
    """The ranking study's focal runs (folders deleted) serve the families study's reference cell;
    the balance study's own cells need their per-iteration series and are trained."""
    import shutil

    from minidet.study.__main__ import parse_args, plan
    from minidet.study.records import load_records

    root, _, _ = quick_all
    shutil.copytree(root / "results" / "ranking", tmp_path / "results" / "ranking")
    ranking = load_records(tmp_path / "results" / "ranking" / "quick_runs.jsonl")
    for rec in ranking.values():
        rec.pop("series", None)
    (tmp_path / "results" / "ranking" / "quick_runs.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in ranking.values()))
    args = parse_args(["families", "balance", "--budget", "quick", "--work", str(tmp_path / "work"),
                       "--results", str(tmp_path / "results")])
    args.data, args.tag = "shapes", "quick"
    records = {"families": {}, "balance": {}}
    jobs = plan(args, [STUDIES["families"], STUDIES["balance"]], BUILTIN["quick"], (0, 1), records)
    trained = {(study, cell.name, seed) for job in jobs.values() for study, cell, seed in job.users}
    ref = "RetinaNet (focal, MaxIoU)"
    for seed in (0, 1):
        assert ("families", ref, seed) not in trained and ("families", f"{ref} (2x schedule)", seed) not in trained
        assert records["families"][(ref, seed)]["metrics"] == ranking[("focal + SmoothL1", seed)]["metrics"]
        assert ("balance", "focal", seed) in trained  # no series in the ranking records
        assert ("balance", "focal (2x schedule)", seed) not in trained
    adopted = load_records(tmp_path / "results" / "families" / "quick_runs.jsonl")
    assert adopted[(ref, 1)]["flags"] == ranking[("focal + SmoothL1", 1)]["flags"]
    # a second study command that read the files before the first adopted them appends nothing twice
    lines = (tmp_path / "results" / "families" / "quick_runs.jsonl").read_text()
    plan(args, [STUDIES["families"], STUDIES["balance"]], BUILTIN["quick"], (0, 1), {"families": {}, "balance": {}})
    assert (tmp_path / "results" / "families" / "quick_runs.jsonl").read_text() == lines


def test_more_seeds_for_named_cells_train_only_those_and_their_reference(tmp_path):
    from minidet.study.__main__ import parse_args, plan

    args = parse_args(["ranking", "--budget", "quick", "--cells", "ATSS", "--seeds", "4", "--work",
                       str(tmp_path / "work"), "--results", str(tmp_path / "results")])
    args.data, args.tag = "shapes", "quick"
    jobs = plan(args, [STUDIES["ranking"]], BUILTIN["quick"], (0, 1, 2, 3), {"ranking": {}})
    trained = sorted({(cell.name, seed) for job in jobs.values() for _, cell, seed in job.users})
    cells = ["aLRP (GIoU) + SB, ATSS", "focal + SmoothL1", "focal + SmoothL1, ATSS"]
    assert trained == [(c, s) for c in cells for s in range(4)]
    # a group (a table section) names its cells; the convergence check's group its 2x run
    args = parse_args(["alwa", "--budget", "quick", "--cells", "Table 2: scheme", "convergence check", "--work",
                       str(tmp_path / "work"), "--results", str(tmp_path / "results")])
    args.data, args.tag = "shapes", "quick"
    jobs = plan(args, [STUDIES["alwa"]], BUILTIN["quick"], (0, 1), {"alwa": {}})
    trained = {cell.name for job in jobs.values() for _, cell, _ in job.users}
    table2 = {c.name for c in STUDIES["alwa"].cells(BUILTIN["quick"].alwa_intervals) if c.group == "Table 2: scheme"}
    assert len(table2) == 9 and trained == table2 | {"SmoothL1 fixed 1:1 (2x schedule)"}
    wrong = subprocess.run(_cmd("ranking", "--budget", "quick", "--cells", "ATSS", "nothing like it", "--no-train",
                                "--results", str(tmp_path / "r")), capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "'nothing like it'" in wrong.stderr


def test_a_table_keeps_the_seeds_added_beyond_the_budget(quick_all, tmp_path):
    """Records of seed 2 (a quick budget has seeds 0, 1) for the reference and one cell: a rebuild
    at the budget's seeds shows 3 seeds in those rows and their 3-pair interval."""
    import shutil

    root, _, _ = quick_all
    shutil.copytree(root / "results" / "ranking", tmp_path / "results" / "ranking")
    jsonl = tmp_path / "results" / "ranking" / "quick_runs.jsonl"
    records = _records(tmp_path / "results", "ranking")
    extra = []
    for cell, ap in (("focal + SmoothL1", 0.30), ("focal + SmoothL1, ATSS", 0.50)):
        rec = json.loads(json.dumps(records[(cell, 1)]))
        rec.update(seed=2, flags=[*rec["flags"], "--seed", "2"])
        rec["metrics"]["AP"] = ap
        extra.append(rec)
    jsonl.write_text(jsonl.read_text() + "".join(json.dumps(r) + "\n" for r in extra))
    done = subprocess.run(_cmd("ranking", "--budget", "quick", "--no-train", "--results", str(tmp_path / "results")),
                          capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["cell"]: r for r in csv.DictReader((tmp_path / "results" / "ranking" / "quick.csv").open())}
    assert rows["focal + SmoothL1"]["n"] == "3" and rows["focal + SmoothL1, ATSS"]["n"] == "3"
    assert rows["AP Loss + SmoothL1"]["n"] == "2"
    diffs = [records[("focal + SmoothL1, ATSS", s)]["metrics"]["AP"] - records[("focal + SmoothL1", s)]["metrics"]["AP"]
             for s in (0, 1)] + [0.20]
    assert float(rows["focal + SmoothL1, ATSS"]["dAP_mean"]) == pytest.approx(sum(diffs) / 3, abs=1e-5)


def test_ctrl_c_stops_the_study_without_starting_another_run(tmp_path):
    """SIGINT to the study's process group (a terminal's Ctrl-C) while a run trains: the command
    exits with 130 and no run folder appears after the interrupt (the executor had already
    handed the worker its next run, which must not start)."""
    work = tmp_path / "work"
    proc = subprocess.Popen(_cmd("ranking", "--budget", "quick", "--jobs", "1", "--work", str(work), "--results",
                                 str(tmp_path / "results")), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env(), start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(work.glob("*/*/*/log.txt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 1.5))
    before = {p.name for p in work.glob("*/*/*")}
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out
    assert {p.name for p in work.glob("*/*/*")} == before


def test_a_pair_trained_at_two_precisions_is_named_in_the_header(quick_all, tmp_path):
    """A record from a machine without native bfloat16 (float32) among bfloat16 ones: the header
    names every compared pair it belongs to — the cell vs its reference, and the rows whose paper
    direction is judged against it — and no other."""
    root, _, _ = quick_all
    (tmp_path / "ranking").mkdir()
    rows = [json.loads(line) for line in (root / "results" / "ranking" / "quick_runs.jsonl").read_text().splitlines()]
    changed = ("AP Loss + SmoothL1", 1)
    for r in rows:
        if (r["cell"], r["seed"]) == changed:
            r["precision"] = "float32" if r["precision"] != "float32" else "bf16 autocast"
    (tmp_path / "ranking" / "quick_runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run(_cmd("ranking", "--budget", "quick", "--no-train", "--work", str(tmp_path / "work"),
                               "--results", str(tmp_path)), capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "ranking" / "quick.md").read_text()
    expected = ["AP Loss + SmoothL1 vs focal + SmoothL1, seed 1",  # the aLRP rows without SB: "aLRP above AP Loss"
                "aLRP (IoU), no SB vs AP Loss + SmoothL1, seed 1", "aLRP (GIoU), no SB vs AP Loss + SmoothL1, seed 1"]
    assert f"Compared pairs whose two runs differ in precision: {'; '.join(expected)}." in table
    # the committed rebuild of the same records, one precision: no such line
    assert "differ in precision" not in (root / "results" / "ranking" / "quick.md").read_text()


@pytest.mark.parametrize("same_precision", [True, False])
def test_runs_that_would_pair_across_precisions_wait_to_the_end(tmp_path, same_precision):
    """The reference's seed-0 run is recorded. Trained at this machine's precision, the grid goes
    seed by seed; trained at another, the runs compared with it (seed 0, its 2x check among them)
    wait behind the others of their group: the convergence check first, then the grid."""
    from minidet.study.__main__ import parse_args, plan, run_flags
    from minidet.study.precision import precision_here

    budget, study = BUILTIN["quick"], STUDIES["ranking"]
    cells = study.cells(budget.alwa_intervals)
    ref = next(c for c in cells if c.name == study.reference)
    flags = run_flags(budget, study, ref, 0, "shapes", "cpu")
    here = precision_here(flags)
    other = here if same_precision else ("float32" if here != "float32" else "bf16 autocast")
    records = {"ranking": {(ref.name, 0): {"flags": flags, "precision": other, "iterations": 6}}}
    args = parse_args(["ranking", "--budget", "quick", "--work", str(tmp_path / "work"), "--results",
                       str(tmp_path / "results")])
    args.data, args.tag = "shapes", "quick"
    jobs = list(plan(args, [study], budget, (0, 1), records).values())
    check = [j for j in jobs if any(c.schedule == 2 or c.name == ref.name for _, c, _ in j.users)]
    twice = f"{ref.name} (2x schedule)"
    assert [(c.name, s) for j in check for _, c, s in j.users] == (
        [(twice, 0), (twice, 1), (ref.name, 1)] if same_precision else [(twice, 1), (ref.name, 1), (twice, 0)])
    grid = [c.name for c in cells if c.schedule == 1 and c.name != ref.name]
    seeds = (0, 1) if same_precision else (1, 0)
    assert [(c.name, s) for j in jobs if j not in check for _, c, s in j.users] == [(n, s) for s in seeds for n in grid]


def test_the_time_left_counts_each_runs_whole_training_time():
    """Two resumed runs that finish minutes after the start took 70 and 74 min of training in all:
    the four runs left, two at a time, take about 72 x 4 / 2 = 144 min, not the minutes since the start."""
    from minidet.study.__main__ import Progress

    progress = Progress(6, jobs=2)
    assert progress.line(70.0) == "[1/6 runs, 0.0 min, about 175 min left]"  # 70 x 5 / 2
    assert progress.line(74.0) == "[2/6 runs, 0.0 min, about 144 min left]"
