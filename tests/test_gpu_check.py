"""eval/gpu_check.py on the CPU: every part runs (the CPU-only versions, --quick) and the table
has every section, with the CUDA-only rows skipped cleanly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "eval" / "gpu_check.py"
SECTIONS = ("1. exactness", "2. NMS benchmark", "3. AMP training (small)", "4. RetinaNet-R50 vs torchvision")


def _rows(markdown: str) -> list[list[str]]:
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| part |"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            assert len(cells) == 4, line
            rows.append(cells)
    return rows


def test_gpu_check_cpu_quick(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = out.read_text()
    assert table in proc.stdout  # the same table is printed
    rows = _rows(table)
    parts = {r[0] for r in rows}
    assert set(SECTIONS) <= parts
    assert not [r for r in rows if r[2] == "FAIL"]
    # each part ran something on the CPU (not only skips)
    for sec in SECTIONS:
        assert [r for r in rows if r[0] == sec and r[2] not in ("SKIP", "INFO")], sec
    # the CUDA-only rows are skipped with the reason
    skipped = {r[1] for r in rows if r[2] == "SKIP"}
    for check in ("CUDA against the CPU", "bench_nms --device cuda", "--amp fp16, 2 iterations on cuda",
                  "--amp bf16, 2 iterations on cuda", "RetinaNet-R50 512 px AMP on cuda"):
        assert check in skipped, check
    assert all("needs CUDA" in r[3] for r in rows if r[2] == "SKIP")
    # the rows that must be there on any device
    checks = {r[1] for r in rows}
    for name in ("loss focal_from_labels", "loss alrp", "assigner ATSS", "assigner YOLO",
                 "host syncs per step: retinanet-atss-giou-alwa2", "ratio minidet / torchvision"):
        assert name in checks, name
    assert any(c.startswith("nms / batched_nms") for c in checks)
    assert any(c.startswith("cpu nms 1000") for c in checks)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--out", str(tmp_path / "x.md")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
