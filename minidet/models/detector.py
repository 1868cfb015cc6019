"""The Detector: backbone -> neck -> head -> HeadOutput, with its criterion and post-processing,
and ``build_model`` for any family of ``minidet.models.families.FAMILIES``.

    model = build_model("retinanet", num_classes=4, backbone="tiny")
    out = model(images)                      # HeadOutput
    losses = model.loss(images, targets)     # LossDict (losses["loss"].backward())
    dets = model.predict(images)             # [{"boxes", "scores", "labels"}] per image

``images`` are float [B, 3, H, W] in [0, 1] (the model normalises them); targets and predictions
use xyxy pixels and 0-based labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import Tensor, nn

from ..assigners import build_assigner
from ..boxes import clip_boxes_to_image
from ..losses import RANKING_LOSSES, losses_for
from ..nms import batched_nms
from ..structures import HeadOutput
from ..weighting import build_weighting
from .backbones import build_backbone
from .families import Family, family_named
from .heads import DenseHead

__all__ = ["Detector", "PostProcess", "ModelOptions", "build_model", "family_options"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PostProcess:
    """Score + threshold + top-k per level + class-aware NMS + max detections.

    scores: the head's scoring rule (``DenseHead.scores``), HeadOutput -> class scores [B, A, C];
    predict() and export score through it.
    """

    scores: Callable[[HeadOutput], Tensor]
    score_thresh: float = 0.05
    topk_per_level: int = 1000
    nms_thresh: float = 0.5
    max_det: int = 100

    def __call__(self, out: HeadOutput, boxes: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """boxes: decoded [B, A, 4]; image_sizes: (h, w) of every image before padding."""
        scores = self.scores(out)
        c = scores.shape[-1]
        results = []
        for b in range(boxes.shape[0]):
            kept_idx, kept_scores, start = [], [], 0
            for n in out.num_per_level:
                s = scores[b, start : start + n].reshape(-1)
                cand = torch.nonzero(s > self.score_thresh).squeeze(1)
                order = torch.sort(s[cand], descending=True, stable=True).indices[: self.topk_per_level]
                kept_idx.append(cand[order] + start * c)
                kept_scores.append(s[cand[order]])
                start += n
            flat = torch.cat(kept_idx)
            sc = torch.cat(kept_scores)
            prior, label = flat // c, flat % c
            bx = clip_boxes_to_image(boxes[b, prior], image_sizes[b])
            keep = batched_nms(bx, sc, label, self.nms_thresh)[: self.max_det]
            results.append({"boxes": bx[keep], "scores": sc[keep], "labels": label[keep]})
        return results


class Detector(nn.Module):
    """A detector of one family: images -> HeadOutput, plus loss() and predict().

    The criterion is held beside the network, not inside it (DETR's ``model, criterion,
    postprocessors``): ``model.criterion`` is not a registered submodule, so the model's
    parameters, buffers and ``state_dict()`` are the network's alone — what the EMA averages,
    what inference checkpoints and fine-tuning carry. The loss state (the positive normaliser,
    ALWA / self-balance records, the uncertainty weighting's parameters) travels separately
    (``model.criterion.state_dict()``; the trainer saves it as "criterion" and gives its
    parameters to the optimizer). ``.to()`` / ``.cuda()`` / ``.train()`` reach the criterion too,
    and loading an older state dict that still holds "criterion.*" entries routes them to it.
    The head owns the priors and the box coder; the criterion is given the same coder.
    """

    coder = property(lambda self: self.head.coder, doc="The head's box coder.")
    prior_generator = property(lambda self: self.head.prior_generator, doc="The head's prior generator.")

    def __init__(self, *, backbone: nn.Module, neck: nn.Module, head: DenseHead, criterion: nn.Module,
                 postprocess: PostProcess, family: str, num_classes: int, config: dict | None = None,
                 channels_last: bool = False, size_divisor: int = 32) -> None:
        super().__init__()
        self.family, self.num_classes = family, num_classes
        self.backbone, self.neck, self.head = backbone, neck, head
        object.__setattr__(self, "criterion", criterion)  # beside the network, not registered (see above)
        self.postprocess = postprocess
        self.config = dict(config or {})
        self.channels_last = channels_last
        self.size_divisor = size_divisor  # batches are padded to a multiple of it
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._register_load_state_dict_pre_hook(self._route_criterion_state, with_module=False)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if isinstance(self.criterion, nn.Module):
            self.criterion._apply(fn, recurse)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if isinstance(self.criterion, nn.Module):
            self.criterion.train(mode)
        return self

    def _route_criterion_state(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                               error_msgs) -> None:
        """State dicts saved while the criterion was a submodule: its entries go to the criterion."""
        mine = [k for k in state_dict if k.startswith(prefix + "criterion.")]
        if not mine:
            return
        routed = {k[len(prefix + "criterion."):]: state_dict.pop(k) for k in mine}
        if isinstance(self.criterion, nn.Module):
            self.criterion.load_state_dict(routed, strict=False)

    def features(self, images: Tensor) -> list[Tensor]:
        x = (images - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.neck(self.backbone(x))

    def forward(self, images: Tensor) -> HeadOutput:
        """images [B, 3, H, W] in [0, 1] -> HeadOutput (float32 logits / regressions)."""
        return self.head(self.features(images), (images.shape[-2], images.shape[-1]))

    def loss(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """The criterion's LossDict for a batch; ``loss["loss"]`` is what to backpropagate."""
        return self.criterion(self(images), targets)

    def decode(self, out: HeadOutput) -> Tensor:
        """Decoded boxes [B, A, 4] in input pixels."""
        return self.head.coder.decode(out.priors, out.box_regression, out.image_size)

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None,
                scales: Sequence[tuple[float, float]] | None = None,
                orig_sizes: Sequence[tuple[int, int]] | None = None) -> list[dict]:
        """Detections per image: {"boxes" [K, 4], "scores" [K], "labels" [K]}, sorted by score.

        image_sizes: (h, w) of each image inside the padded batch (default: the whole batch
        size); scales (sx, sy) and orig_sizes map the boxes back to original pixels (as
        ``EvalTransform`` recorded them)."""
        was_training = self.training
        self.eval()
        try:
            out = self(images)
            b = images.shape[0]
            sizes = image_sizes or [out.image_size] * b
            dets = self.postprocess(out, self.decode(out), sizes)
        finally:
            self.train(was_training)
        if scales is not None:
            for d, (sx, sy), orig in zip(dets, scales, orig_sizes or sizes, strict=True):
                d["boxes"] = clip_boxes_to_image(d["boxes"] / d["boxes"].new_tensor([sx, sy, sx, sy]), orig)
        return dets


