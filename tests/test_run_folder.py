"""A tiny python -m minidet.train run (stdout captured, i.e. not a terminal) leaves the run folder
of the tools people know: results.csv / results.png, pr_curves.png, confusion_matrix.png and the
validation mosaics, all readable; progress comes as plain lines; python -m minidet.eval
--weights writes the same figures into its --out; --no-plots leaves only the numbers."""

import contextlib
import csv
import io
import json

import cv2
import pytest

from minidet.eval import main as eval_main
from minidet.evaluation.figures import MOSAIC_TILE
from minidet.train import main as train_main

FIGURES = ("pr_curves.png", "confusion_matrix.png", "val_labels.jpg", "val_predictions.jpg")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    stdout = io.StringIO()  # not a terminal: the plain-line progress
    with contextlib.redirect_stdout(stdout):
        assert train_main(["--shapes-images", "40", "--img-size", "64", "--batch-size", "8", "--epochs", "1",
                           "--workers", "0", "--out", str(out)]) == 0
    return out, stdout.getvalue()


def test_progress_is_plain_lines(run):
    _, text = run
    assert "\r" not in text
    lines = text.splitlines()
    assert any(line.startswith("epoch 1/1: 5/5 (100%) it") and "loss=" in line for line in lines)
    assert any(line.startswith("val: 25/25 (100%) batch") for line in lines)  # 200 val images, batch 8


def test_results_csv(run):
    out, _ = run
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 1 and list(rows[0])[:3] == ["epoch", "iteration", "train/loss"]
    assert {"train/cls", "train/reg", "lr", "val/AP", "val/AP50", "val/AP75"} <= set(rows[0])
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train"]
    assert rows[0]["epoch"] == "1" and float(rows[0]["train/loss"]) == pytest.approx(
        sum(r["loss"] for r in train) / len(train))
    final = json.loads((out / "summary.json").read_text())["final"]
    assert float(rows[0]["val/AP"]) == pytest.approx(final["AP"]) and float(rows[0]["val/AP50"]) == pytest.approx(final["AP50"])
    assert (out / "metrics.csv").is_file()


def _check_figures(folder, names):
    for name in names:
        img = cv2.imread(str(folder / name))
        assert img is not None, name
        h, w = img.shape[:2]
        assert h >= 300 and w >= 600, (name, img.shape)
    side = 4 * MOSAIC_TILE + 3 * 2  # 16 tiles, 4 x 4, 2 px apart
    for name in ("val_labels.jpg", "val_predictions.jpg"):
        assert cv2.imread(str(folder / name)).shape == (side, side, 3)


def test_run_folder_figures(run):
    out, _ = run
    _check_figures(out, ("results.png", *FIGURES))


def test_eval_cli_writes_the_figures(run, tmp_path):
    out, _ = run
    with contextlib.redirect_stdout(io.StringIO()) as text:
        assert eval_main(["--weights", str(out / "best.pt"), "--batch-size", "25", "--out", str(tmp_path)]) == 0
    assert "figures: " in text.getvalue()
    _check_figures(tmp_path, FIGURES)


def test_no_plots_writes_the_numbers_and_no_figures(run, tmp_path):
    out, _ = run
    numbers = tmp_path / "numbers_only"
    with contextlib.redirect_stdout(io.StringIO()):
        assert train_main(["--shapes-images", "40", "--img-size", "64", "--batch-size", "8", "--epochs", "1",
                           "--workers", "0", "--no-plots", "--out", str(numbers)]) == 0
        assert eval_main(["--weights", str(out / "best.pt"), "--batch-size", "25", "--no-plots",
                          "--out", str(tmp_path / "eval")]) == 0
    assert (numbers / "results.csv").is_file() and (numbers / "summary.json").is_file()
    assert (tmp_path / "eval" / "metrics.json").is_file()
    for folder in (numbers, tmp_path / "eval"):
        assert not [name for name in ("results.png", *FIGURES) if (folder / name).exists()], folder
