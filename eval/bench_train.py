"""The no-flag training run, this code against an earlier commit, in the same run on the same
machine: wall clock, training images/s and the final COCO AP of each, and the ratio.

    python eval/bench_train.py                          # vs da22694 (before the engine work)
    python eval/bench_train.py --baseline HEAD~3 --epochs 3 --shapes-images 800   # shorter
    python eval/bench_train.py --baseline d57e3be --current HEAD -- --data data/deepforest   # custom data

The baseline is checked out with ``git worktree`` into a temporary folder and run there with
``python -m minidet.train`` exactly as a user would (its own defaults: threads, workers); then
this checkout (or ``--current COMMIT``, checked out the same way: the working tree can then change
while it runs) runs the same command. Each run is the whole process (start-up, data, training,
evaluations) timed from outside. Extra arguments after ``--`` go to both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_training(code: Path, out: Path, flags: list[str]) -> dict:
    """``python -m minidet.train`` with the package of ``code`` -> wall seconds and summary."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(code)
    cmd = [sys.executable, "-m", "minidet.train", *flags, "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{code}: training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text()) or {}
    return {"seconds": seconds, "summary": summary, "batch": config.get("batch_size"), "log": proc.stdout}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="da22694", help="commit to compare with (default: before the engine work)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of both runs (default: the no-flag 12)")
    p.add_argument("--shapes-images", type=int, default=None, help="training images (default: the no-flag 2000)")
    p.add_argument("--current", default=None, help="commit to run as 'current' (default: this working tree)")
    p.add_argument("--order", default="baseline,current", help="which run first")
    p.add_argument("--logs", default=None, help="folder to keep both runs' stdout and run folders in")
    args = p.parse_args(argv)
    flags = list(extra)
    if args.epochs is not None:
        flags += ["--epochs", str(args.epochs)]
    if args.shapes_images is not None:
        flags += ["--shapes-images", str(args.shapes_images)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        keep = Path(args.logs) if args.logs else Path(tmp)
        trees = {"baseline": (Path(tmp) / "baseline", args.baseline)}
        if args.current:
            trees["current"] = (Path(tmp) / "current", args.current)
        for path, commit in trees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
                           check=True, capture_output=True)
        try:
            codes = {"baseline": trees["baseline"][0], "current": trees.get("current", (ROOT,))[0]}
            for name in args.order.split(","):
                print(f"running {name} ({codes[name]}) ...", flush=True)
                results[name] = run_training(codes[name], keep / f"run-{name}", flags)
                if args.logs:
                    (keep / f"run-{name}.log").write_text(results[name]["log"])
        finally:
            for path, _ in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                               capture_output=True)
    head = args.current or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                          capture_output=True, text=True).stdout.strip() + " + working tree"
    print(f"\n`python -m minidet.train {' '.join(flags)}` on {os.cpu_count()} CPU cores "
          f"(baseline {args.baseline}, current {head})\n")
    print("| code | wall clock | optimizer steps | training images/s | AP | AP50 |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        final = r["summary"].get("final") or {}
        steps = r["summary"].get("iterations", 0)
        print(f"| {name} | {r['seconds'] / 60:.2f} min | {steps} | {steps * (r['batch'] or 0) / r['seconds']:.1f} | "
              f"{final.get('AP', float('nan')):.3f} | {final.get('AP50', float('nan')):.3f} |")
    ratio = results["baseline"]["seconds"] / results["current"]["seconds"]
    print(f"\nspeed-up (baseline wall clock / current wall clock): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
