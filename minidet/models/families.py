"""The detector families, one registration each: ``FAMILIES[name]`` holds everything that differs
between RetinaNet, SSD and YOLO v1 — the published defaults, the training defaults, the assigners
and classification losses its head can train with, its strides, its priors (what ``--anchors
auto`` fits or only compares), how its neck + head and its criterion are built. Nothing outside
this file tests a family's name; a new family is one more ``Family`` in ``FAMILIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from ..anchors import AnchorGenerator, DefaultBoxGenerator, GridCellGenerator
from ..coders import DeltaXYWHCoder, SSDCoder, YOLOCellCoder
from ..criterion import DenseCriterion, RankingCriterion, SSDCriterion, YOLOCriterion
from ..losses import RANKING_LOSSES
from .fpn import FPN
from .heads import RetinaNetHead, SSDExtras, SSDHead, YOLOHead

__all__ = ["Family", "FAMILIES", "family_named", "RETINANET_STRIDES", "retinanet_anchors"]


@dataclass(frozen=True, kw_only=True)
class Family:
    """One detector family.

    ``build_head(opts, backbone, backbone_name, num_classes) -> (neck, head, size_divisor)``;
    ``build_criterion(opts, assigner, weighting, coder) -> Criterion`` (``opts``: the resolved
    ``ModelOptions``). ``head_kind`` names the classification losses its head takes (the
    ``heads`` of ``minidet.losses.ClassificationLoss``); ``ranking``: the ranking losses too.
    ``anchors(assigner) -> (sizes, ratios, scales)``: the priors ``--anchors auto`` fits (None: no
    fittable anchors); ``prior_shapes(backbone, img_size) -> wh [K, 2]``: fixed priors the fit
    only compares with."""

    name: str
    label: str  # in messages: "RetinaNet", "SSD", "YOLO v1"
    head: str  # in messages: "RetinaNet (sigmoid) head"
    head_kind: str
    model_defaults: dict
    training_defaults: dict
    assigners: tuple[str, ...]
    strides: tuple[int, ...]  # of its prediction maps (strides[0]: the smallest)
    build_head: Callable
    build_criterion: Callable
    ranking: bool = False
    flags: tuple[str, ...] = ()  # its own build_model options that are train flags
    anchors: Callable[[str], tuple] | None = None
    prior_shapes: Callable[[str, int], np.ndarray] | None = None
    priors_note: str = ""  # why nothing is fitted


def family_named(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]


# ----------------------------------------------------------------------------- RetinaNet

RETINANET_STRIDES = (8, 16, 32, 64, 128)  # P3-P7


def retinanet_anchors(assigner: str | None) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(sizes per level, ratios h / w, scales) of a RetinaNet's anchors when none are given: ATSS
    one square anchor of 8 x stride per location; Max-IoU the paper's 32..512 with 3 ratios x 3
    octave scales."""
    if assigner == "atss":
        return tuple(8 * s for s in RETINANET_STRIDES), (1.0,), (1.0,)
    return (32, 64, 128, 256, 512), (0.5, 1.0, 2.0), (1.0, 2 ** (1 / 3), 2 ** (2 / 3))


def _retinanet_head(opts, bb: nn.Module, backbone: str, num_classes: int):
    neck = FPN(bb.out_channels, opts.fpn_channels, extra_levels=2, p6_from=opts.p6_from)
    sizes, ratios, scales = retinanet_anchors(opts.assigner)
    gen = AnchorGenerator(tuple(opts.anchor_sizes or sizes), RETINANET_STRIDES,
                          ratios=tuple(opts.anchor_ratios or ratios), scales=tuple(opts.anchor_scales or scales))
    head = RetinaNetHead(in_channels=opts.fpn_channels, num_classes=num_classes, prior_generator=gen,
                         coder=DeltaXYWHCoder(stds=tuple(opts.coder_stds)), num_convs=opts.head_convs,
                         norm=opts.head_norm)
    return neck, head, 32  # the FPN adds maps of neighbouring levels: their sizes must halve exactly


def _retinanet_criterion(opts, assigner, weighting, coder):
    if opts.cls_loss in RANKING_LOSSES:
        if opts.normalizer_momentum is not None:
            raise ValueError(f"--normalizer-momentum (normalizer_momentum): {opts.cls_loss} is normalised by its "
                             "ranking, not by the number of positives; leave it unset")
        return RankingCriterion(assigner, loss=opts.cls_loss, reg_loss=opts.reg_loss, weighting=weighting,
                                alrp_iou=opts.alrp_iou, coder=coder, diagnostics=opts.diagnostics)
    return DenseCriterion(assigner, cls_loss=opts.cls_loss, reg_loss=opts.reg_loss, weighting=weighting, coder=coder,
                          normalizer_momentum=opts.normalizer_momentum, diagnostics=opts.diagnostics)


# ----------------------------------------------------------------------------------- SSD

