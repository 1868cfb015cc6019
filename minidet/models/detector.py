"""The Detector: backbone -> neck -> head -> HeadOutput, with its criterion and post-processing,
and ``build_model`` for the three families.

    model = build_model("retinanet", num_classes=4, backbone="tiny")
    out = model(images)                      # HeadOutput
    losses = model.loss(images, targets)     # LossDict (losses["loss"].backward())
    dets = model.predict(images)             # [{"boxes", "scores", "labels"}] per image

``images`` are float [B, 3, H, W] in [0, 1] (the model normalises them); targets and predictions
use xyxy pixels and 0-based labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..anchors import AnchorGenerator, DefaultBoxGenerator, GridCellGenerator
from ..assigners import ATSSAssigner, MaxIoUAssigner, SSDMatcher
from ..boxes import clip_boxes_to_image
from ..coders import DeltaXYWHCoder, SSDCoder, YOLOCellCoder
from ..criterion import DenseCriterion, RankingCriterion, SSDCriterion, YOLOCriterion
from ..nms import batched_nms
from ..structures import HeadOutput
from ..weighting import WEIGHTINGS
from .backbones import build_backbone
from .fpn import FPN
from .heads import RetinaNetHead, SSDExtras, SSDHead, YOLOHead

__all__ = ["Detector", "PostProcess", "build_model", "family_options", "load_matching_state", "MODELS",
           "TRAINING_DEFAULTS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PostProcess:
    """Decode + score threshold + top-k per level + class-aware NMS + max detections.

    kind: "sigmoid" (score = sigmoid(logit) per class), "softmax" (softmax over C + 1, the last
    column is background) or "yolo" (score = sigmoid(confidence) * softmax(class logits)).
    """

    kind: str = "sigmoid"
    score_thresh: float = 0.05
    topk_per_level: int = 1000
    nms_thresh: float = 0.5
    max_det: int = 100

    def scores(self, out: HeadOutput, b: int) -> Tensor:
        """[A, C] class scores of image b."""
        logits = out.cls_logits[b].float()
        if self.kind == "softmax":
            return torch.softmax(logits, -1)[:, :-1]
        if self.kind == "yolo":
            return torch.sigmoid(out.objectness[b].float())[:, None] * torch.softmax(logits, -1)
        return torch.sigmoid(logits)

    def __call__(self, out: HeadOutput, boxes: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """boxes: decoded [B, A, 4]; image_sizes: (h, w) of every image before padding."""
        results = []
        for b in range(boxes.shape[0]):
            scores = self.scores(out, b)
            c = scores.shape[1]
            kept_idx, kept_scores, start = [], [], 0
            for n in out.num_per_level:
                s = scores[start : start + n].reshape(-1)
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
    """

    def __init__(self, family: str, backbone: nn.Module, neck: nn.Module | None, head: nn.Module,
                 priors, coder, criterion: nn.Module, postprocess: PostProcess, num_classes: int,
                 config: dict | None = None, channels_last: bool = False) -> None:
        super().__init__()
        self.family = family
        self.backbone, self.neck, self.head = backbone, neck, head
        self.prior_generator, self.coder = priors, coder
        object.__setattr__(self, "criterion", criterion)  # beside the network, not registered (see above)
        self.postprocess = postprocess
        self.num_classes = num_classes
        self.config = dict(config or {})
        self.channels_last = channels_last
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
        feats = self.backbone(x)
        return self.neck(feats) if self.neck is not None else feats

    def forward(self, images: Tensor) -> HeadOutput:
        """images [B, 3, H, W] in [0, 1] -> HeadOutput (float32 logits / regressions)."""
        feats = self.features(images)
        size = (images.shape[-2], images.shape[-1])
        objectness = None
        if self.family == "yolo":
            cls, box, objectness = self.head(feats[-1])
            grid = feats[-1].shape[-2:]
            priors, npl = self.prior_generator(grid, size, images.device)
        else:
            cls, box = self.head(feats)
            sizes = [f.shape[-2:] for f in feats]
            if self.family == "ssd":
                priors, npl = self.prior_generator(sizes, size, images.device)
            else:
                priors, npl = self.prior_generator(sizes, images.device)
        return HeadOutput(cls, box, priors, npl, size, objectness)

    def loss(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """The criterion's LossDict for a batch; ``loss["loss"]`` is what to backpropagate."""
        return self.criterion(self(images), targets)

    def decode(self, out: HeadOutput) -> Tensor:
        """Decoded boxes [B, A, 4] in input pixels."""
        if self.family == "yolo":
            return self.coder.decode(out.priors, out.box_regression, out.image_size)
        return self.coder.decode(out.priors, out.box_regression)

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

DENSE_CLS = ("focal", "bce", "yolo_sse")
RANKING_CLS = ("ap", "alrp")
FAMILY_DEFAULTS = {
    "retinanet": {"cls_loss": "focal", "reg_loss": "l1", "assigner": "maxiou",
                  "post": PostProcess("sigmoid", 0.05, 1000, 0.5, 100)},
    "ssd": {"cls_loss": "ce", "reg_loss": "smooth_l1", "assigner": "ssd",
            "post": PostProcess("softmax", 0.01, 400, 0.45, 200)},
    "yolo": {"cls_loss": "yolo_sse", "reg_loss": "l2", "assigner": "yolo",
             "post": PostProcess("yolo", 0.05, 1000, 0.5, 100)},
}
SSD_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
# SSD300 on VGG-16 as published (Caffe SSD): extras conv8_2 .. conv11_2 (38, 19, 10, 5, 3, 1 maps
# at 300 px: 8,732 default boxes) and box sizes 30, 60, 111, 162, 213, 264 (315 closes the list)
SSD300_EXTRAS = [(256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0)]
SSD300_SCALES = (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05)
# What a family trains with unless told otherwise (minidet.train reads these; see also the
# family's model options in ``family_options``)
TRAINING_DEFAULTS = {
    "retinanet": {"img_size": 512, "augment": "standard"},
    "ssd": {"img_size": 300, "augment": "ssd"},
    "yolo": {"img_size": 448, "augment": "standard"},
}


def family_options(name: str, backbone: str = "tiny") -> dict:
    """Every ``build_model`` option of family ``name`` on ``backbone`` at its default (the
    published setting of the family: RetinaNet = focal + L1, Max-IoU 0.5 / 0.4, anchors 32..512
    with 3 scales x 3 ratios, no head norm; SSD = softmax CE with 3:1 hard negatives + Smooth L1;
    YOLO v1 = sum-squared errors). ``anchor_sizes`` / ``anchor_scales`` / ``anchor_ratios`` None:
    the assigner's default (ATSS: one square anchor of 8 x stride per location; Max-IoU: 32..512
    with scales 2^0, 2^(1/3), 2^(2/3) and ratios 0.5, 1, 2)."""
    if name not in FAMILY_DEFAULTS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(FAMILY_DEFAULTS)}")
    d = FAMILY_DEFAULTS[name]
    return {"cls_loss": d["cls_loss"], "reg_loss": d["reg_loss"], "assigner": d["assigner"],
            "weighting": None, "alwa_interval": 100, "sb_period": None,
            "loss_weights": None, "alrp_iou": "giou", "neg_pos_ratio": 3.0, "boxes_per_cell": 2,
            "fpn_channels": 256 if backbone != "tiny" else 96, "head_convs": 4 if backbone != "tiny" else 2,
            "head_norm": None, "p6_from": "c5", "anchor_sizes": None, "anchor_scales": None,
            "anchor_ratios": None, "coder_stds": (1.0, 1.0, 1.0, 1.0), "channels_last": False,
            "sqrt_wh": True, "ignore_iof_thr": 0.5}


