"""Which loss helps on this data? Train a study's grid, several seeds per cell, and write its tables.

    python -m minidet.study ranking                                  # shapes, the trainer's defaults
    python -m minidet.study ranking alwa --data my_data.yaml --jobs 2
    python -m minidet.study all --budget quick                       # every study, plumbing check
    python -m minidet.study ranking --budget eval/budgets/converged.yaml --no-train   # tables only

Studies: weights, alwa, ranking, families, balance (minidet/study/grids.py). A budget is built in
(quick, default) or a YAML file (minidet/study/budgets.py). Every cell x seed is one training +
evaluation in its own run folder under --work; identical flag sets are trained once for every
study that needs them; a finished run is appended to <results>/<study>/<tag>_runs.jsonl, and a
study killed at any moment continues where it stopped when the same command runs again. Each
study writes <tag>.md / .csv (mean ± std, the paired ΔAP to the reference cell with its 95%
t-interval, the verdict, the paper's direction), <tag>_ap.png, <tag>_curves.png, and a
convergence check: the reference cell at twice the schedule. Runs go seed by seed, the check
first; a run whose compared run (same seed) trained at another precision than this machine's
(--amp auto: bfloat16 or float32, minidet/study/precision.py) goes last.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import HelpFormatter
from .budgets import Budget, BudgetError, load_budget
from .grids import COMMON, STUDIES, Cell, Study
from .pool import BUSY, StudyPool
from .precision import crosses_precision, mixed_precision_pairs, precision_here
from .records import load_records, record_once, run_key
from .report import write_report

CHECK_SEEDS = 2  # seeds of the convergence check


@dataclass
class Job:
    """One run folder and every (study, cell, seed) that reads it."""

    run_dir: Path
    flags: list[str]
    users: list[tuple[str, Cell, int]] = field(default_factory=list)
    crosses: bool = False  # a run it is compared with trained at another precision than this machine's


def data_tag(budget: Budget, data: str) -> str:
    """Tables of a budget on its own data are named after the budget, on other data also after it."""
    if data == budget.data:
        return budget.name
    return f"{budget.name}-{'shapes' if data == 'shapes' else Path(data).stem}"


def shared_flags(budget: Budget, study: Study) -> list[str]:
    """The flags every run of a study shares: the study's own, then the budget's (so a budget may
    set the learning rate its schedule needs; the last value of an option wins)."""
    return [*COMMON, *study.flags, *budget.flags]


def run_flags(budget: Budget, study: Study, cell: Cell, seed: int, data: str, device: str,
              reference_iterations: int | None = None) -> list[str] | None:
    """The full ``python -m minidet.train`` flag list of one cell x seed (None: a 2x check whose
    length is not known until its 1x reference has trained)."""
    schedule = budget.schedule_flags(cell.schedule, reference_iterations)
    if cell.schedule != 1 and not schedule:
        return None
    return [*shared_flags(budget, study), *cell.flags, "--data", data, "--device", device,
            "--seed", str(seed), *schedule]


class Progress:
    """Runs done / total and the time left: the mean training minutes of the runs finished so far
    (each run's whole wall clock, the parts before a resume included: a resumed run ending soon
    after the start says nothing about the runs still to come) per run left, ``jobs`` at a time."""

    def __init__(self, total: int, jobs: int = 1) -> None:
        self.total, self.jobs, self.minutes, self.t0 = total, jobs, [], time.perf_counter()

    def line(self, run_minutes: float) -> str:
        self.minutes.append(run_minutes)
        done, elapsed = len(self.minutes), (time.perf_counter() - self.t0) / 60
        left = sum(self.minutes) / done * (self.total - done) / self.jobs
        return f"[{done}/{self.total} runs, {elapsed:.1f} min, about {left:.0f} min left]"


def _named(cell: Cell, texts: list[str]) -> bool:
    """Whether ``--cells`` names the cell: a text in its name, or its group (a table section)."""
    return any(text in cell.name or text == cell.group for text in texts)


def plan(args, studies: list[Study], budget: Budget, seeds: tuple[int, ...], records: dict) -> dict[Path, Job]:
    """Every run still missing from the record files, seed by seed (so a stopped study has whole
    seeds), the same run folder once; the runs that would pair across precisions last
    (minidet.study.precision)."""
    jobs: dict[Path, Job] = {}
    known = recorded_runs(args, budget)
    tag_dir = args.work / budget.name / ("shapes" if args.data == "shapes" else Path(args.data).stem)
    for seed in seeds:
        for study in studies:
            cells = study.cells(budget.alwa_intervals)
            if args.cells:  # the named cells and the references they are compared with
                named = [c for c in cells if _named(c, args.cells)]
                cells = [c for c in cells if c in named or c.name in {n.ref for n in named}]
            for cell in cells:
                if cell.schedule != 1 and seed not in seeds[:CHECK_SEEDS]:
                    continue
                ref_iters = None
                if cell.schedule != 1:
                    ref = records[study.name].get((cell.ref, seed))
                    ref_iters = ref["iterations"] if ref else None
                flags = run_flags(budget, study, cell, seed, args.data, args.device, ref_iters)
                if flags is None:
                    continue
                done = records[study.name].get((cell.name, seed))
                if done is not None and run_key(done["flags"]) == run_key(flags):
                    continue
                if adopt_recorded(args, budget, known, study.name, cell, seed, flags, records):
                    continue
                run_dir = tag_dir / f"{run_key(flags)}-seed{seed}"
                job = jobs.setdefault(run_dir, Job(run_dir, flags))
                job.users.append((study.name, cell, seed))
                job.crosses |= crosses_precision(cell, seed, cells, records[study.name],
                                                 precision_here(flags, run_dir))
    # the convergence check first (the reference at 1x and 2x): it says whether the tables can be trusted;
    # its 2x runs before its 1x runs, so that runs side by side end together
    def order(job: Job) -> tuple[bool, bool, int]:
        in_check = any(c.schedule != 1 or (c.name == STUDIES[name].reference and seed in seeds[:CHECK_SEEDS])
                       for name, c, seed in job.users)
        return not in_check, job.crosses, (-max(c.schedule for _, c, _ in job.users) if in_check else 0)

    return dict(sorted(jobs.items(), key=lambda item: order(item[1])))


def recorded_runs(args, budget: Budget) -> dict[str, dict]:
    """run key -> record, from the record file of every study for this budget and data: a run
    another study recorded (its folder perhaps deleted since) is not trained again."""
    out: dict[str, dict] = {}
    for name in STUDIES:
        for rec in load_records(results_dir(args, budget) / name / f"{args.tag}_runs.jsonl").values():
            key = run_key(rec["flags"])
            if "series" in rec or key not in out:  # prefer a record that kept the per-iteration series
                out[key] = rec
    return out


def adopt_recorded(args, budget: Budget, known: dict[str, dict], study: str, cell: Cell, seed: int, flags: list[str],
                   records: dict) -> bool:
    """Copy the record of an identical run from another study's file into this study's; -> done.
    The balance study's own cells need the per-iteration series, which only its records keep."""
    rec = known.get(run_key(flags))
    if rec is None or (study == "balance" and cell.schedule == 1 and "series" not in rec):
        return False
    kept = {k: v for k, v in rec.items() if k != "cell" and (study == "balance" or k != "series")}
    record_once(results_dir(args, budget) / study / f"{args.tag}_runs.jsonl", cell.name, seed, kept)
    records[study][(cell.name, seed)] = kept
    print(f"   [recorded before] {study}: {cell.name} seed {seed}: AP {rec['metrics']['AP']:.3f}", flush=True)
    return True


