"""The Criterion: one interface through which every head trains.

``criterion(outputs: HeadOutput, targets: list[dict]) -> LossDict``. A criterion is composed of
an assigner (minidet.assigners), classification / regression losses chosen by name
(minidet.losses), an optional sampler (SSD's hard negative mining) and a weighting scheme
(minidet.weighting). The returned dict holds:

- ``loss``: the training loss (sum of the weighted components) — the only tensor with a graph;
- the raw components (``cls``, ``reg``, plus family-specific parts), detached;
- ``<name>_weighted`` and ``weight_<name>`` for every component the weighting saw;
- ``num_pos``: positives in the batch; with ``diagnostics=True`` also positives per image and
  the classification-score / IoU correlations of the positives (and ``self.diagnostics`` gets
  the negative/positive gradient ratio after backward).

Implementations: ``DenseCriterion`` (RetinaNet-style sigmoid heads), ``SSDCriterion``
(softmax + hard negative mining), ``YOLOCriterion`` (YOLO v1's sum-squared loss) and
``RankingCriterion`` (AP Loss or aLRP Loss). Losses are computed in float32 even under
autocast; classification sums are normalised by the number of positives in the batch (at least
1; optionally an EMA of it, as detectron2 does). Under DDP the count is averaged across processes
only while ``Criterion.sync_normalizer`` is True: the Trainer sets it for its training steps
(world size > 1), so that DDP's mean of the per-process gradients is the gradient of the whole
batch's loss; it is off by default, and a loss computed by one process alone (a debug call, a
per-rank evaluation of the loss) never waits for the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .assigners import (
    AssignResult,
    ATSSAssigner,
    MaxIoUAssigner,
    SSDMatcher,
    YOLOGridAssigner,
    pad_gts,
)
from .boxes import aligned_box_iou, aligned_generalized_box_iou, use_device_path
from .coders import DeltaXYWHCoder, SSDCoder, YOLOCellCoder
from .diagnostics import grad_ratio_hook, pearson, spearman
from .losses import (
    CLASSIFICATION_LOSSES,
    REGRESSION_LOSSES,
    alrp_loss,
    ap_loss,
    sigmoid_focal_loss_from_labels,
)
from .samplers import hard_negative_mask
from .structures import HeadOutput
from .weighting import FixedWeights, LossWeighting, SelfBalance

__all__ = ["Criterion", "DenseCriterion", "SSDCriterion", "YOLOCriterion", "RankingCriterion", "ASSIGNERS"]

LossDict = dict[str, Tensor]
OFFSET_LOSSES = ("l1", "l2", "smooth_l1")  # on encoded offsets; the others on decoded boxes
ASSIGNERS = {"maxiou": MaxIoUAssigner, "atss": ATSSAssigner, "ssd": SSDMatcher, "yolo": YOLOGridAssigner}


def _choose(kind: str, name: str, valid: Sequence[str], head: str) -> None:
    if name not in valid:
        raise ValueError(
            f"{kind} loss {name!r} cannot train a {head}; valid choices: {', '.join(valid)}"
        )


class Criterion(nn.Module):
    """Shared machinery: padding gts, the positive normaliser, weighting and the LossDict.

    ``sync_normalizer`` (default False): ``positive_normaliser`` averages the positive count
    over processes, an all_reduce that every process must enter. The Trainer turns it on around
    the forward of its DDP training steps only (world size > 1); any other call of the loss
    (``model.loss`` by one rank alone, a debug call) stays local and never waits for others."""

    head_kind = "head"
    sync_normalizer: bool = False  # see the class docstring

    def __init__(self, assigner, weighting: LossWeighting | None = None,
                 normalizer_momentum: float | None = None, diagnostics: bool = False) -> None:
        super().__init__()
        self.assigner = assigner
        self.weighting = weighting if weighting is not None else FixedWeights()
        self.normalizer_momentum = normalizer_momentum
        self.register_buffer("normalizer", torch.tensor(100.0))
        self.diagnostics_enabled = diagnostics
        self.diagnostics: dict[str, float] = {}

    def num_classes(self, outputs: HeadOutput) -> int:
        """Foreground classes of the head's outputs."""
        return outputs.cls_logits.shape[-1]

    def check_labels(self, targets: list[dict], num_classes: int) -> None:
        """A clear ValueError for labels outside 0..num_classes-1 (ignore regions may also say -1:
        class unknown). Never trained as background. Labels on the CPU cost no device sync."""
        for i, t in enumerate(targets):
            for key, low in (("labels", 0), ("ignore_labels", -1)):
                lab = t.get(key)
                if lab is None or len(lab) == 0:
                    continue
                lo, hi = int(lab.min()), int(lab.max())
                if lo < low or hi >= num_classes:
                    bad = lo if lo < low else hi
                    raise ValueError(
                        f"image {i} of the batch (path {t.get('path', '?')}) has {key[:-1].replace('_', ' ')} {bad} "
                        f"outside 0..{num_classes - 1}: the model has {num_classes} classes and labels are 0-based "
                        f"— fix the data (a label equal to the class count is usually a 1-based label) or the "
                        f"number of classes")

    def forward(self, outputs: HeadOutput, targets: list[dict]) -> LossDict:
        """LossDict of a batch; targets: per image "boxes" [N, 4] xyxy, "labels" [N] and
        optionally "ignore_boxes" [M, 4] (crowd / difficult regions, see minidet.assigners)."""
        device = outputs.cls_logits.device
        if len(targets) != outputs.cls_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {outputs.cls_logits.shape[0]} images")
        self.check_labels(targets, self.num_classes(outputs))
        # Host-to-device copies without a stream sync (a blocking copy waits for the device);
        # CPU sources are staged by the driver, so the CPU tensors may be freed at once.
        boxes = [t["boxes"].to(device=device, dtype=torch.float32, non_blocking=True) for t in targets]
        labels = [t["labels"].to(device, non_blocking=True) for t in targets]
        gt_boxes, gt_labels, gt_valid = pad_gts(boxes, labels)
        ignore = None
        if any(len(t.get("ignore_boxes", ())) for t in targets):
            ig = [t.get("ignore_boxes", torch.zeros(0, 4)).to(device=device, dtype=torch.float32).reshape(-1, 4)
                  for t in targets]
            ig_boxes, _, ig_valid = pad_gts(ig, [torch.zeros(len(x), dtype=torch.int64) for x in ig])
            ignore = (ig_boxes, ig_valid)
        self._ignore = ignore
        try:
            with torch.autocast(device.type, enabled=False):
                raw, weighting_input, num_pos, extras = self.components(outputs, gt_boxes, gt_labels, gt_valid)
                # decided on the device: no host sync (see minidet.weighting)
                weighted = self.weighting(weighting_input, record=num_pos > 0)
        finally:
            self._ignore = None
        out: LossDict = {"loss": sum(weighted.values())}
        out.update({k: v.detach() for k, v in {**weighting_input, **raw}.items()})
        weights = self.weighting.weight_tensors()  # floats or device tensors: no host sync
        for k, v in weighted.items():
            out[f"{k}_weighted"] = v.detach()
            w = weights.get(k, 1.0)
            out[f"weight_{k}"] = (w.detach().float() if isinstance(w, Tensor)
                                  else torch.full((), w, dtype=torch.float32, device=device))
        out["num_pos"] = num_pos.detach().float()
        out.update(extras)
        return out

    def components(self, outputs: HeadOutput, gt_boxes: Tensor, gt_labels: Tensor,
                   gt_valid: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """-> (raw components to log, components the weighting sees, #positives, extra logs)."""
        raise NotImplementedError

    def assign(self, outputs: HeadOutput, gt_boxes, gt_labels, gt_valid, **kwargs) -> AssignResult:
        """The assigner's result for the batch, with the batch's ignore regions applied."""
        return self.assigner.assign_batch(outputs.priors, outputs.num_per_level, gt_boxes, gt_labels,
                                          gt_valid, ignore=getattr(self, "_ignore", None), **kwargs)

    def positive_normaliser(self, num_pos: Tensor) -> Tensor:
        """#positives in the batch as a float >= 1 (EMA if configured). With ``sync_normalizer``
        set and torch.distributed initialised, the mean over processes (an all_reduce that every
        process must take part in); otherwise this process's count, without communication."""
        n = num_pos.detach().float()
        if self.sync_normalizer and dist.is_available() and dist.is_initialized():
            n = n.clone()
            dist.all_reduce(n)
            n = n / dist.get_world_size()
        if self.normalizer_momentum is not None:
            if self.training:
                m = self.normalizer_momentum
                self.normalizer.mul_(m).add_((1 - m) * n.to(self.normalizer.device))
            return self.normalizer.clamp(min=1.0)
        return n.clamp(min=1.0)

    def diagnose(self, logits: Tensor, assigned: AssignResult, scores: Tensor | None, ious: Tensor | None,
                 negative_entries: Tensor, positive_entries: Tensor) -> dict[str, Tensor]:
        """Diagnostics of one step (empty unless enabled)."""
        if not self.diagnostics_enabled:
            return {}
        out = {"pos_per_image": assigned.positive.sum(1).float().mean()}
        if scores is not None and ious is not None:
            out["score_iou_pearson"] = torch.tensor(pearson(scores, ious))
            out["score_iou_spearman"] = torch.tensor(spearman(scores, ious))
        if logits.requires_grad:
            grad_ratio_hook(logits, positive_entries, negative_entries, self.diagnostics)
        return out

    def regression(self, name: str, fn, coder, priors: Tensor, pred: Tensor, gt: Tensor,
                   weight: Tensor | None = None, **kwargs) -> Tensor:
        """Summed regression loss: on encoded offsets or on decoded boxes. ``weight`` (one per
        box, e.g. the positive mask of ``_masked_parts``) multiplies each box's loss."""
        if name in OFFSET_LOSSES:
            w = None if weight is None else weight[..., None]  # the same for the 4 offsets
            return fn(pred, coder.encode(priors, gt), weight=w, reduction="sum", **kwargs)
        return fn(coder.decode(priors, pred), gt, weight=weight, reduction="sum")

    def positive_regression(self, name: str, fn, coder, outputs: HeadOutput, assigned: AssignResult,
                            gt_boxes: Tensor, **kwargs) -> Tensor:
        """Summed regression loss of the positives, in one of two forms (``use_device_path``, as
        the other hot paths in minidet.boxes): on an accelerator every prior is computed with the
        positive mask as weights (``_masked_parts``: no host sync, no data-dependent shape); on
        the CPU, where gathering costs no device sync, only the positives are gathered and
        computed (about 5-10x less work for the regression). Equal up to float summation order;
        the gradients are the same. Keeps the graph when there are no positives."""
        if use_device_path(outputs.box_regression.device):
            return self.regression(name, fn, coder, *_masked_parts(outputs, assigned, gt_boxes), **kwargs)
        pred, priors, gt = _positive_parts(outputs, assigned, gt_boxes)
        return self.regression(name, fn, coder, priors, pred, gt, **kwargs)


def _masked_parts(outputs: HeadOutput, assigned: AssignResult, gt_boxes: Tensor):
    """Priors, predictions and matched gt boxes [B, A, 4] of every prior, plus the positive mask
    [B, A] as float weights: the regression loss of the positives without gathering them (a
    boolean-mask gather has a data-dependent size, i.e. a host sync, and its backward another).

    Every prior's loss is computed and multiplied by its weight; the sum equals the sum over
    the positives (up to float summation order). The other priors see stand-ins whose loss is
    finite (the prior itself as gt box, zero offsets as prediction), so they add exact zeros,
    and ``torch.where`` gives their predictions an exact zero gradient whatever their values."""
    pos = assigned.positive
    b, a = pos.shape
    mask = pos[..., None]
    priors = outputs.priors.float().expand(b, a, 4)
    pred = outputs.box_regression.float()
    pred = torch.where(mask, pred, 0.0)
    gt = torch.where(mask, assigned.matched_boxes(gt_boxes), priors)
    return priors, pred, gt, pos.to(pred.dtype)


def _positive_parts(outputs: HeadOutput, assigned: AssignResult, gt_boxes: Tensor):
    """Predictions [P, 4], priors [P, 4] and matched gt boxes [P, 4] of the positives, in flat
    (image, prior) order. On an accelerator one host sync (the nonzero of the positives: P is
    data-dependent): there it serves only aLRP (one localisation error per positive) and the
    diagnostics; the regression losses take ``_masked_parts``. Backward: an index_add, no sync."""
    pos = assigned.positive
    b, a = pos.shape
    idx = pos.reshape(-1).nonzero().squeeze(1)
    pred = outputs.box_regression.float().reshape(b * a, 4).index_select(0, idx)
    priors = outputs.priors.float().index_select(0, idx % a)
    gt = assigned.matched_boxes(gt_boxes).reshape(b * a, 4).index_select(0, idx)
    return pred, priors, gt


def _one_hot_targets(assigned: AssignResult, num_classes: int, dtype=torch.float32) -> Tensor:
    """[B, A, C]: 1 at the class of each positive, 0 elsewhere (a scatter: no host sync)."""
    target = torch.zeros(*assigned.gt_inds.shape, num_classes, dtype=dtype, device=assigned.gt_inds.device)
    pos = assigned.positive
    return target.scatter_(-1, assigned.labels.clamp(min=0)[..., None], pos[..., None].to(dtype))


class DenseCriterion(Criterion):
    """RetinaNet-style: a sigmoid classification loss over all non-ignored priors, summed and
    divided by the number of positives, plus a regression loss on the positives (on encoded
    offsets for l1 / l2 / smooth_l1, on decoded boxes for the IoU family), same normaliser."""

    head_kind = "sigmoid head"
    CLS_CHOICES = ("focal", "bce", "yolo_sse")

    def __init__(self, assigner=None, cls_loss: str = "focal", reg_loss: str = "l1", coder=None,
                 weighting: LossWeighting | None = None, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 smooth_l1_beta: float = 1.0 / 9, normalizer_momentum: float | None = None,
                 diagnostics: bool = False) -> None:
        super().__init__(assigner or MaxIoUAssigner(), weighting, normalizer_momentum, diagnostics)
        _choose("classification", cls_loss, self.CLS_CHOICES, self.head_kind)
        _choose("regression", reg_loss, tuple(REGRESSION_LOSSES), self.head_kind)
        self.cls_name, self.reg_name = cls_loss, reg_loss
        self.coder = coder or DeltaXYWHCoder()
        self.cls_kwargs = {"alpha": focal_alpha, "gamma": focal_gamma} if cls_loss == "focal" else {}
        self.reg_kwargs = {"beta": smooth_l1_beta} if reg_loss == "smooth_l1" else {}

    def _cls_sum(self, logits: Tensor, assigned: AssignResult, valid: Tensor) -> Tensor:
        """Summed classification loss over the non-ignored priors; logits [B, A, C]."""
        c = logits.shape[-1]
        if self.cls_name == "yolo_sse":
            target = _one_hot_targets(assigned, c)
            return CLASSIFICATION_LOSSES["yolo_sse"](torch.sigmoid(logits), target, weight=valid[..., None].float(),
                                                     reduction="sum")
        alpha, gamma = (self.cls_kwargs["alpha"], self.cls_kwargs["gamma"]) if self.cls_name == "focal" else (-1.0, 0.0)
        return sigmoid_focal_loss_from_labels(logits.reshape(-1, c), assigned.labels.reshape(-1), alpha, gamma,
                                              weight=valid.reshape(-1).float())

    def components(self, outputs, gt_boxes, gt_labels, gt_valid):
        assigned = self.assign(outputs, gt_boxes, gt_labels, gt_valid)
        logits = outputs.cls_logits.float()
        pos, valid = assigned.positive, ~assigned.ignored
        num_pos = pos.sum()
        norm = self.positive_normaliser(num_pos)
        cls = self._cls_sum(logits, assigned, valid) / norm
        fn = REGRESSION_LOSSES[self.reg_name]
        reg = self.positive_regression(self.reg_name, fn, self.coder, outputs, assigned, gt_boxes,
                                       **self.reg_kwargs) / norm
        extras = {}
        if self.diagnostics_enabled:
            pred, priors, gt = _positive_parts(outputs, assigned, gt_boxes)  # diagnostics may sync
            with torch.no_grad():
                scores = torch.sigmoid(logits[pos].gather(1, assigned.labels[pos][:, None])).squeeze(1)
                ious = aligned_box_iou(self.coder.decode(priors, pred), gt)
            target = _one_hot_targets(assigned, logits.shape[-1])
            neg_entries = valid[..., None] & (target == 0)
            extras = self.diagnose(outputs.cls_logits, assigned, scores, ious, neg_entries, target == 1)
        raw = {"cls": cls, "reg": reg}
        return raw, raw, num_pos, extras


class SSDCriterion(Criterion):
    """SSD: softmax classification over C + 1 classes (background last) on the positives and
    the hardest negatives (at most ``neg_pos_ratio`` per positive, per image, ranked by their
    loss), plus Smooth L1 (beta 1) on SSD-encoded offsets; both divided by #positives.
    ``neg_pos_ratio=None`` turns mining off: every negative takes part."""

    head_kind = "softmax head"
    CLS_CHOICES = ("ce", "softmax_focal", "hinge")

    def num_classes(self, outputs: HeadOutput) -> int:
        return outputs.cls_logits.shape[-1] - 1  # the last logit is background

    def __init__(self, assigner=None, cls_loss: str = "ce", reg_loss: str = "smooth_l1", coder=None,
                 weighting: LossWeighting | None = None, neg_pos_ratio: float | None = 3.0,
                 smooth_l1_beta: float = 1.0, normalizer_momentum: float | None = None,
                 diagnostics: bool = False) -> None:
        super().__init__(assigner or SSDMatcher(), weighting, normalizer_momentum, diagnostics)
        _choose("classification", cls_loss, self.CLS_CHOICES, self.head_kind)
        _choose("regression", reg_loss, tuple(REGRESSION_LOSSES), self.head_kind)
        self.cls_name, self.reg_name = cls_loss, reg_loss
        self.coder = coder or SSDCoder()
        self.neg_pos_ratio = neg_pos_ratio
        self.reg_kwargs = {"beta": smooth_l1_beta} if reg_loss == "smooth_l1" else {}

    def components(self, outputs, gt_boxes, gt_labels, gt_valid):
        assigned = self.assign(outputs, gt_boxes, gt_labels, gt_valid)
        logits = outputs.cls_logits.float()
        b, a, c1 = logits.shape
        pos, negative = assigned.positive, assigned.gt_inds == 0
        num_pos = pos.sum()
        norm = self.positive_normaliser(num_pos)
        cls_target = torch.where(pos, assigned.labels, torch.full_like(assigned.labels, c1 - 1))
        per_prior = CLASSIFICATION_LOSSES[self.cls_name](
            logits.reshape(-1, c1), cls_target.reshape(-1), reduction="none").view(b, a)
        if self.neg_pos_ratio is None:  # no mining: every negative counts (e.g. with softmax_focal)
            hard_neg = negative
        else:
            hard_neg = hard_negative_mask(per_prior.detach(), pos, negative, self.neg_pos_ratio)
        cls = (per_prior * (pos | hard_neg)).sum() / norm
        fn = REGRESSION_LOSSES[self.reg_name]
        reg = self.positive_regression(self.reg_name, fn, self.coder, outputs, assigned, gt_boxes,
                                       **self.reg_kwargs) / norm
        extras = {}
        if self.diagnostics_enabled:
            pred, priors, gt = _positive_parts(outputs, assigned, gt_boxes)  # diagnostics may sync
            with torch.no_grad():
                probs = torch.softmax(logits[pos], dim=-1)
                scores = probs.gather(1, assigned.labels[pos][:, None]).squeeze(1)
                ious = aligned_box_iou(self.coder.decode(priors, pred), gt)
            entries_pos = torch.zeros_like(logits, dtype=torch.bool)
            entries_pos[pos] = F.one_hot(assigned.labels[pos], c1).bool()
            entries_neg = torch.zeros_like(entries_pos)
            entries_neg[..., -1] = hard_neg
            extras = self.diagnose(outputs.cls_logits, assigned, scores, ious, entries_neg, entries_pos)
        extras["hard_negatives"] = hard_neg.sum().float()
        raw = {"cls": cls, "reg": reg}
        return raw, raw, num_pos, extras


class YOLOCriterion(Criterion):
    """YOLO v1's five-part loss, each part a sum of squares divided by the batch size:
    lambda_coord * [(x, y) + (sqrt w, sqrt h) errors of responsible predictors] + confidence
    error of responsible predictors (target: IoU of the predicted box with its gt) +
    lambda_noobj * confidence of the other predictors (except those inside an ignore region) +
    class-probability error of cells
    with an object. Logged as coord / obj / noobj / cls; the weighting sees
    cls = obj + lambda_noobj noobj + class term and reg = lambda_coord coord.

    ``box_regression`` is read in YOLOCellCoder space (x, y in the cell, sqrt w, sqrt h of the
    image); ``objectness`` are logits (sigmoid -> confidence); class logits are shared by the
    predictors of a cell (the first is read) and turned into probabilities with a softmax for
    the sum-squared class term, or trained with "focal" / "ce" instead.
    """

    head_kind = "YOLO head"
    CLS_CHOICES = ("yolo_sse", "focal", "ce")

    def __init__(self, boxes_per_cell: int = 2, cls_loss: str = "yolo_sse", reg_loss: str = "l2",
                 lambda_coord: float = 5.0, lambda_noobj: float = 0.5, coder=None,
                 weighting: LossWeighting | None = None, diagnostics: bool = False,
                 ignore_iof_thr: float | None = 0.5) -> None:
        super().__init__(YOLOGridAssigner(boxes_per_cell, ignore_iof_thr=ignore_iof_thr), weighting, None,
                         diagnostics)
        _choose("classification", cls_loss, self.CLS_CHOICES, self.head_kind)
        _choose("regression", reg_loss, tuple(REGRESSION_LOSSES), self.head_kind)
        self.cls_name, self.reg_name = cls_loss, reg_loss
        self.boxes_per_cell = boxes_per_cell
        self.lambda_coord, self.lambda_noobj = lambda_coord, lambda_noobj
        self.coder = coder or YOLOCellCoder(sqrt_wh=True)

    def components(self, outputs, gt_boxes, gt_labels, gt_valid):
        if outputs.objectness is None:
            raise ValueError("YOLOCriterion needs outputs.objectness (the confidence logits)")
        b, a, _ = outputs.box_regression.shape
        k = self.boxes_per_cell
        size = outputs.image_size
        pred = outputs.box_regression.float()
        priors = outputs.priors.float()
        decoded = self.coder.decode(priors, pred, size)
        assigned = self.assign(outputs, gt_boxes, gt_labels, gt_valid, pred_boxes=decoded.detach())
        resp = assigned.positive
        noobj_mask = assigned.gt_inds == 0  # not responsible and not inside an ignore region
        num_pos = resp.sum()
        # Every term is computed over all predictors (cells) with its mask as weights instead of
        # gathering the masked ones (a data-dependent size: a host sync, and another in backward).
        # Outside its mask a term sees finite stand-ins (the predictor's own cell as box, zero
        # predictions / logits / confidences) through torch.where, which also gives the real
        # values there an exact zero gradient: the sums equal the gathered ones up to float
        # summation order.
        m = resp[..., None]
        cells = priors.expand(b, a, 4)
        gt = torch.where(m, assigned.matched_boxes(gt_boxes), cells)
        w = resp.float()
        if self.reg_name in OFFSET_LOSSES:
            target = self.coder.encode(cells, gt, size)
            kw = {"beta": 1.0} if self.reg_name == "smooth_l1" else {}
            coord = REGRESSION_LOSSES[self.reg_name](torch.where(m, pred, 0.0), target, weight=w[..., None],
                                                     reduction="sum", **kw)
        else:
            coord = REGRESSION_LOSSES[self.reg_name](torch.where(m, decoded, cells), gt, weight=w, reduction="sum")
        conf = torch.sigmoid(outputs.objectness.float())
        with torch.no_grad():
            iou_target = torch.where(resp, aligned_box_iou(decoded, gt), 0.0)
        sse = CLASSIFICATION_LOSSES["yolo_sse"]
        obj = sse(torch.where(resp, conf, 0.0), iou_target, weight=w, reduction="sum")
        noobj = sse(torch.where(noobj_mask, conf, 0.0), torch.zeros_like(conf), weight=noobj_mask.float(),
                    reduction="sum")
        cell_logits = outputs.cls_logits.float().view(b, a // k, k, -1)[:, :, 0]
        cell_has = resp.view(b, a // k, k).any(-1)  # [B, cells]
        cell_label = assigned.labels.view(b, a // k, k).max(-1).values  # -1 where no object
        c = cell_logits.shape[-1]
        logits_obj = torch.where(cell_has[..., None], cell_logits, 0.0)
        if self.cls_name in ("yolo_sse", "focal"):
            onehot = F.one_hot(cell_label.clamp(min=0), c).float()
            w_cell = cell_has[..., None].float()
            if self.cls_name == "yolo_sse":
                cls = sse(torch.softmax(logits_obj, -1), onehot, weight=w_cell, reduction="sum")
            else:
                cls = CLASSIFICATION_LOSSES["focal"](logits_obj, onehot, weight=w_cell, reduction="sum")
        else:  # label -1 (no object): ignored, loss 0
            labels_obj = torch.where(cell_has, cell_label, -1)
            cls = CLASSIFICATION_LOSSES["ce"](logits_obj.reshape(-1, c), labels_obj.reshape(-1), reduction="sum")
        coord, obj, noobj, cls = (x / b for x in (coord, obj, noobj, cls))
        raw = {"coord": coord, "obj": obj, "noobj": noobj, "class": cls}
        grouped = {"cls": obj + self.lambda_noobj * noobj + cls, "reg": self.lambda_coord * coord}
        extras = {}
        if self.diagnostics_enabled:
            extras = self.diagnose(outputs.objectness, assigned, conf[resp].detach(), iou_target[resp],
                                   noobj_mask, resp)
        return raw, grouped, num_pos, extras


class RankingCriterion(Criterion):
    """Ranking-based classification over the whole batch (minidet.losses.ranking):

    - ``loss="ap"``: AP Loss + Smooth L1 (beta 1) on the positives' encoded offsets averaged
      over 4 P elements (as the AP Loss paper); fixed weights by default.
    - ``loss="alrp"``: aLRP Loss, whose localisation errors are 1 - GIoU (``alrp_iou="giou"``)
      or 2 (1 - IoU) (``"iou"``) of the positives' decoded boxes; the weighting defaults to
      SelfBalance (SB on the localisation component). ``alrp`` in the LossDict is the
      reported aLRP value cls + loc.
    Ignored priors take no part; all classes of a positive other than its own are negatives.
    """

    head_kind = "sigmoid head"

    def __init__(self, assigner=None, loss: str = "alrp", reg_loss: str = "smooth_l1", coder=None,
                 weighting: LossWeighting | None = None, delta: float = 1.0, alrp_iou: str = "giou",
                 diagnostics: bool = False) -> None:
        _choose("ranking", loss, ("ap", "alrp"), self.head_kind)
        if loss == "alrp" and alrp_iou not in ("giou", "iou"):
            raise ValueError(f"alrp_iou must be 'giou' or 'iou', got {alrp_iou!r}")
        if weighting is None:
            weighting = SelfBalance() if loss == "alrp" else FixedWeights()
        super().__init__(assigner or MaxIoUAssigner(), weighting, None, diagnostics)
        if loss == "ap":
            _choose("regression", reg_loss, tuple(REGRESSION_LOSSES), self.head_kind)
        self.loss_name, self.reg_name, self.delta, self.alrp_iou = loss, reg_loss, delta, alrp_iou
        self.coder = coder or DeltaXYWHCoder()

    def components(self, outputs, gt_boxes, gt_labels, gt_valid):
        assigned = self.assign(outputs, gt_boxes, gt_labels, gt_valid)
        logits = outputs.cls_logits.float()
        pos = assigned.positive
        num_pos = pos.sum()
        targets = _one_hot_targets(assigned, logits.shape[-1], dtype=torch.int8)
        targets.masked_fill_(assigned.ignored[..., None], -1)
        extras: dict[str, Tensor] = {}
        if self.loss_name == "ap":
            cls = ap_loss(logits, targets, self.delta)
            fn = REGRESSION_LOSSES[self.reg_name]
            kw = {"beta": 1.0} if self.reg_name == "smooth_l1" else {}
            reg = self.positive_regression(self.reg_name, fn, self.coder, outputs, assigned, gt_boxes, **kw)
            reg = reg / (4 * num_pos.clamp(min=1))
        else:
            # aLRP takes one localisation error per positive ([P], flat order), so the positives
            # are gathered here: one host sync (alrp_loss needs the count P itself as well)
            pred, priors, gt = _positive_parts(outputs, assigned, gt_boxes)
            keep_graph = outputs.box_regression.sum() * 0
            decoded = self.coder.decode(priors, pred)
            if self.alrp_iou == "giou":
                loc_errors = 1 - aligned_generalized_box_iou(decoded, gt)
            else:
                loc_errors = 2 * (1 - aligned_box_iou(decoded, gt))
            cls, reg = alrp_loss(logits, targets, loc_errors, self.delta)
            reg = reg + keep_graph
            extras["alrp"] = (cls + reg).detach()
        if self.diagnostics_enabled:
            pred, priors, gt = _positive_parts(outputs, assigned, gt_boxes)  # diagnostics may sync
            with torch.no_grad():
                scores = torch.sigmoid(logits[pos].gather(1, assigned.labels[pos][:, None])).squeeze(1)
                ious = aligned_box_iou(self.coder.decode(priors, pred), gt)
            extras.update(self.diagnose(outputs.cls_logits, assigned, scores, ious, targets == 0, targets == 1))
        raw = {"cls": cls, "reg": reg}
        return raw, raw, num_pos, extras
