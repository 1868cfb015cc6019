"""minidet against a peer (ultralytics YOLOv8n), both from scratch, on one dataset: same image size,
epochs and batch, one thread each, run at the same time; both systems' predictions are written as
COCO results against ONE ground-truth file (minidet's reading of the validation split, difficult
objects as iscrowd ignore regions) and scored by pycocotools. Prints and writes the table.

    python -m venv --system-site-packages /work/peer-venv && /work/peer-venv/bin/pip install ultralytics
    python eval/bench_peers.py --data data/deepforest --peer-python /work/peer-venv/bin/python \\
        --img-size 352 --epochs 100 --out runs/bench_peers

The peer runs eval/peer_ultralytics.py in its own environment (YOLO_OFFLINE=1, the architecture
from yolov8n.yaml, nothing downloaded). Each system's final (last) weights are scored, not the
best-on-validation ones. CPU seconds: user + system time of each training process (its own
evaluations during training included), from the kernel's accounting (os.wait4).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from minidet.data import build_dataset
from minidet.evaluation.detector_eval import coco_ground_truth

HERE = Path(__file__).resolve().parent


def write_yolo_copy(data: str, out: Path) -> tuple[Path, list[str]]:
    """The same train / val records as an Ultralytics dataset (images linked, labels written from
    minidet's boxes; ignore regions have no YOLO form and are left out). -> (data.yaml, names)."""
    names: list[str] = []
    for split in ("train", "val"):
        ds = build_dataset(data, split)
        names = list(ds.class_names)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for r in ds.records:
            src = Path(r.path).resolve()
            link = out / "images" / split / src.name
            if not link.exists():
                link.symlink_to(src)
            b = np.asarray(r.boxes, np.float64).reshape(-1, 4)
            lines = [f"{int(c)} {(x1 + x2) / 2 / r.width:.6f} {(y1 + y2) / 2 / r.height:.6f} "
                     f"{(x2 - x1) / r.width:.6f} {(y2 - y1) / r.height:.6f}"
                     for (x1, y1, x2, y2), c in zip(b.tolist(), np.asarray(r.labels).tolist(), strict=True)]
            (out / "labels" / split / f"{src.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    yaml_path = out / "data.yaml"
    yaml_path.write_text(f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n"
                         + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return yaml_path, names


def run_together(cmds: dict[str, list[str]], logs: Path, env: dict) -> dict[str, tuple[int, float, float]]:
    """Start every command at once; -> {name: (exit status, CPU seconds user + system, wall seconds)},
    each reaped as it ends (os.wait4: the kernel's accounting of that process)."""
    t0 = time.perf_counter()
    procs = {subprocess.Popen(cmd, stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT, env=env).pid: name
             for name, cmd in cmds.items()}
    out = {}
    while len(out) < len(procs):
        pid, status, usage = os.wait4(-1, 0)
        if pid in procs:
            out[procs[pid]] = (os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime,
                               time.perf_counter() - t0)
    return out


def score(gt_file: Path, results_file: Path) -> dict:
    """pycocotools: AP, AP50 and AP / AP50 per category."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        results = json.loads(results_file.read_text())
        if not results:
            return {"AP": 0.0, "AP50": 0.0, "per_class": {}}
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    p = ev.eval["precision"][:, :, :, 0, 2]
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        a, a50 = p[:, :, k], p[0, :, k]
        per_class[gt.cats[cat]["name"]] = (float(a[a > -1].mean()) if (a > -1).any() else float("nan"),
                                           float(a50[a50 > -1].mean()) if (a50 > -1).any() else float("nan"))
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "per_class": per_class}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder or YAML (train and val splits)")
    p.add_argument("--peer-python", required=True, help="python of the virtual environment with ultralytics")
    p.add_argument("--img-size", type=int, default=352)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minidet-flags", default="", help="extra python -m minidet.train flags (quoted)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_peers"))
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    gt_file = out / "gt_val.json"
    val = build_dataset(args.data, "val")
    gt_file.write_text(json.dumps(coco_ground_truth(val)))
    yolo_yaml, names = write_yolo_copy(args.data, out / "yolo")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}
    ours = [sys.executable, "-m", "minidet.train", "--data", str(args.data), "--img-size", str(args.img_size),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
            "--workers", "0", "--out", str(out / "minidet"), *args.minidet_flags.split()]
    peer = [args.peer_python, str(HERE / "peer_ultralytics.py"), str(yolo_yaml), str(args.img_size),
            str(args.epochs), str(args.batch_size), str(out / "ultralytics"), str(gt_file), str(args.seed)]
    print("minidet:", " ".join(ours), "\npeer:   ", " ".join(peer), flush=True)
    usage = run_together({"minidet": ours, "ultralytics": peer}, out, env)
    for name, (rc, _, _) in usage.items():
        if rc != 0:
            print(f"{name} failed (exit {rc}); see {out / (name + '.log')}", file=sys.stderr)
            return 1
    ev = subprocess.run([sys.executable, "-m", "minidet.eval", "--weights", str(out / "minidet" / "last.pt"),
                         "--out", str(out / "minidet" / "eval")], env=env, capture_output=True, text=True)
    if ev.returncode != 0:
        print(ev.stderr[-2000:], file=sys.stderr)
        return 1
    scores = {"minidet": score(gt_file, out / "minidet" / "eval" / "predictions.json"),
              "ultralytics": score(gt_file, out / "ultralytics" / "predictions.json")}
    label = {"minidet": "minidet (RetinaNet, tiny backbone, no-flag defaults for the data)",
             "ultralytics": "ultralytics YOLOv8n (from yolov8n.yaml, its defaults)"}
    cols = ["system", "AP", "AP50", *(f"AP {n}" for n in names), "training CPU s", "wall s"]
    lines = [f"`python eval/bench_peers.py --data {args.data} --img-size {args.img_size} --epochs {args.epochs} "
             f"--batch-size {args.batch_size} --seed {args.seed}` (both from scratch, one thread each, run together; "
             f"scored by pycocotools against {gt_file.name})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, s in scores.items():
        rc, cpu, wall = usage[name]
        per = [f"{s['per_class'].get(n, (float('nan'),))[0]:.3f}" for n in names]
        lines.append(f"| {label[name]} | {s['AP']:.3f} | {s['AP50']:.3f} | " + " | ".join(per)
                     + f" | {cpu:.0f} | {wall:.0f} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "scores.json").write_text(json.dumps({"scores": scores, "cpu_s": {k: v[1] for k, v in usage.items()},
                                                 "wall_s": {k: v[2] for k, v in usage.items()}}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
