"""The EMA policy (parameters and floating buffers averaged, integer buffers copied) worked out
by hand, and the criterion beside the network: the loss state is not averaged, not in best.pt's
or slim weights, not copied by fine-tuning, and older state dicts holding it still load."""

import copy
from pathlib import Path

import torch

from minidet.engine.checkpoint import (
    load_checkpoint,
    load_matching_state,
    model_from_checkpoint,
    slim_checkpoint,
)
from minidet.engine.ema import ModelEMA
from minidet.models import build_model
from minidet.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--shapes-images", "32", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--quiet",
        "--warmup-iters", "2", "--log-interval", "1", "--eval-interval", "1", "--shapes-val-images", "40"]


def test_ema_averages_parameters_and_bn_statistics_and_copies_counters():
    torch.manual_seed(0)
    model = build_model("retinanet", 3)  # tiny backbone: BatchNorm layers
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    before = copy.deepcopy(ema.module.state_dict())
    model.train()
    model(torch.rand(2, 3, 64, 64))  # moves the BatchNorm statistics and counters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    d = 0.9 * (1 - torch.exp(torch.tensor(-1.0)).item())
    after, live = ema.module.state_dict(), model.state_dict()
    checked = {"param": 0, "running": 0, "count": 0}
    for k, v in live.items():
        if k.endswith("num_batches_tracked"):
            assert torch.equal(after[k], v), k  # copied
            checked["count"] += 1
        else:
            torch.testing.assert_close(after[k], d * before[k] + (1 - d) * v, rtol=0, atol=1e-6)
            checked["running" if "running" in k else "param"] += 1
    assert all(checked.values()), checked


def test_the_criterion_lives_beside_the_network():
    model = build_model("retinanet", 3, cls_loss="alrp", weighting="self_balance")
    assert not any(k.startswith("criterion.") for k in model.state_dict())
    assert "weighting.sb" in model.criterion.state_dict()
    assert not any(p is q for p in model.parameters() for q in model.criterion.parameters())
    model.to(torch.float64)  # .to() and .train() reach the criterion too
    assert model.criterion.weighting.sb.dtype == torch.float64
    model.eval()
    assert not model.criterion.training
    # a state dict written while the criterion was a submodule still loads, its entries routed
    old = {**model.state_dict(), "criterion.weighting.sb": torch.tensor(7.0, dtype=torch.float64)}
    fresh = build_model("retinanet", 3, cls_loss="alrp", weighting="self_balance")
    fresh.load_state_dict(old)
    assert fresh.criterion.weighting.sb.item() == 7.0


def test_checkpoints_keep_the_loss_state_apart(tmp_path):
    run = tmp_path / "sb"
    assert main([*TINY, "--epochs", "1", "--cls-loss", "alrp", "--weighting", "self_balance",
                 "--out", str(run)]) == 0
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    for ckpt in (last, best):
        assert not any(k.startswith("criterion.") for k in ckpt["model"])
        assert ckpt["criterion"]["weighting.sb"].item() != 50.0  # the live SB after one period, never averaged
    assert not any(k.startswith("criterion.") for k in last["ema"]["module"])
    slim = load_checkpoint(slim_checkpoint(run / "best.pt", tmp_path / "slim.pt"))
    assert "criterion" not in slim and not any(k.startswith("criterion.") for k in slim["model"])
    model, _ = model_from_checkpoint(tmp_path / "slim.pt")
    assert model.criterion.weighting.sb.item() == 50.0  # inference weights carry no loss state
    target = build_model("retinanet", 2, cls_loss="alrp", weighting="self_balance")
    load_matching_state(target, {**last["model"], **{f"criterion.{k}": v for k, v in last["criterion"].items()}},
                        verbose=False)
    assert target.criterion.weighting.sb.item() == 50.0  # fine-tuning starts its own loss state


def test_shipped_weights_written_with_the_criterion_inside_still_load():
    for name in ("retinanet_shapes.pt", "ssd_shapes.pt", "yolo_shapes.pt"):
        model, _ = model_from_checkpoint(ROOT / "weights" / name)
        assert not any(k.startswith("criterion.") for k in model.state_dict())
