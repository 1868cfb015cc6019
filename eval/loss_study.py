"""The loss studies: grids of trainings through ``python -m minidet.train`` / ``python -m minidet.eval``,
several seeds per cell, with Markdown + CSV tables and PNG plots in eval/results/<study>/.

    python eval/loss_study.py ranking --budget cpu             # one study
    python eval/loss_study.py all --budget quick               # every study, smoke-check size
    python eval/loss_study.py alwa ranking --budget gpu --device cuda
    python eval/loss_study.py weights --budget cpu --data datasets/voc0712.yaml

Studies: weights, alwa, ranking, families, balance (see study_grids.py). Budgets: quick (a whole
study in minutes, numbers meaningless), cpu (each study well under 90 min on 2 CPU cores), gpu
(full size). Resumable: finished cell x seed runs are kept in <budget>_runs.jsonl next to the
tables and skipped; a run killed half-way continues from its last.pt. Identical flag sets are
trained once and shared between studies (the run cache in --work).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from study_grids import BUDGETS, COMMON, STUDIES, TITLES, Budget, Cell
from study_report import write_report

HERE = Path(__file__).resolve().parent
CPU_BUDGET_MINUTES = 90


def option_groups(flags: list[str] | tuple[str, ...]) -> list[str]:
    """["--a", "1", "--b"] -> ["--a 1", "--b"]: each option with its values."""
    groups: list[list[str]] = []
    for tok in flags:
        if tok.startswith("--") or not groups:
            groups.append([tok])
        else:
            groups[-1].append(tok)
    return [" ".join(g) for g in groups]


def run_flags(budget: Budget, cell: Cell, seed: int, data: str, device: str) -> list[str]:
    """The full ``python -m minidet.train`` flag list of one cell x seed."""
    epochs = budget.flags[budget.flags.index("--epochs") + 1]
    return [*COMMON, *budget.flags, *cell.flags, "--data", data, "--device", device, "--seed", str(seed),
            "--eval-interval", epochs]


def run_key(flags: list[str]) -> str:
    """Same options in any order -> same key (runs shared between studies)."""
    return hashlib.sha1(" ".join(sorted(option_groups(flags))).encode()).hexdigest()[:12]


def records_path(results: Path, study: str, budget: str) -> Path:
    return results / study / f"{budget}_runs.jsonl"


def load_records(path: Path) -> dict[tuple[str, int], dict]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["cell"], r["seed"])] = r
    return out


def append_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Pool:
    """At most ``jobs`` training subprocesses at a time, each on cpu_count / jobs threads."""

    def __init__(self, jobs: int) -> None:
        self.jobs, self.running = jobs, []
        self.env = dict(os.environ)
        if jobs > 1:
            threads = str(max(1, (os.cpu_count() or 1) // jobs))
            self.env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)

    def submit(self, run_dir: Path, flags: list[str], payload) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        log = (run_dir / "log.txt").open("a")
        proc = subprocess.Popen([sys.executable, str(HERE / "study_run.py"), str(run_dir), "--", *flags],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.running.append((proc, log, run_dir, payload))

    def wait_slot(self, need_free: int = 1):
        """Yield (run_dir, payload, returncode) of finished runs until ``need_free`` slots are free."""
        while len(self.running) > self.jobs - need_free:
            for item in list(self.running):
                proc, log, run_dir, payload = item
                if proc.poll() is not None:
                    log.close()
                    self.running.remove(item)
                    yield run_dir, payload, proc.returncode
            time.sleep(0.5)


def run_study(study: str, args) -> bool:
    budget = BUDGETS[args.budget]
    seeds = tuple(args.seeds) if args.seeds else budget.seeds
    cells = STUDIES[study](budget)
    path = records_path(args.results, study, budget.name)
    records = load_records(path)
    todo = []
    for cell in cells:
        for seed in seeds:
            flags = run_flags(budget, cell, seed, args.data, args.device)
            done = records.get((cell.name, seed))
            if done is not None and run_key(done["flags"]) == run_key(flags):
                continue
            todo.append((cell, seed, flags))
    print(f"== {study} ({budget.name} budget): {len(cells)} cells x {len(seeds)} seeds, {len(todo)} runs to do "
          f"({len(cells) * len(seeds) - len(todo)} already in {path})", flush=True)
    t0, failed, pool = time.perf_counter(), [], Pool(args.jobs)
    data_tag = "shapes" if args.data == "shapes" else Path(args.data).stem

    def collect(finished):
        for run_dir, (cell, seed, _flags), rc in finished:
            rec_file = run_dir / "record.json"
            if rc != 0 or not rec_file.is_file():
                failed.append(f"{cell.name} seed {seed}: exit {rc}, log {run_dir / 'log.txt'}")
                print(f"   FAILED {cell.name} seed {seed} (exit {rc}); log: {run_dir / 'log.txt'}", flush=True)
                continue
            rec = json.loads(rec_file.read_text())
            if study != "balance":
                rec.pop("series", None)  # only the balance plots need the per-iteration logs
            append_record(path, {"cell": cell.name, "seed": seed, **rec})
            records[(cell.name, seed)] = rec
            m = rec["metrics"]
            print(f"   [{len(records)}/{len(cells) * len(seeds)}] {cell.name} seed {seed}: AP {m['AP']:.3f} "
                  f"AP50 {m['AP50']:.3f} oLRP {m['oLRP']:.3f} ({rec['minutes']:.1f} min train)", flush=True)

    for cell, seed, flags in todo:
        run_dir = args.work / budget.name / data_tag / f"{run_key(flags)}-seed{seed}"
        if (run_dir / "record.json").is_file():  # trained already for another study
            collect([(run_dir, (cell, seed, flags), 0)])
            continue
        collect(pool.wait_slot())
        print(f"   start {cell.name} seed {seed} -> {run_dir}", flush=True)
        pool.submit(run_dir, flags, (cell, seed, flags))
    collect(pool.wait_slot(need_free=args.jobs))
    minutes = (time.perf_counter() - t0) / 60
    hardware = next((r.get("hardware") for r in records.values() if r.get("hardware")), "unknown")
    header = [f"Budget `{budget.name}`: {budget.note}.",
              f"Command: `python eval/loss_study.py {study} --budget {budget.name}"
              + (f" --data {args.data}" if args.data != "shapes" else "") + "`.",
              f"Flags of every run: `{' '.join(COMMON + budget.flags)}`, then each cell's own flags "
              "(see eval/study_grids.py); evaluation on the 200-image validation split.",
              f"Hardware: {hardware}.",
              f"Runs: {sum(len([s for s in seeds if (c.name, s) in records]) for c in cells)} of "
              f"{len(cells) * len(seeds)} (seeds {', '.join(map(str, seeds))}); sum of their training times "
              f"{sum(r['minutes'] for k, r in records.items() if k[1] in seeds):.1f} min (runs shared with other "
              "studies included)."]
    window = 25 if budget.name != "quick" else 3
    selected = {k: v for k, v in records.items() if k[1] in seeds}
    written = write_report(study, TITLES[study], cells, selected, args.results / study, budget.name, header, window)
    print(f"   wrote {', '.join(str(p) for p in written)} ({minutes:.1f} min)", flush=True)
    if budget.name.startswith("cpu") and minutes > CPU_BUDGET_MINUTES:
        print(f"   note: this invocation took {minutes:.0f} min, over the cpu budget's {CPU_BUDGET_MINUTES} min goal",
              flush=True)
    for f in failed:
        print(f"   failed: {f}", file=sys.stderr)
    return not failed


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", choices=[*STUDIES, "all"], help="studies to run ('all': every one)")
    p.add_argument("--budget", default="quick", choices=list(BUDGETS), help="size of every run")
    p.add_argument("--data", default="shapes", help="dataset YAML, dataset folder or 'shapes' (python -m minidet.train --data)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the budget's seeds")
    p.add_argument("--jobs", type=int, default=1, help="trainings at a time (each on cores / jobs threads)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--work", type=Path, default=Path("runs/study"), help="run folders (checkpoints, logs)")
    p.add_argument("--results", type=Path, default=HERE / "results", help="where the tables and plots go")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if "all" in args.studies:
        args.studies = list(STUDIES)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    ok = True
    for study in args.studies:
        ok = run_study(study, args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