def collect(job: Job, rc: int, args, budget: Budget, records: dict, progress: Progress | None) -> bool:
    """Append a finished run to the record file of each study that uses it; -> success."""
    import json

    rec_file = job.run_dir / "record.json"
    names = ", ".join(f"{s}: {c.name} seed {seed}" for s, c, seed in job.users)
    if rc == BUSY:
        print(f"   busy: {job.run_dir} is being trained by another process; rerun this command when it is done",
              flush=True)
        return False
    if rc != 0 or not rec_file.is_file():
        print(f"   FAILED ({names}): exit {rc}; log: {job.run_dir / 'log.txt'}", flush=True)
        return False
    rec = json.loads(rec_file.read_text())
    for study, cell, seed in job.users:
        kept = rec if study == "balance" else {k: v for k, v in rec.items() if k != "series"}
        record_once(results_dir(args, budget) / study / f"{args.tag}_runs.jsonl", cell.name, seed, kept)
        records[study][(cell.name, seed)] = kept
    m = rec["metrics"]
    where = progress.line(rec["minutes"]) if progress else "[trained before]"
    print(f"   {where} {names}: AP {m['AP']:.3f} AP50 {m['AP50']:.3f} ({rec['minutes']:.1f} min train)", flush=True)
    return True


def results_dir(args, budget: Budget) -> Path:
    return args.results or budget.results or Path("runs/study/results")


