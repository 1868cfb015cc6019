"""Defaults for custom --data (any data but the built-in shapes) left unset by the flags, a recipe
or a resumed run: the image size from the boxes (--img-size auto), about 10 evaluations per run
(--eval-interval auto) and, from scratch, 12 epochs or MIN_STEPS_FROM_SCRATCH optimizer steps,
whichever is longer; the built-in shapes' no-flag run keeps its preset."""

import json

import yaml
from test_data_layouts import STEMS, write_voc

import minidet.configuration as configuration
from minidet.configuration import resolve
from minidet.engine.schedule import MIN_STEPS_FROM_SCRATCH
from minidet.train import main


def test_custom_data_defaults_are_auto_and_flags_win():
    shapes = resolve({})
    assert (shapes["img_size"], shapes["eval_interval"], shapes["min_iters"]) == (128, 4, None)
    custom = resolve({"data": "my/data.yaml"})
    assert (custom["img_size"], custom["eval_interval"]) == ("auto", "auto")
    assert custom["min_iters"] == MIN_STEPS_FROM_SCRATCH == 1000
    # the preset's scale jitter is tuned on the shapes; custom data keeps the augmentation's own
    assert (shapes["scale_jitter"], custom["scale_jitter"]) == ([0.8, 1.25], None)
    assert resolve({"data": "my/data.yaml", "scale_jitter": [0.5, 2.0]})["scale_jitter"] == [0.5, 2.0]
    given = resolve({"data": "my/data.yaml", "img_size": 320, "eval_interval": 5, "epochs": 30})
    assert (given["img_size"], given["eval_interval"], given["min_iters"]) == (320, 5, None)
    assert resolve({"data": "my/data.yaml", "iters": 200})["min_iters"] is None
    assert resolve({"data": "my/data.yaml", "pretrained": True, "backbone": "resnet18"})["min_iters"] is None
    assert resolve({"data": "my/data.yaml", "weights": "a.pt"})["min_iters"] is None
    # a resumed custom run keeps what it resolved to (the numbers saved in its configuration)
    saved = dict(custom, img_size=352, eval_interval=34, iters=1000, epochs=334)
    again = resolve({}, saved=saved)
    assert (again["img_size"], again["eval_interval"], again["iters"]) == (352, 34, 1000)


def test_a_small_custom_run_gets_its_size_length_and_evaluations(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(configuration, "MIN_STEPS_FROM_SCRATCH", 30)
    data = tmp_path / "voc"
    write_voc(data, STEMS)  # 4 train images of 48 x 40 px with 16-30 px boxes, 2 val images
    run = tmp_path / "run"
    assert main(["--data", str(data), "--batch-size", "2", "--workers", "0", "--quiet", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    # plan_img_size: the 10th-percentile box needs far more than 128 px -> 128, capped by the images'
    # own median longer side 48 rounded up to a multiple of 32 -> 64
    assert "img size auto: 64" in out
    # 12 epochs of 2 batches = 24 steps < 30 -> 30 steps: 15 epochs; evaluations every ceil(15 / 10) = 2
    assert "training 30" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["img_size"], saved["iters"], saved["min_iters"]) == (64, 30, 30)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["epoch"] for r in metrics if r["kind"] == "eval"]
    assert evals == [2, 4, 6, 8, 10, 12, 14, 15]
    assert max(r["iteration"] for r in metrics) == 30
