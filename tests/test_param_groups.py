"""Optimiser parameter groups: weight decay for conv / linear weights only; none for norm layers,
biases, other 1-d parameters (SSD's L2Norm scale) and the criterion's own parameters (the
uncertainty weighting's log-variances). Membership is checked against the modules' types and
the parameters' names, and the effect against AdamW's decoupled decay worked out by hand."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from train_helpers import catch_trainer, interrupt_at

from minidet.engine import trainer as trainer_module
from minidet.engine.checkpoint import load_checkpoint
from minidet.engine.optim import build_optimizer, parameter_groups
from minidet.models import build_model
from minidet.models.backbones import L2Norm
from minidet.train import main

NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def named_parameters(model):
    """The network's parameters and, under "criterion.", the loss's (held beside the network)."""
    out = list(model.named_parameters())
    criterion = getattr(model, "criterion", None)
    if isinstance(criterion, nn.Module):
        out += [(f"criterion.{n}", p) for n, p in criterion.named_parameters()]
    return out


def named_modules(model):
    out = list(model.named_modules())
    criterion = getattr(model, "criterion", None)
    if isinstance(criterion, nn.Module):
        out += [(f"criterion.{n}" if n else "criterion", m) for n, m in criterion.named_modules()]
    return out


def groups_by_name(model, groups) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in named_parameters(model)}
    decay = [g for g in groups if g["weight_decay"] > 0]
    no_decay = [g for g in groups if g["weight_decay"] == 0]
    assert len(decay) == 1 and len(no_decay) == 1
    return {names[id(p)] for p in decay[0]["params"]}, {names[id(p)] for p in no_decay[0]["params"]}


def assert_partition(model, groups) -> None:
    """Every trainable parameter in exactly one group, nothing else in any."""
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for _, p in named_parameters(model) if p.requires_grad}


def expected_no_decay(model) -> set[str]:
    """Written out independently of parameter_groups: module types and parameter names."""
    out = set()
    for module_name, module in named_modules(model):
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, NORMS + (L2Norm,)) or name == "bias" or full.startswith("criterion."):
                out.add(full)
    return out


def test_retinanet_with_group_norm_and_uncertainty_weighting():
    model = build_model("retinanet", 4, head_norm="gn", weighting="uncertainty")
    groups = parameter_groups(model, 0.05)
    assert_partition(model, groups)
    decay, no_decay = groups_by_name(model, groups)
    assert no_decay == expected_no_decay(model)
    assert {"criterion.weighting.log_vars.cls", "criterion.weighting.log_vars.reg"} <= no_decay
    kinds = {type(m) for m in model.modules() if isinstance(m, NORMS)}
    assert {nn.BatchNorm2d, nn.GroupNorm} <= kinds  # both kinds present and checked
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert decay == convs
    assert all(p.ndim == 4 for n, p in model.named_parameters() if n in decay)


def test_ssd_l2norm_scale_gets_no_weight_decay():
    model = build_model("ssd", 4, backbone="vgg16")
    groups = parameter_groups(model, 5e-4)
    assert_partition(model, groups)
    decay, no_decay = groups_by_name(model, groups)
    l2 = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, L2Norm)]
    assert l2 and set(l2) <= no_decay
    assert no_decay == expected_no_decay(model)


def test_layer_norm_linear_frozen_shared_and_frozen_bn():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4), nn.Flatten(), nn.Linear(4, 4), nn.LayerNorm(4),
                          shared, shared, nn.Linear(4, 2, bias=False))
    model[0].bias.requires_grad_(False)  # frozen: in no group
    groups = parameter_groups(model, 0.1)
    assert_partition(model, groups)
    decay, no_decay = groups_by_name(model, groups)
    assert decay == {"0.weight", "3.weight", "5.weight", "7.weight"}
    assert no_decay == {"3.bias", "4.weight", "4.bias", "5.bias"}
    assert not list(model[1].parameters())  # FrozenBatchNorm2d: buffers only


def test_adamw_decays_exactly_the_decay_group():
    """AdamW with zero gradients: only the decoupled decay moves the weights, by (1 - lr wd)."""
    torch.manual_seed(0)
    model = build_model("retinanet", 4, head_norm="gn", weighting="uncertainty")
    with torch.no_grad():  # give norm weights / biases / log-variances values that decay would visibly move
        for p in model.parameters():
            p.add_(torch.rand_like(p) + 0.5)
    args = SimpleNamespace(optimizer="adamw", lr=0.1, weight_decay=0.5, momentum=0.9)
    opt = build_optimizer(model, args)
    before = {n: p.detach().clone() for n, p in named_parameters(model)}
    for _, p in named_parameters(model):
        p.grad = torch.zeros_like(p)
    opt.step()
    decay, no_decay = groups_by_name(model, opt.param_groups)
    for n, p in named_parameters(model):
        want = before[n] * (1 - 0.1 * 0.5) if n in decay else before[n]
        assert torch.equal(p.detach(), want), n


def test_sgd_groups_and_hyperparameters():
    model = build_model("retinanet", 4)
    args = SimpleNamespace(optimizer="sgd", lr=0.01, weight_decay=1e-4, momentum=0.9)
    opt = build_optimizer(model, args)
    assert isinstance(opt, torch.optim.SGD)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert all(g["lr"] == 0.01 and g["momentum"] == 0.9 for g in opt.param_groups)
    single = build_optimizer(model, args, grouped=False)
    assert len(single.param_groups) == 1 and single.param_groups[0]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, SimpleNamespace(optimizer="lamb", lr=0.1, weight_decay=0.0, momentum=0.0))


def test_optimizer_state_round_trips():
    """Save after a few steps, rebuild the optimiser for a copy of the model, load: the states
    and the next steps are identical."""
    torch.manual_seed(0)
    model = build_model("retinanet", 4, head_norm="gn", weighting="uncertainty")
    args = SimpleNamespace(optimizer="adamw", lr=1e-3, weight_decay=0.05, momentum=0.9)
    opt = build_optimizer(model, args)
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
                "ignore_boxes": torch.zeros(0, 4)} for _ in range(2)]

    def step(m, o):
        o.zero_grad()
        m.loss(images, targets)["loss"].backward()
        o.step()

    for _ in range(2):
        step(model, opt)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "criterion": model.criterion.state_dict(),
                "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    copy = build_model("retinanet", 4, head_norm="gn", weighting="uncertainty")
    copy.load_state_dict(saved["model"])
    copy.criterion.load_state_dict(saved["criterion"])
    opt2 = build_optimizer(copy, args)
    opt2.load_state_dict(saved["optimizer"])
    assert [g["weight_decay"] for g in opt2.param_groups] == [0.05, 0.0]
    for (_, p), (_, q) in zip(named_parameters(model), named_parameters(copy), strict=True):
        assert torch.equal(opt.state[p]["step"], opt2.state[q]["step"])
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])
    step(model, opt)
    step(copy, opt2)
    for (n, p), (_, q) in zip(named_parameters(model), named_parameters(copy), strict=True):
        assert torch.equal(p, q), n


TINY = ["--shapes-images", "16", "--img-size", "64", "--batch-size", "4", "--workers", "0", "--quiet",
        "--warmup-iters", "2", "--log-interval", "1", "--val-split", "none", "--epochs", "2"]


def losses(run) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def test_training_uses_the_groups(tmp_path, monkeypatch):
    seen = catch_trainer(monkeypatch)
    assert main([*TINY, "--epochs", "1", "--weight-decay", "0.05", "--out", str(tmp_path / "run")]) == 0
    trainer = seen["trainer"]
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.05, 0.0]
    _, no_decay = groups_by_name(trainer.model, trainer.optimizer.param_groups)
    assert no_decay == expected_no_decay(trainer.model)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]
    assert [g["weight_decay"] for g in saved["param_groups"]] == [0.05, 0.0]
    assert len(saved["state"]) == sum(1 for p in trainer.model.parameters() if p.requires_grad)


def test_a_run_started_with_one_group_resumes_with_one_group(tmp_path, monkeypatch, capsys):
    """Checkpoints written before the groups existed: the run continues as it started, exactly."""
    monkeypatch.setattr(trainer_module, "build_optimizer",
                        lambda model, args, grouped=True: build_optimizer(model, args, grouped=False))
    assert main([*TINY, "--out", str(tmp_path / "old")]) == 0
    interrupt_at(monkeypatch, 5)
    with pytest.raises(SystemExit):
        main([*TINY, "--out", str(tmp_path / "cut")])
    assert len(load_checkpoint(tmp_path / "cut" / "last.pt")["optimizer"]["param_groups"]) == 1
    monkeypatch.undo()  # today's code resumes it
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "cut" / "last.pt"), "--quiet", "--workers", "0"]) == 0
    assert "continues that way" in capsys.readouterr().out
    assert losses(tmp_path / "cut") == losses(tmp_path / "old")
    assert len(load_checkpoint(tmp_path / "cut" / "last.pt")["optimizer"]["param_groups"]) == 1


def test_gradient_clipping_sees_the_loss_parameters(tmp_path, monkeypatch):
    """The criterion lives beside the network: clipping must still include its parameters."""
    seen = {}
    original = nn.utils.clip_grads_with_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        seen["ids"] = {id(p) for p in params}
        return original(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(trainer_module.nn.utils, "clip_grads_with_norm_", spy)
    caught = catch_trainer(monkeypatch)
    assert main([*TINY, "--epochs", "1", "--weighting", "uncertainty", "--clip-grad", "10",
                 "--out", str(tmp_path / "run")]) == 0
    model = caught["trainer"].model
    log_vars = {id(p) for p in model.criterion.parameters()}
    assert log_vars and log_vars <= seen["ids"]
    assert {id(p) for p in model.parameters() if p.requires_grad} <= seen["ids"]