SSD_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
# SSD300 on VGG-16 as published (Caffe SSD): extras conv8_2 .. conv11_2 (38, 19, 10, 5, 3, 1 maps
# at 300 px: 8,732 default boxes) and box sizes 30, 60, 111, 162, 213, 264 (315 closes the list)
SSD300_EXTRAS = [(256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0)]
SSD300_SCALES = (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05)


def _ssd_boxes(backbone: str) -> DefaultBoxGenerator:
    return DefaultBoxGenerator(SSD_RATIOS, scales=SSD300_SCALES if backbone == "vgg16" else None)


class _SSDNeck(nn.Module):
    """Backbone maps followed by SSD's extra layers on the last one."""

    def __init__(self, extras: SSDExtras) -> None:
        super().__init__()
        self.extras = extras

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return list(feats) + self.extras(feats[-1])


def _ssd_head(opts, bb: nn.Module, backbone: str, num_classes: int):
    n_extra = len(SSD_RATIOS) - len(bb.out_channels)
    spec = SSD300_EXTRAS if backbone == "vgg16" else [(256, 512), (128, 256), (128, 256), (128, 256)]
    extras = SSDExtras(bb.out_channels[-1], spec[-n_extra:])
    head = SSDHead(in_channels=bb.out_channels + extras.out_channels, num_classes=num_classes,
                   prior_generator=_ssd_boxes(backbone), coder=SSDCoder())
    return _SSDNeck(extras), head, 1  # every map is computed from the one before: any input size works


def _ssd_criterion(opts, assigner, weighting, coder):
    return SSDCriterion(assigner, cls_loss=opts.cls_loss, reg_loss=opts.reg_loss, weighting=weighting,
                        neg_pos_ratio=opts.neg_pos_ratio, coder=coder, normalizer_momentum=opts.normalizer_momentum,
                        diagnostics=opts.diagnostics)


def _ssd_prior_shapes(backbone: str, img_size: int) -> np.ndarray:
    gen = _ssd_boxes(backbone)
    return np.concatenate([gen.shapes(lvl).numpy() for lvl in range(len(SSD_RATIOS))]) * img_size


# ----------------------------------------------------------------------------------- YOLO

class _LastMap(nn.Module):
    """YOLO's neck: the last (stride-32) backbone map alone."""

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return feats[-1:]


def _yolo_head(opts, bb: nn.Module, backbone: str, num_classes: int):
    head = YOLOHead(in_channels=bb.out_channels[-1], num_classes=num_classes,
                    prior_generator=GridCellGenerator(opts.boxes_per_cell), coder=YOLOCellCoder(sqrt_wh=opts.sqrt_wh))
    return _LastMap(), head, 32


def _yolo_criterion(opts, assigner, weighting, coder):
    return YOLOCriterion(opts.boxes_per_cell, assigner=assigner, cls_loss=opts.cls_loss, reg_loss=opts.reg_loss,
                         weighting=weighting, coder=coder, diagnostics=opts.diagnostics)


_POSTPROCESS = {"score_thresh": 0.05, "topk_per_level": 1000, "nms_thresh": 0.5, "max_det": 100}

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(name="retinanet", label="RetinaNet", head="RetinaNet (sigmoid) head", head_kind="sigmoid", ranking=True,
           model_defaults={"cls_loss": "focal", "reg_loss": "l1", "assigner": "maxiou", **_POSTPROCESS},
           training_defaults={"img_size": 512, "augment": "standard"}, assigners=("maxiou", "atss"),
           strides=RETINANET_STRIDES, build_head=_retinanet_head, build_criterion=_retinanet_criterion,
           flags=("alrp_iou", "anchor_sizes", "anchor_scales", "anchor_ratios", "coder_stds", "head_norm",
                  "head_convs", "normalizer_momentum"),
           anchors=retinanet_anchors),
    Family(name="ssd", label="SSD", head="softmax head", head_kind="softmax",
           model_defaults={"cls_loss": "ce", "reg_loss": "smooth_l1", "assigner": "ssd", "score_thresh": 0.01,
                           "topk_per_level": 400, "nms_thresh": 0.45, "max_det": 200},
           training_defaults={"img_size": 300, "augment": "ssd"}, assigners=("ssd", "maxiou"),
           strides=(8, 16, 32, 64, 128, 256), build_head=_ssd_head, build_criterion=_ssd_criterion,
           flags=("neg_pos_ratio", "normalizer_momentum"), prior_shapes=_ssd_prior_shapes,
           priors_note=" keeps its default boxes (build_model takes no prior-size option)"),
    Family(name="yolo", label="YOLO v1", head="YOLO head", head_kind="yolo",
           model_defaults={"cls_loss": "yolo_sse", "reg_loss": "l2", "assigner": "yolo", **_POSTPROCESS},
           training_defaults={"img_size": 448, "augment": "standard"}, assigners=("yolo",),
           strides=(32,), build_head=_yolo_head, build_criterion=_yolo_criterion,
           priors_note=" has no anchors (each grid cell predicts its boxes directly); nothing fitted"),
)}