def train_missing(args, studies: list[Study], budget: Budget, seeds: tuple[int, ...], records: dict) -> bool:
    """Train every missing run (two passes: the 2x checks need their reference's length)."""
    ok = True
    for _ in range(2):
        jobs = plan(args, studies, budget, seeds, records)
        cached = [j for j in jobs.values() if (j.run_dir / "record.json").is_file()]
        for job in cached:  # trained already for another study or budget tag
            ok = collect(job, 0, args, budget, records, None) and ok
        todo = [j for j in jobs.values() if j not in cached]
        if not todo:
            continue
        print(f"== {len(todo)} runs to train, {args.jobs} at a time (run folders under {args.work})", flush=True)
        if crossing := sum(j.crosses for j in todo):
            print(f"   {crossing} of them last: a run each is compared with trained at another precision than "
                  f"this machine's {precision_here(todo[0].flags)} (another machine may pair them cleanly)", flush=True)
        progress, pool = Progress(len(todo), min(args.jobs, len(todo))), StudyPool(args.jobs)
        try:
            running = {pool.submit(j.run_dir, j.flags): j for j in todo}
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    ok = collect(running.pop(fut), fut.result(), args, budget, records, progress) and ok
        except KeyboardInterrupt:
            print("\ninterrupted: the runs saved their checkpoints; run the same command again to continue",
                  flush=True)
            pool.shutdown(cancel=True)
            raise
        pool.shutdown()
    return ok


