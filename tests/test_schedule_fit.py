"""The training schedule on small datasets: --iters N takes exactly N optimizer steps (the schedule
over N, the last epoch cut short, evaluation and exact resume as with --epochs), the warmup is at
most 10% of the run, a last partial batch is kept unless it holds a single image, a run too short
to learn says so, and evaluating a last.pt scores the weights training evaluated (its EMA)."""

import json
from pathlib import Path

import pytest
import torch
from train_helpers import interrupt_at

from minidet.api import load
from minidet.configuration import ConfigError, lr_step_fractions, resolve
from minidet.data import build_loader
from minidet.data.loader import left_out, train_batches
from minidet.engine.checkpoint import (
    CheckpointError,
    checkpoint_weights,
    load_checkpoint,
    save_checkpoint,
)
from minidet.engine.schedule import capped_warmup, lr_factor, short_run_warning
from minidet.engine.trainer import Trainer
from minidet.eval import main as eval_main
from minidet.train import main

# 40 images at batch 8: 5 batches per epoch
TINY = ["--shapes-images", "40", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--quiet",
        "--log-interval", "1", "--device", "cpu", "--seed", "0", "--shapes-val-images", "40"]


def records(run: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def count_steps(monkeypatch) -> list[int]:
    """Images of every Trainer.step call, in order."""
    seen, original = [], Trainer.step

    def counted(self, images, targets):
        seen.append(len(images))
        return original(self, images, targets)

    monkeypatch.setattr(Trainer, "step", counted)
    return seen


def test_iters_takes_exactly_n_steps_over_a_schedule_of_n(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    seen = count_steps(monkeypatch)
    assert main([*TINY, "--iters", "12", "--eval-interval", "2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "--iters 12: 3 epoch(s) of 5 batches, the last one ending after 2 of them" in out
    assert "warmup: 100 -> 1 iterations (at most 10% of the 12-iteration run)" in out
    assert ("warning: 12 optimizer steps (--iters 12) is short for a detector trained from scratch; use --iters "
            "1000 or more (or --epochs 200)") in out
    assert seen == [8] * 12
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["iteration"] == 12 and ckpt["train_state"]["epoch"] == 3
    assert ckpt["train_state"]["batch_in_epoch"] == 0
    assert ckpt["args"]["iters"] == 12 and ckpt["args"]["epochs"] == 3
    assert ckpt["scheduler"]["last_epoch"] == 12
    group = ckpt["optimizer"]["param_groups"][0]  # cosine over the 12 steps: at its end, 1% of the base lr
    assert group["lr"] == pytest.approx(group["initial_lr"] * lr_factor(12, 12, 1, "cosine"))
    assert group["lr"] == pytest.approx(group["initial_lr"] * 0.01)
    train = records(run)
    assert [r["iteration"] for r in train] == list(range(1, 13))
    assert [r["epoch"] for r in train] == [0] * 5 + [1] * 5 + [2] * 2
    # evaluated every 2 epochs and at the end (the short third epoch)
    assert [(r["epoch"], r["iteration"]) for r in records(run, "eval")] == [(2, 10), (3, 12)]
    assert json.loads((run / "summary.json").read_text())["iterations"] == 12


def test_iters_with_epochs_is_refused_in_one_line(capsys):
    assert main([*TINY, "--iters", "5", "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("error: --iters 5 and --epochs 2") and "give one of them" in err


def test_run_length_layers():
    assert resolve({})["iters"] is None and resolve({})["epochs"] == 12
    cfg = resolve({"iters": 300})  # over the preset's epochs
    assert (cfg["epochs"], cfg["iters"]) == (None, 300)
    assert resolve({}, saved={"iters": 300, "epochs": 4})["iters"] == 300  # saved epochs were derived
    assert (resolve({"epochs": 5}, saved={"iters": 300, "epochs": 4})["epochs"],
            resolve({"epochs": 5}, saved={"iters": 300, "epochs": 4})["iters"]) == (5, None)
    assert resolve({"iters": 50}, recipe={"epochs": 3})["iters"] == 50
    with pytest.raises(ConfigError, match="--config: the recipe sets both iters"):
        resolve({}, recipe={"iters": 50, "epochs": 3})
    # --lr-steps stay epochs: with --iters an epoch is the loader's batches
    assert lr_step_fractions({"lr_steps": [2, 3], "iters": 20, "epochs": None}, 5) == (0.5, 0.75)
    assert lr_step_fractions({"lr_steps": [8], "epochs": 12}) == (8 / 12,)


def test_warmup_cap_and_short_run_rules():
    assert capped_warmup(100, 1500) == 100  # the no-flag run: unchanged
    assert capped_warmup(500, 90_000) == 500 and capped_warmup(1000, 90_000) == 1000  # mmdetection / detectron2
    assert capped_warmup(100, 240) == 24 and capped_warmup(2, 8) == 0 and capped_warmup(100, 70) == 7
    assert short_run_warning(90, 3, 30, False, True) == (
        "warning: 90 optimizer steps (30 epochs x 3 batches) is short for a detector trained from scratch; use "
        "--iters 1000 or more (or --epochs 334)")
    assert short_run_warning(1500, 125, 12, False, True) is None  # the no-flag run
    assert short_run_warning(90, 3, 30, False, False) is None  # fine-tuning / a pretrained backbone
    assert short_run_warning(0, 3, 0, False, True) is None  # --epochs 0


def test_the_no_flag_run_keeps_its_1500_steps():
    loader = build_loader(list(range(2000)), 16, train=True, resumable=True)
    assert len(loader) * 12 == 1500 and left_out(loader, 2000) is None


@pytest.mark.parametrize("world", [1, 2, 3])
def test_train_batches_is_the_training_loaders_length(world, monkeypatch):
    """The run plan is made before any loader: ``train_batches`` must give the length of the
    loader build_loader makes (torch's DistributedSampler shards under ``world`` processes)."""
    if world > 1:
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: world)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 0)
    for n in (1, 2, 3, 5, 16, 17, 33, 34, 45, 2000):
        for batch in (1, 2, 8, 16):
            loader = build_loader(list(range(n)), batch, train=True, resumable=True, pin_memory=False)
            assert train_batches(n, batch, world) == len(loader) == len(list(loader.batch_sampler)), (n, batch)


@pytest.mark.parametrize("resumable", [True, False])
def test_the_last_partial_batch_is_kept_unless_it_holds_one_image(resumable):
    def epoch(n, batch, skip=0):
        loader = build_loader(list(range(n)), batch, train=True, resumable=resumable, pin_memory=False)
        if resumable:
            loader.sampler.set_epoch(0, skip=skip)
        return loader, list(loader.batch_sampler)  # the index batches the loader fetches

    loader, batches = epoch(45, 16)
    assert [len(b) for b in batches] == [16, 16, 13] and len(loader) == 3
    assert sorted(i for b in batches for i in b) == list(range(45)) and left_out(loader, 45) is None
    loader, batches = epoch(33, 16)
    assert [len(b) for b in batches] == [16, 16] and len(loader) == 2
    assert left_out(loader, 33) == ("1 of 33 images are left out of every epoch (1 because the last batch would "
                                    "hold a single image per process, too few for BatchNorm statistics)")
    assert [len(b) for b in epoch(5, 1)[1]] == [1] * 5  # batches of one image are what was asked for
    if resumable:  # a resumed epoch skips whole batches: the same partial batch at its end
        loader, batches = epoch(45, 16, skip=16)
        assert [len(b) for b in batches] == [16, 13] and len(loader) == 2
        loader, batches = epoch(33, 16, skip=16)
        assert [len(b) for b in batches] == [16] and len(loader) == 1


def test_small_datasets_are_seen_whole(tmp_path, monkeypatch, capsys):
    seen = count_steps(monkeypatch)
    argv = [*TINY, "--val-split", "none", "--epochs", "1", "--shapes-images", "45", "--batch-size", "16"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert seen == [16, 16, 13] and "left out" not in capsys.readouterr().out
    seen.clear()
    assert main([*argv, "--shapes-images", "41", "--batch-size", "8", "--out", str(tmp_path / "b")]) == 0
    assert seen == [8] * 5
    assert "train data: 1 of 41 images are left out of every epoch (1 because" in capsys.readouterr().out


def test_resume_mid_epoch_with_iters_is_exact(tmp_path, monkeypatch):
    # 20 images at batch 8: batches of 8, 8 and 4; 7 steps = epochs of 3, 3 and 1
    args = [*TINY, "--shapes-images", "20", "--iters", "7", "--warmup-iters", "2", "--val-split", "none"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    original = interrupt_at(monkeypatch, 4)  # Ctrl-C after 4 steps: epoch 2, one batch into it
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(Trainer, "step", original)
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (cut["train_state"]["epoch"], cut["train_state"]["batch_in_epoch"], cut["train_state"]["iteration"]) == (
        1, 1, 4)
    assert main(["--resume", str(tmp_path / "cut" / "last.pt")]) == 0
    full, cut = records(tmp_path / "full"), records(tmp_path / "cut")
    assert [(r["iteration"], r["loss"], r["lr"]) for r in cut] == [(r["iteration"], r["loss"], r["lr"]) for r in full]
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert a["train_state"]["iteration"] == b["train_state"]["iteration"] == 7
    for name, sa, sb in (("model", a["model"], b["model"]), ("ema", a["ema"]["module"], b["ema"]["module"])):
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), (name, k)


def test_eval_of_last_pt_scores_the_ema(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TINY, "--iters", "3", "--val-split", "none", "--out", str(run)]) == 0  # preset small: EMA on
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["ema"] is not None
    ckpt["data"]["val"]["num_images"] = 8  # a short evaluation
    last = save_checkpoint(ckpt, tmp_path / "last.pt")
    plain = {k: ckpt[k] for k in ("config", "class_names", "img_size", "data")}
    ema_only = save_checkpoint({**plain, "model": ckpt["ema"]["module"]}, tmp_path / "ema_only.pt")
    raw_only = save_checkpoint({**plain, "model": ckpt["model"]}, tmp_path / "raw_only.pt")

    def predictions(weights, *extra):
        out = tmp_path / f"eval-{weights.stem}-{len(extra)}"
        capsys.readouterr()
        # float32 for all four (last.pt alone knows its run's precision, bf16 on an AVX512-BF16 CPU)
        assert eval_main(["--weights", str(weights), "--score-thresh", "0.0", "--batch-size", "8", "--device", "cpu",
                          "--amp", "off", "--out", str(out), *extra]) == 0
        return (out / "predictions.json").read_text(), capsys.readouterr().out

    ema_preds, text = predictions(last)
    assert f"weights: {last}: EMA weights (the weights training evaluated" in text
    assert ema_preds == predictions(ema_only)[0]
    raw_preds, text = predictions(last, "--raw-weights")
    assert f"weights: {last}: raw weights (the optimizer's; training evaluated the EMA)" in text
    assert raw_preds == predictions(raw_only)[0] and raw_preds != ema_preds
    # the Python API (and the demo through it) loads the same weights
    model = load(last).model
    for k, v in ckpt["ema"]["module"].items():
        assert torch.equal(model.state_dict()[k], v), k


def test_checkpoint_weights_of_best_pt_and_plain_files():
    weights = {"w": torch.ones(1)}
    ema = {"w": torch.zeros(1)}
    assert checkpoint_weights({"model": weights, "ema": {"module": ema}})[0] is ema
    assert checkpoint_weights({"model": weights, "ema": {"module": ema}}, raw=True)[0] is weights
    best = {"model": ema, "model_weights": "ema", "ema": {"module": ema}}
    assert checkpoint_weights(best)[1].startswith("EMA weights")
    with pytest.raises(CheckpointError, match="^--raw-weights: .*evaluate the run's last.pt"):
        checkpoint_weights(best, raw=True)
    assert checkpoint_weights({"model": weights})[0] is weights
