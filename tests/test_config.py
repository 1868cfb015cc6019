"""The configuration layer of python -m minidet.train: one resolved configuration per run, resume
rebuilds exactly that run (every family, non-default losses / assigners / weighting), flags given
with --resume override only what they name, per-optimizer defaults, and every value that cannot
work refused with one line naming the flag."""

import json
from pathlib import Path

import pytest
import torch
from train_helpers import interrupt_at

from minidet.configuration import OPTIMIZER_DEFAULTS, effective_lr, resolve
from minidet.engine.checkpoint import load_checkpoint
from minidet.engine.trainer import Trainer
from minidet.eval import main as eval_main
from minidet.train import main, parse_args

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--shapes-images", "32", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--quiet",
        "--warmup-iters", "2", "--log-interval", "1", "--val-split", "none"]


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.parametrize("family_flags", [
    ["--model", "retinanet", "--assigner", "maxiou", "--reg-loss", "ciou", "--weighting", "alwa2",
     "--alwa-interval", "3", "--head-norm", "none"],
    ["--model", "ssd", "--reg-loss", "giou", "--assigner", "maxiou", "--neg-pos-ratio", "2"],
    ["--model", "yolo", "--cls-loss", "focal", "--weighting", "uncertainty", "--optimizer", "sgd"],
], ids=["retinanet", "ssd", "yolo"])
def test_resume_rebuilds_the_same_run(tmp_path, monkeypatch, family_flags):
    args = [*TINY, *family_flags, "--epochs", "2"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    original = interrupt_at(monkeypatch, 3)  # Ctrl-C after 3 iterations (mid-epoch 1)
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(Trainer, "step", original)
    # resumed with no model flags at all: the saved configuration is the truth
    assert main(["--resume", str(tmp_path / "cut" / "last.pt")]) == 0
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["config"] == full["config"]
    for k, v in full["model"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, cut["model"][k]), k


def test_flags_with_resume_override_only_what_they_name(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TINY, "--model", "ssd", "--reg-loss", "giou", "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["--resume", str(run / "last.pt"), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "changed by flags: epochs: 1 -> 2" in out
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["args"]["reg_loss"] == "giou" and ckpt["args"]["epochs"] == 2
    assert ckpt["config"]["reg_loss"] == "giou" and ckpt["train_state"]["iteration"] == 8


def test_optimizer_defaults_belong_to_their_optimizer(tmp_path):
    sgd = parse_args(["--optimizer", "sgd"])  # on top of the small preset (AdamW 0.003, wd 0.05)
    assert (sgd.lr, sgd.weight_decay, sgd.momentum, sgd.base_batch) == (0.01, 1e-4, 0.9, 16)
    assert effective_lr(vars(sgd), world_size=1) == pytest.approx(0.01)
    assert parse_args(["--optimizer", "sgd", "--lr", "0.05"]).lr == 0.05
    adamw = parse_args(["--config", str(ROOT / "train" / "coco_retinanet_r50_1x.yaml"), "--optimizer", "adamw"])
    assert (adamw.lr, adamw.weight_decay, adamw.base_batch) == (
        OPTIMIZER_DEFAULTS["adamw"]["lr"], OPTIMIZER_DEFAULTS["adamw"]["weight_decay"], None)
    r50 = vars(parse_args(["--config", str(ROOT / "train" / "coco_retinanet_r50_1x.yaml")]))
    assert effective_lr(r50, world_size=8) == pytest.approx(0.01)  # 8 x 2 images = the 16 it is given for
    assert effective_lr(r50, world_size=2) == pytest.approx(0.0025)


def test_families_get_their_own_defaults_without_a_preset():
    ssd = resolve({"model": "ssd", "preset": "none"})
    assert (ssd["assigner"], ssd["reg_loss"], ssd["cls_loss"], ssd["augment"], ssd["img_size"]) == (
        "ssd", "smooth_l1", "ce", "ssd", 300)
    retina = resolve({"preset": "none"})
    assert (retina["assigner"], retina["reg_loss"], retina["head_norm"], retina["anchor_sizes"]) == (
        "maxiou", "l1", "none", None)
    small_ssd = resolve({"model": "ssd"})  # the small preset's RetinaNet keys stay with RetinaNet
    assert small_ssd["assigner"] == "ssd" and small_ssd["reg_loss"] == "smooth_l1" and "head_norm" not in small_ssd
    assert resolve({"backbone": "resnet50", "pretrained": True})["frozen_stages"] == 2
    assert resolve({"backbone": "resnet50"})["frozen_bn"] is False


def _refused(capsys, argv, flag, run=main):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {flag}") and "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv, flag", [
    (["--eval-interval", "0"], "--eval-interval"),
    (["--img-size", "0"], "--img-size"),
    (["--img-size", "7"], "--img-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-1"], "--lr"),
    (["--epochs", "-1"], "--epochs"),
    (["--log-interval", "0"], "--log-interval"),
    (["--workers", "-2"], "--workers"),
    (["--lr-steps", "20"], "--lr-steps"),
    (["--iters", "0"], "--iters"),
    (["--shapes-val-images", "0"], "--shapes-val-images"),
    (["--normalizer-momentum", "1"], "--normalizer-momentum"),
    (["--model", "yolo", "--neg-pos-ratio", "2"], "--neg-pos-ratio"),  # an SSD option, ignored by YOLO before
    (["--model", "ssd", "--head-convs", "2"], "--head-convs"),
    (["--normalizer-momentum", "0.9", "--cls-loss", "ap"], "--normalizer-momentum"),
    (["--iters", "8", "--epochs", "2"], "--iters"),
    (["--iters", "8", "--lr-steps", "3"], "--lr-steps"),  # 3 epochs of 4 batches > 8 steps
    (["--device", "tpu"], "--device"),
    pytest.param(["--device", "cuda"], "--device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    (["--resume", str(ROOT / "weights" / "retinanet_shapes.pt")], "--resume"),
])
def test_values_that_cannot_work_are_refused(capsys, argv, flag):
    _refused(capsys, [*TINY, *argv], flag)


