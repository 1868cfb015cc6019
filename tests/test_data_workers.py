"""Data errors in DataLoader worker processes reach the user as the same one-line message as
with --workers 0; --lenient counts images found unreadable while loading (also in workers) once
per file and the summary names them; data.check decodes every image and finds corrupt,
truncated and size-mismatched files."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch._utils import ExceptionWrapper

from minidet.data import DataError, DataReport, build_dataset, build_loader, collate
from minidet.data.check import main as check_main
from minidet.data.problems import record_skipped
from minidet.eval import main as eval_main
from minidet.train import main as train_main

W, H = 48, 40
TRAIN = ["--epochs", "1", "--img-size", "64", "--batch-size", "2", "--val-split", "none", "--quiet",
         "--warmup-iters", "1", "--format", "coco", "--train-split", "train"]


def jpeg_bytes(k: int) -> bytes:
    img = np.full((H, W, 3), 40 + 20 * k, np.uint8)
    img[5:25, 8:30] = (200, 50, 50)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def coco_folder(root, files: dict, sizes: dict | None = None):
    """COCO standard layout: annotations/instances_train.json + train/; ``files`` name -> bytes."""
    sizes = sizes or {}
    (root / "train").mkdir(parents=True)
    images, anns = [], []
    for k, (name, data) in enumerate(files.items()):
        (root / "train" / name).write_bytes(data)
        w, h = sizes.get(name, (W, H))
        images.append({"id": k + 1, "file_name": name, "width": w, "height": h})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [8, 5, 22, 20], "area": 440,
                     "iscrowd": 0})
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return root


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    files = {f"img{k}.jpg": jpeg_bytes(k) for k in range(5)}
    files["broken.jpg"] = b"\x00 this is not an image " * 8
    return coco_folder(tmp_path_factory.mktemp("broken"), files)


def test_worker_data_error_is_the_plain_message():
    try:
        raise DataError("cannot decode image x.jpg (corrupt) — fix it\n(use --lenient to skip such entries)")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(DataError) as err:
        wrapped.reraise()  # what torch does with a worker's exception
    assert str(err.value) == "cannot decode image x.jpg (corrupt) — fix it\n(use --lenient to skip such entries)"
    assert "Caught DataError" in err.value.worker_traceback


def test_corrupt_image_with_workers_is_one_line(broken, tmp_path, capsys):
    assert train_main([*TRAIN, "--data", str(broken), "--workers", "0", "--out", str(tmp_path / "w0")]) == 2
    expected = capsys.readouterr().err
    assert expected.startswith("error: cannot decode image ") and "broken.jpg" in expected
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "minidet.train", *TRAIN, "--data", str(broken), "--workers", "2",
                          "--out", str(tmp_path / "w2")], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2
    assert run.stderr == expected  # the same single message, no worker traceback
    assert "Traceback" not in run.stderr and "Caught" not in run.stderr and len(run.stderr.splitlines()) == 1


def test_lenient_counts_skips_from_workers_once_per_file(broken, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*TRAIN, "--data", str(broken), "--workers", "2", "--lenient", "--epochs", "2",
                       "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    summary = stdout[stdout.index("train data: skipped"):]
    assert "1 x unreadable image (skipped while loading)" in summary and "broken.jpg" in summary
    # evaluation (python -m minidet.eval) with workers: the skip is counted and printed too
    assert eval_main(["--weights", str(out / "last.pt"), "--data", str(broken), "--format", "coco", "--split",
                      "train", "--workers", "2", "--lenient", "--out", str(tmp_path / "eval")]) == 0
    stdout = capsys.readouterr().out
    assert "1 x unreadable image (skipped while loading)" in stdout and "broken.jpg" in stdout
    assert eval_main(["--weights", str(out / "last.pt"), "--data", str(broken), "--format", "coco", "--split",
                      "train", "--workers", "2", "--out", str(tmp_path / "eval2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot decode image ") and len(err.splitlines()) == 1


def test_loader_carries_skips_to_the_main_report(broken):
    ds = build_dataset(broken, "train", strict=False, fmt="coco")
    loader = build_loader(ds, batch_size=3, train=False, workers=2, pin_memory=False)
    seen = 0
    for _, targets in loader:
        seen += record_skipped(ds.report, targets)
    assert seen == 1 and ds.report.counts["unreadable image (skipped while loading)"] == 1
    assert "broken.jpg" in ds.report.summary()
    for _, targets in loader:  # a second pass: the same file is not counted again
        assert record_skipped(ds.report, targets) == 0
    assert ds.report.total == 1
    images, targets = collate([ds[0], ds[5]])
    assert targets[0]["skipped"] == [] and targets[1]["skipped"][0][0].endswith("broken.jpg")
    report = DataReport(strict=False)
    assert record_skipped(report, targets) == 1 and record_skipped(report, targets) == 0


def test_check_decodes_every_image(tmp_path, capsys):
    good = jpeg_bytes(0)
    mismatched = io.BytesIO()
    Image.fromarray(np.zeros((H, W + 10, 3), np.uint8)).save(mismatched, format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()  # stored 40 wide x 48 high, displayed 48 x 40: matches the annotation
    Image.fromarray(np.zeros((W, H, 3), np.uint8)).save(rotated, format="JPEG", exif=exif.tobytes())
    turned = io.BytesIO()  # annotated with the stored (unrotated) size: a mismatch
    Image.fromarray(np.zeros((W, H, 3), np.uint8)).save(turned, format="JPEG", exif=exif.tobytes())
    files = {"good.jpg": good, "corrupt.jpg": b"\xff\xd8 garbage" * 10, "truncated.jpg": good[: len(good) // 2],
             "wrong_size.png": mismatched.getvalue(), "phone.jpg": rotated.getvalue(), "turned.jpg": turned.getvalue()}
    root = coco_folder(tmp_path / "data", files, sizes={"turned.jpg": (H, W)})
    assert check_main([str(root), "--format", "coco", "--splits", "train", "--workers", "3"]) == 1
    out = capsys.readouterr().out
    assert "1 x corrupt image" in out and "corrupt.jpg: cannot be decoded" in out
    assert "1 x truncated image" in out and "truncated.jpg: truncated" in out
    assert "2 x image size mismatch" in out and f"wrong_size.png: the annotations say {W}x{H} but the image is {W + 10}x{H}" in out
    assert f"turned.jpg: the annotations say {H}x{W} but the image is {W}x{H} as displayed (its EXIF orientation" in out
    assert "good.jpg" not in out and "phone.jpg" not in out
    assert check_main([str(root), "--format", "coco", "--splits", "train", "--no-decode"]) == 0


def test_workers_start_after_opencv_threads_were_used():
    """eval/bench_data.py renders and writes 512 px images with OpenCV in the main process, then
    reads them with 2 DataLoader workers: the forked workers hung in OpenCV's thread pool until
    build_loader made OpenCV single-threaded. Run in a subprocess under a time limit."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, str(root / "eval" / "bench_data.py"), "--workers", "2", "--images", "16"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| COCO PNG files (decoded) | 2 |" in proc.stdout