def _weighting(name: str | None, alwa_interval: int, sb_period: int | None,
               loss_weights: tuple[float, float] | None):
    """The weighting module; ``loss_weights`` (cls, reg) are the fixed weights (weighting None or
    "fixed") or ALWA's initial weights."""
    if name is None and loss_weights is not None:
        name = "fixed"
    if name is None:
        return None
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; choose one of: {', '.join(WEIGHTINGS)}")
    if loss_weights is not None:
        if len(loss_weights) != 2 or min(loss_weights) < 0:
            raise ValueError(f"loss_weights must be two non-negative numbers (cls, reg), got {loss_weights}")
        if name not in ("fixed", "alwa1", "alwa2"):
            raise ValueError(f"loss_weights set fixed or ALWA's initial weights; the {name} weighting sets its own")
    if name == "fixed" and loss_weights is not None:
        return WEIGHTINGS[name](cls=loss_weights[0], reg=loss_weights[1])
    if name in ("alwa1", "alwa2"):
        return WEIGHTINGS[name](interval=alwa_interval, init=tuple(loss_weights or (1.0, 1.0)))
    if name == "self_balance":
        return WEIGHTINGS[name](period=sb_period)
    return WEIGHTINGS[name]()


def _criterion(family: str, opts: dict, weighting, coder=None):
    cls, reg, assigner = opts["cls_loss"], opts["reg_loss"], opts["assigner"]
    if family == "retinanet":
        assigners = {"maxiou": MaxIoUAssigner, "atss": ATSSAssigner}
        if assigner not in assigners:
            raise ValueError(f"assigner {assigner!r} cannot train a RetinaNet head; valid choices: maxiou, atss")
        a = assigners[assigner](ignore_iof_thr=opts["ignore_iof_thr"])
        if cls in RANKING_CLS:
            return RankingCriterion(a, loss=cls, reg_loss=reg, weighting=weighting, alrp_iou=opts["alrp_iou"],
                                    coder=coder)
        if cls not in DENSE_CLS:
            raise ValueError(f"classification loss {cls!r} cannot train a RetinaNet (sigmoid) head; valid choices: "
                             f"{', '.join(DENSE_CLS + RANKING_CLS)}")
        return DenseCriterion(a, cls_loss=cls, reg_loss=reg, weighting=weighting, coder=coder)
    if family == "ssd":
        if assigner not in ("ssd", "maxiou"):
            raise ValueError(f"assigner {assigner!r} cannot train an SSD head; valid choices: ssd, maxiou")
        a = (SSDMatcher if assigner == "ssd" else MaxIoUAssigner)(ignore_iof_thr=opts["ignore_iof_thr"])
        return SSDCriterion(a, cls_loss=cls, reg_loss=reg, weighting=weighting, neg_pos_ratio=opts["neg_pos_ratio"])
    if assigner != "yolo":
        raise ValueError(f"assigner {assigner!r} cannot train a YOLO head; valid choice: yolo")
    return YOLOCriterion(opts["boxes_per_cell"], cls_loss=cls, reg_loss=reg, weighting=weighting,
                         coder=YOLOCellCoder(sqrt_wh=opts["sqrt_wh"]), ignore_iof_thr=opts["ignore_iof_thr"])