@pytest.mark.parametrize("argv, flag", [
    (["--img-size", "0"], "--img-size"),
    (["--batch-size", "0"], "--batch-size"),
    pytest.param(["--device", "cuda"], "--device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_eval_refuses_values_that_cannot_work(capsys, tmp_path, argv, flag):
    _refused(capsys, ["--weights", str(ROOT / "weights" / "retinanet_shapes.pt"), "--out", str(tmp_path), *argv],
             flag, run=eval_main)


def test_weights_of_another_family_say_so(tmp_path, capsys):
    rc = main([*TINY, "--epochs", "0", "--model", "ssd", "--weights", str(ROOT / "weights" / "retinanet_shapes.pt"),
               "--out", str(tmp_path / "ft")])
    assert rc == 0
    assert "is a retinanet on tiny, the new model a ssd on tiny" in capsys.readouterr().out


def test_stored_data_paths_are_absolute(tmp_path, monkeypatch):
    data = tmp_path / "d"
    data.mkdir()
    (data / "s.yaml").write_text("format: shapes\ntrain: {num_images: 16, image_size: 64}\n"
                                 "val: {num_images: 4, image_size: 64}\n")
    monkeypatch.chdir(data)
    assert main([*TINY, "--epochs", "1", "--data", "s.yaml", "--out", str(tmp_path / "run")]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["data"] == str(data / "s.yaml") and ckpt["args"]["data"] == str(data / "s.yaml")
    monkeypatch.chdir(tmp_path)  # evaluation from another folder finds the data
    assert eval_main(["--weights", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "ev")]) == 0


def test_shapes_validation_size_is_a_flag():
    from minidet.train import data_spec

    assert data_spec(parse_args([]))["val"]["num_images"] == 200
    spec = data_spec(parse_args(["--shapes-images", "40", "--shapes-val-images", "7"]))
    assert spec["train"]["num_images"] == 40 and spec["val"]["num_images"] == 7


def _criterion(model: str, cfg: dict):
    """The criterion ``python -m minidet.train`` builds from a resolved configuration."""
    from minidet.configuration import model_options
    from minidet.models import build_model

    return build_model(model, 3, backbone="tiny", **model_options(cfg)).criterion


@pytest.mark.parametrize("model", ["retinanet", "ssd"])
def test_normalizer_momentum_reaches_the_criterion(model):
    """--normalizer-momentum M: the loss divides by an EMA of #positives (started at 100, as
    detectron2's RetinaNet); without it, by the batch's own count."""
    crit = _criterion(model, vars(parse_args(["--model", model, "--normalizer-momentum", "0.9"])))
    assert crit.normalizer_momentum == 0.9
    n = torch.tensor(7.0)
    crit.train()
    assert crit.positive_normaliser(n).item() == pytest.approx(0.9 * 100 + 0.1 * 7)
    plain = _criterion(model, vars(parse_args(["--model", model])))
    assert plain.normalizer_momentum is None and plain.positive_normaliser(n).item() == 7.0


def test_neg_pos_ratio_all_trains_every_negative(tmp_path):
    """--neg-pos-ratio all reaches the criterion as no mining (it used to read as unset: 3:1),
    also from the saved configuration of a resumed run."""
    assert _criterion("ssd", vars(parse_args(["--model", "ssd", "--neg-pos-ratio", "all"]))).neg_pos_ratio is None
    assert _criterion("ssd", vars(parse_args(["--model", "ssd", "--neg-pos-ratio", "2"]))).neg_pos_ratio == 2.0
    assert _criterion("ssd", vars(parse_args(["--model", "ssd"]))).neg_pos_ratio == 3.0
    run = tmp_path / "run"
    assert main([*TINY, "--model", "ssd", "--cls-loss", "softmax_focal", "--neg-pos-ratio", "all", "--iters", "1",
                 "--val-split", "none", "--out", str(run)]) == 0
    saved = load_checkpoint(run / "last.pt")["args"]
    assert saved["neg_pos_ratio"] == "all"
    assert _criterion("ssd", vars(parse_args([], saved=saved))).neg_pos_ratio is None
