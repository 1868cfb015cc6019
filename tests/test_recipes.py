"""Every recipe in train/ builds what its name says: anchors, priors, head norm, frozen parts,
loss, optimizer and schedule checked against the published values its comments list (the papers
and the reference implementations named there), through the same code the trainer runs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from minidet.assigners import MaxIoUAssigner, SSDMatcher
from minidet.configuration import effective_lr, lr_step_fractions, model_options
from minidet.criterion import DenseCriterion, RankingCriterion, SSDCriterion
from minidet.data import TrainTransform, collate
from minidet.engine.optim import parameter_groups
from minidet.engine.schedule import lr_factor
from minidet.models import build_model
from minidet.train import parse_args
from minidet.weighting import SelfBalance

RECIPES = Path(__file__).resolve().parents[1] / "train"


def recipe(name: str, num_classes: int):
    """(resolved configuration, model) of a recipe, built as the trainer builds it (without
    downloading ImageNet weights)."""
    args = parse_args(["--config", str(RECIPES / name), "--no-pretrained"])
    model = build_model(args.model, num_classes, backbone=args.backbone, **model_options(args))
    return args, model


def head_has_norm(model) -> bool:
    return any(isinstance(m, nn.GroupNorm | nn.BatchNorm2d) for m in model.head.modules())


def frozen_resnet_parts(model) -> None:
    """Frozen BatchNorm everywhere, stem + stage 1 without gradients, stages 2-4 trainable."""
    bb = model.backbone
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    assert not any(p.requires_grad for p in bb.stem.parameters())
    assert not any(p.requires_grad for p in bb.layer1.parameters())
    assert all(p.requires_grad for layer in (bb.layer2, bb.layer3, bb.layer4) for p in layer.parameters())


def decay_groups(model, weight_decay):
    groups = parameter_groups(model, weight_decay)
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    return decay


def schedule_at_epochs(args, iters_per_epoch: int) -> list[float]:
    """lr factor at the start of every epoch after warmup, as the trainer's scheduler gives it."""
    total = args.epochs * iters_per_epoch
    steps = lr_step_fractions(vars(args))
    return [lr_factor(e * iters_per_epoch, total, args.warmup_iters, args.schedule, steps=steps)
            for e in range(args.epochs)]