def build_model(name: str, num_classes: int, backbone: str = "tiny", pretrained: bool = False, **options) -> Detector:
    """A detector of family ``name`` ("retinanet", "ssd", "yolo") on ``backbone``.

    Options (all optional): cls_loss, reg_loss, assigner, weighting (fixed, alwa1, alwa2,
    self_balance, uncertainty), alwa_interval, sb_period, loss_weights ((cls, reg): fixed
    weights, or ALWA's initial ones), alrp_iou ("giou" or "iou"), neg_pos_ratio (SSD hard
    negatives per positive; None: no mining, every negative); anchor_sizes (RetinaNet, one per
    level), anchor_scales, anchor_ratios (RetinaNet; given with ATSS they replace its single
    square anchor), coder_stds (RetinaNet's delta coder), fpn_channels, head_convs, head_norm
    ("gn"), p6_from; boxes_per_cell (YOLO);
    sqrt_wh (YOLO: predict sqrt w, sqrt h as the paper, or w, h directly); ignore_iof_thr
    (priors mostly inside a crowd / difficult region are ignored, default 0.5; None: they train
    as background, as torchvision's and detectron2's references do); score_thresh,
    topk_per_level, nms_thresh, max_det; frozen_stages, frozen_bn, width (tiny backbone);
    channels_last.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    opts = family_options(name, backbone)
    defaults = FAMILY_DEFAULTS[name]
    unknown = set(options) - set(opts) - {"score_thresh", "topk_per_level", "nms_thresh", "max_det",
                                          "frozen_stages", "frozen_bn", "width"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for build_model")
    opts.update({k: v for k, v in options.items() if k in opts})
    if opts["ignore_iof_thr"] is not None and opts["ignore_iof_thr"] < 0:
        opts["ignore_iof_thr"] = None  # a negative threshold turns ignore regions off
    bb_opts = {k: options[k] for k in ("frozen_stages", "frozen_bn", "width") if k in options}
    bb = build_backbone(backbone, pretrained, **bb_opts)
    post_defaults = defaults["post"]
    post = PostProcess(post_defaults.kind, *(options.get(k, getattr(post_defaults, k))
                                             for k in ("score_thresh", "topk_per_level", "nms_thresh", "max_det")))
    weighting = _weighting(opts["weighting"], opts["alwa_interval"], opts["sb_period"], opts["loss_weights"])
    config = {"name": name, "num_classes": num_classes, "backbone": backbone, **options}

    size_divisor = 32  # the FPN adds maps of neighbouring levels: their sizes must halve exactly
    if name == "retinanet":
        neck = FPN(bb.out_channels, opts["fpn_channels"], extra_levels=2, p6_from=opts["p6_from"])
        strides = (8, 16, 32, 64, 128)
        if opts["assigner"] == "atss":  # one square anchor per location, 8 x stride (ATSS)
            sizes, scales, ratios = tuple(8 * s for s in strides), (1.0,), (1.0,)
        else:
            sizes, scales, ratios = (32, 64, 128, 256, 512), (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0)
        gen = AnchorGenerator(tuple(opts["anchor_sizes"] or sizes), strides,
                              ratios=tuple(opts["anchor_ratios"] or ratios), scales=tuple(opts["anchor_scales"] or scales))
        head = RetinaNetHead(opts["fpn_channels"], gen.num_anchors_per_location, num_classes,
                             opts["head_convs"], opts["head_norm"])
        coder = DeltaXYWHCoder(stds=tuple(opts["coder_stds"]))
    elif name == "ssd":
        n_extra = len(SSD_RATIOS) - len(bb.out_channels)
        paper = backbone == "vgg16"  # SSD300's own extras and box sizes
        spec = SSD300_EXTRAS if paper else [(256, 512), (128, 256), (128, 256), (128, 256)]
        extras = SSDExtras(bb.out_channels[-1], spec[-n_extra:])
        neck = _SSDNeck(extras)
        gen = DefaultBoxGenerator(SSD_RATIOS, scales=SSD300_SCALES if paper else None)
        head = SSDHead(bb.out_channels + extras.out_channels, gen.num_boxes_per_location(), num_classes)
        coder = SSDCoder()
        size_divisor = 1  # every map is computed from the one before: any input size works
    else:
        neck = None
        gen = GridCellGenerator(opts["boxes_per_cell"])
        head = YOLOHead(bb.out_channels[-1], num_classes, opts["boxes_per_cell"])
        coder = YOLOCellCoder(sqrt_wh=opts["sqrt_wh"])
    criterion = _criterion(name, opts, weighting, coder)
    model = Detector(name, bb, neck, head, gen, coder, criterion, post, num_classes, config,
                     channels_last=opts["channels_last"])
    model.size_divisor = size_divisor
    return model


class _SSDNeck(nn.Module):
    """Backbone maps followed by SSD's extra layers on the last one."""

    def __init__(self, extras: SSDExtras) -> None:
        super().__init__()
        self.extras = extras

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return list(feats) + self.extras(feats[-1])