def report(args, study: Study, budget: Budget, seeds: tuple[int, ...], records: dict) -> None:
    cells = study.cells(budget.alwa_intervals)
    # every recorded seed: more seeds for the decisive cells (--cells, --seeds) stay in the table
    selected = {k: v for k, v in records.items() if k[1] in seeds or k[1] > max(budget.seeds)}
    runs = list({run_key(r["flags"]): r for r in selected.values()}.values())  # a run several cells share: once
    machines = Counter(r.get("hardware") or "unknown" for r in runs)
    hardware = (next(iter(machines), "unknown") if len(machines) < 2 else  # seeds then pair across machines too
                "; ".join(f"{h} ({n} runs)" for h, n in machines.most_common()))
    minutes = sum(r["minutes"] for r in runs)
    precisions = Counter(r.get("precision", "not recorded") for r in runs)
    budget_arg = args.budget
    header = [f"Budget `{budget.name}`: {budget.note}. Data: `{args.data}`.",
              f"Command: `python -m minidet.study {study.name} --budget {budget_arg}"
              + (f" --data {args.data}" if args.data != budget.data else "") + "`.",
              f"Flags of every run: `{' '.join(shared_flags(budget, study))}`, then each cell's own "
              "flags (minidet/study/grids.py), `--seed S`, and the evaluation interval.",
              f"Hardware: {hardware}.",
              "Precision (`--amp auto`: bfloat16 autocast where the CPU has native bfloat16, else float32): "
              + "; ".join(f"{p} ({n} runs)" for p, n in precisions.most_common()) + "."
              + (f" Compared pairs whose two runs differ in precision: "
                 f"{'; '.join(mixed_precision_pairs(cells, selected)) or 'none'}." if len(precisions) > 1 else ""),
              f"Seeds {', '.join(map(str, sorted({*seeds, *(k[1] for k in selected)})))} (the convergence check: "
              f"the first {CHECK_SEEDS}); "
              f"{len(runs)} runs recorded"
              + (f" (they fill {len(selected)} cell x seed entries)" if len(selected) != len(runs) else "")
              + f"; their training time adds up to {minutes:.1f} min."]
    window = 100 if budget.name != "quick" else 3
    out = results_dir(args, budget) / study.name
    written = write_report(study.name, study.title, cells, selected, out, args.tag, header, window)
    print(f"   {study.name}: wrote {', '.join(str(p) for p in written)}", flush=True)
    md = (out / f"{args.tag}.md").read_text().splitlines()
    print("   " + md[2], flush=True)  # the convergence line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minidet.study", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("studies", nargs="+", choices=[*STUDIES, "all"], help="studies to run ('all': every one)")
    p.add_argument("--budget", default="default", help="built-in budget (quick, default) or a budget YAML file")
    p.add_argument("--data", default=None, help="dataset YAML, dataset folder or 'shapes' (default: the budget's)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell, 0..N-1 (default: the budget's)")
    p.add_argument("--cells", nargs="+", default=None, metavar="TEXT",
                   help="train only the cells whose name contains one of these texts or whose group (a table "
                   "section, e.g. 'Table 2: scheme', 'convergence check') is one of them, and their reference "
                   "cells (more --seeds for the decisive comparisons); the tables keep every recorded run")
    p.add_argument("--jobs", type=int, default=1, help="trainings at a time, each on cores / jobs threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--work", type=Path, default=Path("runs/study"), help="run folders (checkpoints, logs)")
    p.add_argument("--results", type=Path, default=None,
                   help="where the tables go (default: the budget file's 'results', else runs/study/results)")
    p.add_argument("--no-train", action="store_true", help="only rebuild the tables from the recorded runs")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.seeds is not None and args.seeds < 1:
        p.error("--seeds must be >= 1")
    if "all" in args.studies:
        args.studies = list(STUDIES)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        budget = load_budget(args.budget)
    except BudgetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.data = args.data or budget.data
    cells = [c for name in args.studies for c in STUDIES[name].cells(budget.alwa_intervals)]
    unknown = [t for t in args.cells or () if not any(_named(c, [t]) for c in cells)]
    if unknown:
        print(f"error: --cells {' '.join(map(repr, unknown))} matches no cell of {', '.join(args.studies)}; "
              f"the cells: {'; '.join(sorted({c.name for c in cells}))}; the groups: "
              f"{'; '.join(sorted({c.group for c in cells}))}", file=sys.stderr)
        return 2
    args.tag = data_tag(budget, args.data)
    seeds = tuple(range(args.seeds)) if args.seeds else budget.seeds
    studies = [STUDIES[name] for name in dict.fromkeys(args.studies)]
    records = {s.name: load_records(results_dir(args, budget) / s.name / f"{args.tag}_runs.jsonl") for s in studies}
    print(f"== {', '.join(s.name for s in studies)}: budget {budget.name}, data {args.data}, seeds "
          f"{', '.join(map(str, seeds))}", flush=True)
    ok = True
    if not args.no_train:
        try:
            ok = train_missing(args, studies, budget, seeds, records)
        except KeyboardInterrupt:
            return 130
    for study in studies:
        report(args, study, budget, seeds, records[study.name])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