# ------------------------------------------------------------------------------ building

@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """The options of ``build_model``. None for cls_loss, reg_loss, assigner, fpn_channels,
    head_convs and score_thresh .. max_det: the family's default (``family_options``)."""

    cls_loss: str | None = None
    reg_loss: str | None = None
    assigner: str | None = None  # an ASSIGNERS name the family can train with (Family.assigners)
    weighting: str | None = None  # a WEIGHTINGS name; None: the criterion's
    weighting_options: dict | None = None  # the scheme's constructor arguments (--weighting-option)
    assigner_options: dict | None = None  # the assigner's constructor arguments (--assigner-option)
    alwa_interval: int = 100
    sb_period: int | None = None  # self-balance's update period in steps (train.main: one epoch's)
    loss_weights: tuple[float, float] | None = None  # (cls, reg): fixed weights, or ALWA's initial ones
    alrp_iou: str = "giou"  # "giou" or "iou"
    neg_pos_ratio: float | None = 3.0  # SSD hard negatives per positive; None: no mining, every negative
    normalizer_momentum: float | None = None  # RetinaNet / SSD: an EMA of #positives as the normaliser; None: off
    ignore_iof_thr: float | None = 0.5  # priors mostly inside crowd / difficult regions are ignored; None: off
    fpn_channels: int | None = None
    head_convs: int | None = None
    head_norm: str | None = None  # None or "gn"
    p6_from: str = "c5"  # or "p5"
    # RetinaNet's anchors (sizes: one per level); None: the assigner's (ATSS: one square anchor of
    # 8 x stride per location; Max-IoU: 32..512, scales 2^0, 2^(1/3), 2^(2/3), ratios 0.5, 1, 2)
    anchor_sizes: tuple[float, ...] | None = None
    anchor_scales: tuple[float, ...] | None = None
    anchor_ratios: tuple[float, ...] | None = None
    coder_stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # RetinaNet's delta coder
    boxes_per_cell: int = 2  # YOLO
    sqrt_wh: bool = True  # YOLO: predict sqrt w, sqrt h as the paper, or w, h directly
    channels_last: bool = False
    diagnostics: bool = False  # the criterion's positives per image, score / IoU correlations, gradient ratio
    frozen_stages: int | None = None  # ResNets; None: the backbone's default
    frozen_bn: bool | None = None  # ResNets; None: the backbone's default
    width: float | None = None  # tiny backbone; None: the backbone's default
    score_thresh: float | None = None
    topk_per_level: int | None = None
    nms_thresh: float | None = None
    max_det: int | None = None