MODELS = tuple(FAMILY_DEFAULTS)


def load_matching_state(model: nn.Module, state: dict[str, Tensor], verbose: bool = True) -> tuple[list[str], list[str]]:
    """Load every tensor of ``state`` whose name and shape match ``model``; the others (e.g. the
    class layers when the number of classes changed) keep their fresh initialisation.
    -> (kept names, re-initialised names); prints a summary when ``verbose``."""
    own = model.state_dict()

    def same(k, v) -> bool:  # tensors must agree in shape; extra state (ALWA / SB records) is kept as is
        return k in own and (getattr(own[k], "shape", None) == getattr(v, "shape", None))

    kept = [k for k, v in state.items() if same(k, v)]
    reinit = [k for k in own if k not in kept]
    model.load_state_dict({k: state[k] for k in kept}, strict=False)
    if verbose:
        print(f"loaded {len(kept)} of {len(own)} tensors from the checkpoint; re-initialised {len(reinit)}:")
        for k in reinit:
            reason = "shape differs" if k in state else "not in checkpoint"
            shape = tuple(getattr(own[k], "shape", ()))
            print(f"  {k} ({reason}: model {shape}"
                  + (f", checkpoint {tuple(getattr(state[k], 'shape', ()))})" if k in state else ")"))
    return kept, reinit