def test_retinanet_r50_1x_is_the_papers():
    args, model = recipe("coco_retinanet_r50_1x.yaml", 80)
    gen = model.prior_generator
    assert gen.sizes == [32, 64, 128, 256, 512] and gen.strides == [8, 16, 32, 64, 128]
    assert gen.scales == pytest.approx([1.0, 2 ** (1 / 3), 2 ** (2 / 3)]) and gen.ratios == [0.5, 1.0, 2.0]
    assert gen.num_anchors_per_location == 9
    priors = model(torch.zeros(1, 3, 512, 512)).priors
    assert priors.shape[0] == 9 * sum((512 // s) ** 2 for s in (8, 16, 32, 64, 128))
    assert not head_has_norm(model)
    frozen_resnet_parts(model)
    crit = model.criterion
    assert isinstance(crit, DenseCriterion) and crit.cls_name == "focal" and crit.reg_name == "l1"
    assert crit.cls_kwargs == {"alpha": 0.25, "gamma": 2.0}
    assert isinstance(crit.assigner, MaxIoUAssigner)
    assert (crit.assigner.pos_iou_thr, crit.assigner.neg_iou_thr) == (0.5, 0.4)
    assert args.optimizer == "sgd" and args.momentum == 0.9 and args.weight_decay == 1e-4
    assert effective_lr(vars(args), world_size=8) == pytest.approx(0.01)  # 8 GPUs x 2 images = 16
    # COCO train2017: 117,266 images = 7,330 steps of 16
    assert schedule_at_epochs(args, 7330)[1:] == pytest.approx([1.0] * 7 + [0.1] * 3 + [0.01])
    assert args.warmup_iters == 500 and lr_factor(0, 6000, 500, "step") == pytest.approx(0.001)
    assert args.clip_grad == 35 and args.epochs == 12 and args.augment == "standard"
    decay = decay_groups(model, args.weight_decay)
    assert id(model.head.cls_logits.bias) not in decay and id(model.head.cls_logits.weight) in decay


def test_retinanet_alrp_is_the_authors_config():
    args, model = recipe("coco_retinanet_r50_alrp.yaml", 80)
    gen = model.prior_generator
    assert gen.sizes == [32, 64, 128, 256, 512] and gen.scales == pytest.approx([1.0, 2 ** 0.5])
    assert gen.ratios == [0.5, 1.0, 2.0] and gen.num_anchors_per_location == 6
    assert not head_has_norm(model)
    frozen_resnet_parts(model)
    crit = model.criterion
    assert isinstance(crit, RankingCriterion) and crit.loss_name == "alrp" and crit.alrp_iou == "giou"
    assert crit.delta == 1.0 and isinstance(crit.weighting, SelfBalance)
    assert isinstance(crit.assigner, MaxIoUAssigner)
    assert crit.coder.stds == model.coder.stds == (0.1, 0.1, 0.2, 0.2)  # one coder for decoding and the loss
    assert args.img_size == 512 and args.augment == "ssd" and args.epochs == 100
    assert effective_lr(vars(args), world_size=4) == pytest.approx(0.008)  # 4 GPUs x 8 images = 32
    assert args.weight_decay == 1e-4 and args.momentum == 0.9 and args.warmup_iters == 500
    assert schedule_at_epochs(args, 3665)[1:] == pytest.approx([1.0] * 59 + [0.1] * 20 + [0.01] * 20)


def test_ssd300_vgg16_is_the_papers():
    args, model = recipe("voc_ssd300_vgg16.yaml", 20)
    assert args.img_size == 300 and args.augment == "ssd" and model.size_divisor == 1
    transform = TrainTransform(args.img_size, ssd=True)
    item = {"image": np.zeros((375, 500, 3), np.uint8), "boxes": np.array([[10, 20, 200, 300]], np.float32),
            "labels": np.array([3]), "ignore_boxes": np.zeros((0, 4), np.float32), "image_id": 0, "path": "x"}
    images, _ = collate([transform(item), transform(item)], size_divisor=model.size_divisor)
    assert images.shape[-2:] == (300, 300)  # no padding to 320
    out = model(images)
    assert out.priors.shape[0] == 8732
    assert out.num_per_level == [38 * 38 * 4, 19 * 19 * 6, 10 * 10 * 6, 5 * 5 * 6, 3 * 3 * 4, 1 * 1 * 4]
    sides = out.priors[:, 2:] - out.priors[:, :2]
    starts = np.cumsum([0] + out.num_per_level[:-1])
    per_location = [4, 6, 6, 6, 4, 4]
    # the first box of every location is the square of side s_k (largest where no clipping cuts it)
    smallest_square = [sides[s : s + n : k, 0].max().item()
                       for s, n, k in zip(starts, out.num_per_level, per_location, strict=True)]
    assert smallest_square == pytest.approx([30, 60, 111, 162, 213, 264], abs=0.01)
    crit = model.criterion
    assert isinstance(crit, SSDCriterion) and crit.cls_name == "ce" and crit.reg_name == "smooth_l1"
    assert crit.neg_pos_ratio == 3 and crit.reg_kwargs == {"beta": 1.0}
    assert isinstance(crit.assigner, SSDMatcher) and crit.assigner.iou_thr == 0.5
    assert args.optimizer == "sgd" and args.momentum == 0.9 and args.weight_decay == 5e-4
    assert effective_lr(vars(args)) == pytest.approx(1e-3) and args.batch_size == 32 and args.warmup_iters == 0
    # 40k iterations at 1e-3, 10k at 1e-4, 10k at 1e-5 (156 steps per epoch of VOC07 trainval)
    factors = schedule_at_epochs(args, iters_per_epoch=156)
    assert factors[254] == 1.0 and factors[256] == pytest.approx(0.1) and factors[320] == pytest.approx(0.01)
    l2 = model.backbone.l2norm.weight
    assert id(l2) not in decay_groups(model, args.weight_decay)


def test_shapes_recipe_is_the_no_flag_run():
    recipe_args = vars(parse_args(["--config", str(RECIPES / "shapes_default.yaml")]))
    default = vars(parse_args([]))
    recipe_args.pop("config"), default.pop("config")
    assert recipe_args == default