def family_options(name: str, backbone: str = "tiny") -> dict:
    """Every ``build_model`` option of family ``name`` on ``backbone`` at its default (the
    published setting of the family: RetinaNet = focal + L1, Max-IoU 0.5 / 0.4, anchors 32..512
    with 3 scales x 3 ratios, no head norm; SSD = softmax CE with 3:1 hard negatives + Smooth L1;
    YOLO v1 = sum-squared errors)."""
    return asdict(_with_family_defaults(ModelOptions(), family_named(name), backbone))


def _with_family_defaults(opts: ModelOptions, family: Family, backbone: str) -> ModelOptions:
    big = backbone != "tiny"
    defaults = {**family.model_defaults, "fpn_channels": 256 if big else 96, "head_convs": 4 if big else 2}
    return replace(opts, **{k: v for k, v in defaults.items() if getattr(opts, k) is None})


def build_model(name: str, num_classes: int, *, backbone: str = "tiny", pretrained: bool = False,
                **options) -> Detector:
    """A detector of family ``name`` ("retinanet", "ssd", "yolo") on ``backbone``; ``options``
    are the fields of ``ModelOptions`` (an unknown one is an error)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    unknown = sorted(set(options) - {f.name for f in fields(ModelOptions)})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for build_model")
    family = family_named(name)
    opts = _with_family_defaults(ModelOptions(**options), family, backbone)
    if opts.ignore_iof_thr is not None and opts.ignore_iof_thr < 0:
        opts = replace(opts, ignore_iof_thr=None)  # a negative threshold turns ignore regions off
    bb_opts = {k: getattr(opts, k) for k in ("frozen_stages", "frozen_bn", "width") if getattr(opts, k) is not None}
    bb = build_backbone(backbone, pretrained, **bb_opts)
    config = {"name": name, "num_classes": num_classes, "backbone": backbone, **options}
    neck, head, size_divisor = family.build_head(opts, bb, backbone, num_classes)
    criterion = _criterion(family, opts, head.coder)
    post = PostProcess(head.scores, opts.score_thresh, opts.topk_per_level, opts.nms_thresh, opts.max_det)
    return Detector(backbone=bb, neck=neck, head=head, criterion=criterion, postprocess=post, family=name,
                    num_classes=num_classes, config=config, channels_last=opts.channels_last, size_divisor=size_divisor)


def _criterion(family: Family, opts: ModelOptions, coder) -> nn.Module:
    """The family's criterion with the options' losses, assigner and weighting (each checked
    against what the family's head can train with)."""
    valid = [*losses_for(family.head_kind), *(RANKING_LOSSES if family.ranking else ())]
    if opts.cls_loss not in valid:
        raise ValueError(f"classification loss {opts.cls_loss!r} cannot train a {family.head}; valid choices: "
                         f"{', '.join(valid)}")
    if opts.assigner not in family.assigners:
        raise ValueError(f"assigner {opts.assigner!r} cannot train a {family.head}; valid choices: "
                         f"{', '.join(family.assigners)}")
    assigner = build_assigner(opts.assigner, opts.assigner_options, ignore_iof_thr=opts.ignore_iof_thr,
                              boxes_per_cell=opts.boxes_per_cell)
    name = opts.weighting
    if name is None and opts.loss_weights is None and opts.cls_loss in RANKING_LOSSES:
        name = RANKING_LOSSES[opts.cls_loss].weighting  # the loss's own scheme, built with the options (SB's period)
    weighting = build_weighting(name, opts.weighting_options, loss_weights=opts.loss_weights,
                                alwa_interval=opts.alwa_interval, sb_period=opts.sb_period)
    return family.build_criterion(opts, assigner, weighting, coder)
