"""python -m minidet.train end to end on tiny shapes data: learning, exact resume, non-finite
losses, recipes, fine-tuning and a 2-process gloo DDP run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import interrupt_at

from minidet.engine.checkpoint import load_checkpoint
from minidet.engine.trainer import Trainer
from minidet.train import main, parse_args

TINY = ["--shapes-images", "32", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--quiet",
        "--warmup-iters", "2", "--log-interval", "1", "--eval-interval", "1", "--shapes-val-images", "40"]


def records(run: Path, kind: str = "train") -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_training_learns(tmp_path):
    common = [*TINY, "--lr", "0.002", "--shapes-images", "64", "--img-size", "96", "--warmup-iters", "5",
              "--eval-interval", "4", "--shapes-val-images", "200"]
    assert main([*common, "--epochs", "0", "--out", str(tmp_path / "untrained")]) == 0
    run = tmp_path / "run"
    assert main([*common, "--epochs", "8", "--out", str(run)]) == 0
    train = records(run)
    assert len(train) == 8 * 8
    first = sum(r["loss"] for r in train[:4]) / 4
    last = sum(r["loss"] for r in train[-4:]) / 4
    assert last < 0.8 * first
    untrained = json.loads((tmp_path / "untrained" / "summary.json").read_text())["final"]["AP"]
    trained = json.loads((run / "summary.json").read_text())["final"]["AP"]
    assert trained > untrained and trained > 0.002
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.csv", "summary.json"):
        assert (run / name).is_file(), name
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["class_names"] == ["circle", "square", "triangle", "star"] and ckpt["img_size"] == 96


def test_resume_repeats_the_uninterrupted_losses(tmp_path, monkeypatch):
    args = [*TINY, "--epochs", "2", "--val-split", "none"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    full = [r["loss"] for r in records(tmp_path / "full")]

    original = interrupt_at(monkeypatch, 5)  # Ctrl-C after 5 iterations (mid-epoch 2)
    with pytest.raises(SystemExit) as stop:
        main([*args, "--out", str(tmp_path / "cut")])
    assert stop.value.code == 130
    monkeypatch.setattr(Trainer, "step", original)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["train_state"]["iteration"] == 5
    assert main(["--resume", str(tmp_path / "cut" / "last.pt"), "--quiet", "--workers", "0"]) == 0
    resumed = [r["loss"] for r in records(tmp_path / "cut")]
    assert len(resumed) == len(full) == 8
    assert resumed == full  # bit-identical per-iteration losses on CPU


def test_a_resumed_runs_minutes_count_the_part_before_the_interrupt(tmp_path, monkeypatch):
    """summary.json's minutes: the training wall clock before the Ctrl-C (saved in last.pt) plus
    the part after the resume, not the resumed part alone."""
    args = [*TINY, "--epochs", "2", "--val-split", "none", "--out", str(tmp_path / "cut")]
    original = interrupt_at(monkeypatch, 5)
    interrupted = Trainer.step

    def slow(self, images, targets):  # the first part takes >= 5 x 0.4 s
        time.sleep(0.4)
        return interrupted(self, images, targets)

    monkeypatch.setattr(Trainer, "step", slow)
    with pytest.raises(SystemExit):
        main(args)
    before = load_checkpoint(tmp_path / "cut" / "last.pt")["train_seconds"]
    assert before >= 2.0
    monkeypatch.setattr(Trainer, "step", original)
    t0 = time.perf_counter()
    assert main(["--resume", str(tmp_path / "cut" / "last.pt"), "--quiet", "--workers", "0"]) == 0
    after = time.perf_counter() - t0
    seconds = json.loads((tmp_path / "cut" / "summary.json").read_text())["minutes"] * 60
    assert before - 0.3 <= seconds <= before + after + 0.3  # (minutes are rounded to 0.01 min: 0.3 s either way)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["train_seconds"] >= before


def test_non_finite_losses_are_skipped_then_stop_training(tmp_path, monkeypatch, capsys):
    from minidet.criterion import DenseCriterion

    original = DenseCriterion.forward
    calls = {"n": 0}

    def sometimes_nan(self, outputs, targets):
        out = original(self, outputs, targets)
        calls["n"] += 1
        if calls["n"] in (2, 3):
            out["cls"] = torch.tensor(float("nan"))
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(DenseCriterion, "forward", sometimes_nan)
    run = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--val-split", "none", "--out", str(run)]) == 0
    text = capsys.readouterr().out
    assert "non-finite loss at iteration 1 (components: loss, cls); step skipped (1 in a row)" in text
    assert len(records(run)) == 2  # 4 batches, 2 skipped
    good = (run / "last.pt").read_bytes()

    def always_nan(self, outputs, targets):
        out = original(self, outputs, targets)
        out["loss"] = out["loss"] * float("inf") * 0
        return out

    monkeypatch.setattr(DenseCriterion, "forward", always_nan)
    rc = main(["--resume", str(run / "last.pt"), "--epochs", "3", "--max-bad-steps", "3", "--quiet", "--workers", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "3 consecutive non-finite losses" in err and "last good checkpoint" in err
    assert (run / "last.pt").read_bytes() == good  # untouched


def test_recipe_and_flag_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 0.1\nepochs: 3\nreg-loss: giou\n")
    args = parse_args(["--config", str(recipe), "--epochs", "1"])
    assert args.lr == 0.1 and args.epochs == 1 and args.reg_loss == "giou" and args.batch_size == 16
    recipe.write_text("learning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(recipe)])


def test_bad_flags_and_data_give_clear_errors(tmp_path, capsys):
    assert main([*TINY, "--data", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "dataset YAML not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--model", "detr"])
    assert main([*TINY, "--cls-loss", "ce", "--out", str(tmp_path / "r2")]) == 2
    assert "cannot train a RetinaNet" in capsys.readouterr().err


def test_fine_tuning_on_fewer_classes(tmp_path, capsys):
    assert main([*TINY, "--epochs", "1", "--val-split", "none", "--out", str(tmp_path / "src")]) == 0
    data = tmp_path / "two.yaml"
    data.write_text("format: shapes\ntrain: {num_images: 16, image_size: 64, classes: 2}\n"
                    "val: {num_images: 8, image_size: 64, classes: 2}\n")
    rc = main([*TINY, "--epochs", "1", "--data", str(data), "--weights", str(tmp_path / "src" / "last.pt"),
               "--out", str(tmp_path / "ft")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "re-initialised 2:" in out and "head.cls_logits.weight (shape differs" in out
    assert load_checkpoint(tmp_path / "ft" / "last.pt")["class_names"] == ["circle", "square"]


def test_two_process_gloo_ddp(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "minidet.train", *TINY, "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    train = records(tmp_path / "ddp")
    assert len(train) == 2  # 32 images / (8 per process x 2 processes)
    assert len(records(tmp_path / "ddp", "eval")) == 1
    assert (tmp_path / "ddp" / "last.pt").is_file()


@pytest.mark.parametrize("recipe", sorted(Path(__file__).resolve().parents[1].joinpath("train").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_parse(recipe):
    args = parse_args(["--config", str(recipe)])
    assert args.model in ("retinanet", "ssd", "yolo") and args.epochs > 0


def test_default_recipe_is_the_no_flag_default():
    recipe = Path(__file__).resolve().parents[1] / "train" / "shapes_default.yaml"
    from_recipe = {k: v for k, v in vars(parse_args(["--config", str(recipe)])).items() if k not in ("config", "_given")}
    default = {k: v for k, v in vars(parse_args([])).items() if k not in ("config", "_given")}
    assert from_recipe == default


def test_weighting_state_and_bf16_autocast(tmp_path):
    run = tmp_path / "alwa"
    assert main([*TINY, "--epochs", "1", "--val-split", "none", "--amp", "bf16", "--weighting", "alwa2",
                 "--alwa-interval", "3", "--out", str(run)]) == 0
    ckpt = load_checkpoint(run / "last.pt")
    state = {f"criterion.{k}": v for k, v in ckpt["criterion"].items()}  # the loss state, beside the weights
    assert not any(k.startswith("criterion.") for k in ckpt["model"])
    history = state["criterion.weighting._extra_state"]
    assert len(history["cls_history"]) == 4 % 3  # 4 steps: one full window of 3 used and cleared
    assert "criterion.weighting.lambda_cls" in state
    assert all(abs(r["weight_cls"] - 1.0) < 1 for r in records(run))


def test_diagnostics_are_logged(tmp_path):
    run = tmp_path / "diag"
    assert main([*TINY, "--epochs", "1", "--val-split", "none", "--diagnostics", "--out", str(run)]) == 0
    rec = records(run)[-1]
    assert rec["grad_ratio"] > 0 and rec["pos_per_image"] > 0
    assert -1 <= rec["score_iou_spearman"] <= 1
