"""The Criterion: one interface through which every head trains.

``criterion(outputs: HeadOutput, targets: list[dict]) -> dict[str, Tensor]``. ``Criterion.forward``
runs one skeleton: pad the gts -> assign (minidet.assigners) -> positives -> normaliser -> loss
terms -> weighting (minidet.weighting) -> diagnostics. Families differ only by their terms:
``SigmoidClassification``, ``SoftmaxClassification`` (with SSD's hard negative mining),
``YOLOConfidence``, ``RankingLoss`` (AP / aLRP, classification and localisation together) and
``BoxRegression`` (a loss of minidet.losses.REGRESSION_LOSSES by name, with the head's coder).

The dict holds ``loss`` (the sum of the weighted components, the only tensor with a graph), the
raw components (``cls``, ``reg`` and family-specific parts) detached, ``<name>_weighted`` and
``weight_<name>`` per component, ``num_pos`` and, with ``diagnostics=True``, positives per image
and the score / IoU correlations of the positives (``self.diagnostics`` gets the negative /
positive gradient ratio after backward). Losses are computed in float32 even under autocast.
Classification sums are divided by the number of positives in the batch (at least 1; optionally
an EMA of it, as detectron2 does), averaged across processes only while ``sync_normalizer`` is
True (``with criterion.normalizer_synced():``, as the Trainer's DDP training forward runs), so
that DDP's mean of the per-process gradients is the gradient of the whole batch's loss; a loss
computed by one process alone never waits for the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .assigners import AssignResult, MaxIoUAssigner, SSDMatcher, YOLOGridAssigner, pad_gts
from .boxes import aligned_box_iou, aligned_generalized_box_iou, use_device_path
from .coders import DeltaXYWHCoder, SSDCoder, YOLOCellCoder
from .diagnostics import grad_ratio_hook, pearson, spearman
from .hard_negatives import hard_negative_mask
from .losses import RANKING_LOSSES, REGRESSION_LOSSES, classification_loss, table_entry, yolo_sse
from .structures import HeadOutput
from .weighting import WEIGHTINGS, FixedWeights, LossWeighting

__all__ = ["Criterion", "DenseCriterion", "SSDCriterion", "YOLOCriterion", "RankingCriterion", "LossInputs",
           "TermResult", "BoxRegression", "SigmoidClassification", "SoftmaxClassification", "YOLOConfidence",
           "RankingLoss"]


@dataclass
class LossInputs:
    """One batch as every term sees it: the head's outputs, padded gts [B, G, 4] and the assignment."""

    outputs: HeadOutput
    gt_boxes: Tensor
    assigned: AssignResult
    normalise: Callable[[Tensor], Tensor]  # Criterion.positive_normaliser
    diagnostics: bool = False

    @cached_property
    def num_pos(self) -> Tensor:  # 0-dim int64 on the device
        return self.assigned.positive.sum()

    @cached_property
    def normalizer(self) -> Tensor:
        """#positives as a float >= 1 (EMA / DDP mean, see Criterion), computed once on first use:
        families that do not divide by it never update the EMA nor communicate."""
        return self.normalise(self.num_pos)


class Scored(NamedTuple):
    """A classification term's view for the diagnostics: ``logits`` (the tensor whose gradient
    ratio is measured), bool masks like it of its positive / negative entries, and the
    classification score of every positive [P] (flat (image, prior) order)."""

    logits: Tensor
    positive: Tensor
    negative: Tensor
    scores: Tensor


class TermResult(NamedTuple):
    """What a term gives: ``losses`` the weighting sees ("cls" / "reg"), ``logs`` reported beside
    them, and with diagnostics on its ``scored`` entries and / or the IoUs of the positives [P]."""

    losses: dict[str, Tensor]
    logs: dict[str, Tensor] = {}
    scored: Scored | None = None
    positive_ious: Tensor | None = None


class Criterion(nn.Module):
    """The skeleton every family runs; a family is its assigner and its loss terms (each a
    callable ``LossInputs -> TermResult``)."""

    sync_normalizer: bool = False  # the Trainer's DDP steps: average #positives over processes
    background_logit: bool = False  # softmax heads: the last logit is background

    def __init__(self, *, assigner, terms: Sequence[Callable[[LossInputs], TermResult]],
                 weighting: LossWeighting | None = None, normalizer_momentum: float | None = None,
                 diagnostics: bool = False) -> None:
        super().__init__()
        self.assigner = assigner
        self.terms = list(terms)
        self.weighting = weighting if weighting is not None else FixedWeights()
        self.normalizer_momentum = normalizer_momentum
        self.register_buffer("normalizer", torch.tensor(100.0))
        self.diagnostics_enabled = diagnostics
        self.diagnostics: dict[str, float] = {}

    @contextmanager
    def normalizer_synced(self, enabled: bool = True) -> Iterator[None]:
        """``sync_normalizer`` set to ``enabled`` inside the block and restored after it."""
        previous, self.sync_normalizer = self.sync_normalizer, enabled
        try:
            yield
        finally:
            self.sync_normalizer = previous

    def num_classes(self, outputs: HeadOutput) -> int:
        """Foreground classes of the head's outputs."""
        return outputs.cls_logits.shape[-1] - int(self.background_logit)

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

    def forward(self, outputs: HeadOutput, targets: list[dict]) -> dict[str, Tensor]:
        """Loss dict of a batch; targets: per image "boxes" [N, 4] xyxy, "labels" [N] and
        optionally "ignore_boxes" [M, 4] (crowd / difficult regions, see minidet.assigners)."""
        device = outputs.cls_logits.device
        if len(targets) != outputs.cls_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {outputs.cls_logits.shape[0]} images")
        self.check_labels(targets, self.num_classes(outputs))
        gt_boxes, gt_labels, gt_valid, ignore = _pad_targets(targets, device)
        with torch.autocast(device.type, enabled=False):
            assigned = self.assign(outputs, gt_boxes, gt_labels, gt_valid, ignore)
            batch = LossInputs(outputs, gt_boxes, assigned, self.positive_normaliser, self.diagnostics_enabled)
            results = [term(batch) for term in self.terms]
            components = {k: v for r in results for k, v in r.losses.items()}
            # decided on the device: no host sync (see minidet.weighting)
            weighted = self.weighting(components, record=batch.num_pos > 0)
        out = {"loss": sum(weighted.values())}
        logged = {k: v for r in results for k, v in r.logs.items()}
        out.update({k: v.detach() for k, v in {**components, **logged}.items()})
        weights = self.weighting.weight_tensors()  # floats or device tensors: no host sync
        for k, v in weighted.items():
            out[f"{k}_weighted"] = v.detach()
            w = weights.get(k, 1.0)
            out[f"weight_{k}"] = (w.detach().float() if isinstance(w, Tensor)
                                  else torch.full((), w, dtype=torch.float32, device=device))
        out["num_pos"] = batch.num_pos.detach().float()
        if self.diagnostics_enabled:
            out.update(self._diagnose(assigned, results))
        return out

    def assign(self, outputs: HeadOutput, gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor,
               ignore: tuple[Tensor, Tensor] | None) -> AssignResult:
        """The assigner's result for the batch [B, A], with its ignore regions applied."""
        return self.assigner.assign_batch(outputs.priors, outputs.num_per_level, gt_boxes, gt_labels, gt_valid,
                                          ignore=ignore)

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

    def _diagnose(self, assigned: AssignResult, results: list[TermResult]) -> dict[str, Tensor]:
        """Positives per image, score / IoU correlations of the positives, and the gradient-ratio
        hook (written into ``self.diagnostics`` during backward). May sync."""
        scored = next(r.scored for r in results if r.scored is not None)
        ious = next(r.positive_ious for r in results if r.positive_ious is not None)
        if scored.logits.requires_grad:
            grad_ratio_hook(scored.logits, scored.positive, scored.negative, self.diagnostics)
        return {"pos_per_image": assigned.positive.sum(1).float().mean(),
                "score_iou_pearson": torch.tensor(pearson(scored.scores, ious)),
                "score_iou_spearman": torch.tensor(spearman(scored.scores, ious))}


def _pad_targets(targets: list[dict], device: torch.device):
    """(gt boxes [B, G, 4], labels [B, G], valid [B, G], ignore regions (boxes [B, M, 4], valid
    [B, M]) or None) on ``device``."""
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
    return gt_boxes, gt_labels, gt_valid, ignore


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
    diagnostics; the regression losses take ``_masked_parts``. Backward: an index_add, no sync.
    With no positives the (empty) results still hang on the predictions' graph."""
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


def _sigmoid_scored(outputs: HeadOutput, assigned: AssignResult) -> Scored:
    """Diagnostics of a sigmoid head: sigmoid score of each positive's class; the entries of the
    non-ignored priors split by their one-hot target."""
    pos, labels = assigned.positive, assigned.labels
    with torch.no_grad():
        scores = torch.sigmoid(outputs.cls_logits.float()[pos].gather(1, labels[pos][:, None])).squeeze(1)
    target = _one_hot_targets(assigned, outputs.cls_logits.shape[-1])
    return Scored(outputs.cls_logits, target == 1, ~assigned.ignored[..., None] & (target == 0), scores)


class BoxRegression:
    """"reg": the regression loss ``loss`` (a name in REGRESSION_LOSSES) of the positives, summed
    and divided by the normaliser. Offset losses compare the coder's encoding of the gt boxes with
    the predictions, box losses the decoded predictions [.., 4] xyxy with the gt boxes."""

    def __init__(self, loss: str, coder, *, beta: float = 1.0) -> None:
        self.name, self.coder, self.entry = loss, coder, table_entry(REGRESSION_LOSSES, "regression", loss)
        self.kwargs = {k: {"beta": beta}[k] for k in self.entry.options}  # Smooth L1's beta

    def decode(self, outputs: HeadOutput, priors: Tensor, pred: Tensor) -> Tensor:
        return self.coder.decode(priors, pred, outputs.image_size)

    def total(self, batch: LossInputs) -> Tensor:
        """Summed loss of the positives, in one of two forms (``use_device_path``, as the other
        hot paths in minidet.boxes): on an accelerator every prior is computed with the positive
        mask as weights (``_masked_parts``: no host sync, no data-dependent shape); on the CPU,
        where gathering costs no device sync, only the positives are gathered and computed
        (about 5-10x less work). Equal up to float summation order; the same gradients."""
        outputs = batch.outputs
        fn, on_offsets = self.entry.fn, self.entry.on_offsets
        weight = None
        if use_device_path(outputs.box_regression.device):
            priors, pred, gt, weight = _masked_parts(outputs, batch.assigned, batch.gt_boxes)
        else:
            pred, priors, gt = _positive_parts(outputs, batch.assigned, batch.gt_boxes)
        if on_offsets:
            w = None if weight is None else weight[..., None]  # the same for the 4 offsets
            target = self.coder.encode(priors, gt, outputs.image_size)
            return fn(pred, target, weight=w, reduction="sum", **self.kwargs)
        boxes = self.decode(outputs, priors, pred)
        if weight is not None:  # a zero offset need not decode to its prior (YOLO's cells)
            boxes = torch.where(weight[..., None] > 0, boxes, priors)
        return fn(boxes, gt, weight=weight, reduction="sum")

    def positive_ious(self, batch: LossInputs) -> Tensor:
        """IoU [P] of each positive's decoded box with its gt (diagnostics: may sync)."""
        pred, priors, gt = _positive_parts(batch.outputs, batch.assigned, batch.gt_boxes)
        with torch.no_grad():
            return aligned_box_iou(self.decode(batch.outputs, priors, pred), gt)

    def __call__(self, batch: LossInputs) -> TermResult:
        ious = self.positive_ious(batch) if batch.diagnostics else None
        return TermResult({"reg": self.total(batch) / batch.normalizer}, positive_ious=ious)


class SigmoidClassification:
    """"cls": a sigmoid classification loss (a CLASSIFICATION_LOSSES entry for "sigmoid" heads)
    over every class of the non-ignored priors (logits [B, A, C]), summed and divided by the
    normaliser. An entry's fused form from labels is taken when it has one (focal, bce: no
    [B, A, C] target); otherwise its function sees one-hot targets and the logits, or the sigmoid
    probabilities (yolo_sse)."""

    def __init__(self, loss: str = "focal", *, alpha: float = 0.25, gamma: float = 2.0) -> None:
        self.name, self.entry = loss, classification_loss(loss, "sigmoid", "sigmoid head")
        self.kwargs = {k: {"alpha": alpha, "gamma": gamma}[k] for k in self.entry.options}

    def __call__(self, batch: LossInputs) -> TermResult:
        logits, assigned = batch.outputs.cls_logits.float(), batch.assigned
        valid, c = ~assigned.ignored, logits.shape[-1]
        if self.entry.from_labels is not None:
            total = self.entry.from_labels(logits.reshape(-1, c), assigned.labels.reshape(-1),
                                           weight=valid.reshape(-1).float(), **self.kwargs)
        else:
            scores = torch.sigmoid(logits) if self.entry.probabilities else logits
            total = self.entry.fn(scores, _one_hot_targets(assigned, c), weight=valid[..., None].float(),
                                  reduction="sum", **self.kwargs)
        scored = _sigmoid_scored(batch.outputs, assigned) if batch.diagnostics else None
        return TermResult({"cls": total / batch.normalizer}, scored=scored)


class SoftmaxClassification:
    """"cls": a softmax classification loss (a CLASSIFICATION_LOSSES entry for "softmax" heads,
    called with labels) over C + 1 logits (background last) on the positives and the hard negatives — at most ``neg_pos_ratio`` per positive, per image, ranked by their
    loss (SSD) — or on every negative (``neg_pos_ratio=None``); summed and divided by the
    normaliser. Logs ``hard_negatives``, the negatives that took part."""

    def __init__(self, loss: str = "ce", *, neg_pos_ratio: float | None = 3.0) -> None:
        self.name, self.neg_pos_ratio = loss, neg_pos_ratio
        self.entry = classification_loss(loss, "softmax", "softmax head")

    def __call__(self, batch: LossInputs) -> TermResult:
        logits, assigned = batch.outputs.cls_logits.float(), batch.assigned
        b, a, c1 = logits.shape
        pos, negative = assigned.positive, assigned.gt_inds == 0
        target = torch.where(pos, assigned.labels, torch.full_like(assigned.labels, c1 - 1))
        per_prior = self.entry.fn(logits.reshape(-1, c1), target.reshape(-1), reduction="none").view(b, a)
        if self.neg_pos_ratio is None:  # no mining: every negative counts (e.g. with softmax_focal)
            hard_neg = negative
        else:
            hard_neg = hard_negative_mask(per_prior.detach(), pos, negative, self.neg_pos_ratio)
        cls = (per_prior * (pos | hard_neg)).sum() / batch.normalizer
        scored = None
        if batch.diagnostics:
            with torch.no_grad():
                scores = torch.softmax(logits[pos], dim=-1).gather(1, assigned.labels[pos][:, None]).squeeze(1)
            positive = torch.zeros_like(logits, dtype=torch.bool)
            positive[pos] = F.one_hot(assigned.labels[pos], c1).bool()
            negative_entries = torch.zeros_like(positive)
            negative_entries[..., -1] = hard_neg
            scored = Scored(batch.outputs.cls_logits, positive, negative_entries, scores)
        return TermResult({"cls": cls}, {"hard_negatives": hard_neg.sum().float()}, scored)


class YOLOConfidence:
    """"cls" of YOLO v1: the confidence error of responsible predictors (target: IoU of the
    predicted box, decoded by the assignment, with its gt) + ``lambda_noobj`` x the confidence of the other predictors
    (except those inside an ignore region) + the class-probability error of cells with an object,
    each a sum of squares divided by the batch size; logged as obj / noobj / class.

    ``objectness`` are logits (sigmoid -> confidence); class logits are read per cell and turned
    into probabilities with a softmax for the sum-squared class term; another CLASSIFICATION_LOSSES
    entry for "yolo" heads sees the cells' labels, logits or softmax probabilities as it asks."""

    def __init__(self, loss: str = "yolo_sse", *, boxes_per_cell: int, lambda_noobj: float = 0.5) -> None:
        self.entry = classification_loss(loss, "yolo", "YOLO head")
        self.name, self.boxes_per_cell, self.lambda_noobj = loss, boxes_per_cell, lambda_noobj

    def cell_class_logits(self, outputs: HeadOutput) -> Tensor:
        """Class logits [B, cells, C] of each cell (the head's layout; given per predictor, the first is read)."""
        b, a, _ = outputs.box_regression.shape
        k = self.boxes_per_cell
        return outputs.cls_logits.float().unflatten(1, (a // k, -1))[:, :, 0]

    def __call__(self, batch: LossInputs) -> TermResult:
        outputs, assigned, sse = batch.outputs, batch.assigned, yolo_sse
        b, a, _ = outputs.box_regression.shape
        k = self.boxes_per_cell
        resp = assigned.positive
        noobj_mask = assigned.gt_inds == 0  # not responsible and not inside an ignore region
        # Every part is computed over all predictors (cells) with its mask as weights (finite
        # stand-ins elsewhere through torch.where, which also gives the real values there an exact
        # zero gradient) instead of gathering the masked ones: no host sync.
        with torch.no_grad():
            cells = outputs.priors.float().expand(b, a, 4)
            gt = torch.where(resp[..., None], assigned.matched_boxes(batch.gt_boxes), cells)
            iou_target = torch.where(resp, aligned_box_iou(assigned.pred_boxes, gt), 0.0)
        conf = torch.sigmoid(outputs.objectness.float())
        obj = sse(torch.where(resp, conf, 0.0), iou_target, weight=resp.float(), reduction="sum")
        noobj = sse(torch.where(noobj_mask, conf, 0.0), torch.zeros_like(conf), weight=noobj_mask.float(),
                    reduction="sum")
        cell_logits = self.cell_class_logits(outputs)
        cell_has = resp.view(b, a // k, k).any(-1)  # [B, cells]
        cell_label = assigned.labels.view(b, a // k, k).max(-1).values  # -1 where no object
        c = cell_logits.shape[-1]
        logits_obj = torch.where(cell_has[..., None], cell_logits, 0.0)
        if self.entry.target == "labels":  # label -1 (no object): ignored, loss 0
            labels_obj = torch.where(cell_has, cell_label, -1)
            cls = self.entry.fn(logits_obj.reshape(-1, c), labels_obj.reshape(-1), reduction="sum")
        else:
            onehot, w_cell = F.one_hot(cell_label.clamp(min=0), c).float(), cell_has[..., None].float()
            scores = torch.softmax(logits_obj, -1) if self.entry.probabilities else logits_obj
            cls = self.entry.fn(scores, onehot, weight=w_cell, reduction="sum")
        obj, noobj, cls = obj / b, noobj / b, cls / b
        scored = Scored(outputs.objectness, resp, noobj_mask, conf[resp].detach()) if batch.diagnostics else None
        return TermResult({"cls": obj + self.lambda_noobj * noobj + cls}, {"obj": obj, "noobj": noobj, "class": cls},
                          scored)


class YOLOBoxRegression(BoxRegression):
    """"reg" of YOLO v1: ``lambda_coord`` x the regression loss of the responsible predictors in
    YOLOCellCoder space (x, y in the cell, sqrt w, sqrt h of the image) divided by the batch
    size; logged as coord."""

    def __init__(self, loss: str, coder, *, lambda_coord: float = 5.0) -> None:
        super().__init__(loss, coder, beta=1.0)
        self.lambda_coord = lambda_coord

    def __call__(self, batch: LossInputs) -> TermResult:
        coord = self.total(batch) / batch.outputs.box_regression.shape[0]
        ious = self.positive_ious(batch) if batch.diagnostics else None
        return TermResult({"reg": self.lambda_coord * coord}, {"coord": coord}, positive_ious=ious)


class RankingLoss:
    """"cls" and "reg" together, ranking over every entry of the batch (a RANKING_LOSSES entry,
    minidet.losses.ranking):

    - without localisation errors ("ap"): the loss + the box regression of the positives averaged
      over 4 P elements (as the AP Loss paper);
    - with them ("alrp"): the loss of the positives' localisation errors 1 - GIoU
      (``alrp_iou="giou"``) or 2 (1 - IoU) (``"iou"``) of their decoded boxes; logs ``alrp`` =
      cls + reg.
    Ignored priors take no part; all classes of a positive other than its own are negatives."""

    def __init__(self, loss: str = "alrp", *, boxes: BoxRegression, delta: float = 1.0,
                 alrp_iou: str = "giou") -> None:
        self.entry = table_entry(RANKING_LOSSES, "ranking", loss, "sigmoid head")
        if self.entry.loc_errors and alrp_iou not in ("giou", "iou"):
            raise ValueError(f"alrp_iou must be 'giou' or 'iou', got {alrp_iou!r}")
        self.name, self.boxes, self.delta, self.alrp_iou = loss, boxes, delta, alrp_iou

    def __call__(self, batch: LossInputs) -> TermResult:
        outputs, assigned = batch.outputs, batch.assigned
        logits = outputs.cls_logits.float()
        targets = _one_hot_targets(assigned, logits.shape[-1], dtype=torch.int8)
        targets.masked_fill_(assigned.ignored[..., None], -1)
        logs = {}
        if not self.entry.loc_errors:
            cls = self.entry.fn(logits, targets, self.delta)
            reg = self.boxes.total(batch) / (4 * batch.num_pos.clamp(min=1))
        else:
            # aLRP takes one localisation error per positive ([P], flat order), so the positives
            # are gathered here: one host sync (alrp_loss needs the count P itself as well)
            pred, priors, gt = _positive_parts(outputs, assigned, batch.gt_boxes)
            decoded = self.boxes.decode(outputs, priors, pred)
            if self.alrp_iou == "giou":
                loc_errors = 1 - aligned_generalized_box_iou(decoded, gt)
            else:
                loc_errors = 2 * (1 - aligned_box_iou(decoded, gt))
            cls, reg = self.entry.fn(logits, targets, loc_errors, self.delta)
            reg = reg + outputs.box_regression.sum() * 0  # without positives reg would not reach the boxes
            logs[self.name] = (cls + reg).detach()
        if not batch.diagnostics:
            return TermResult({"cls": cls, "reg": reg}, logs)
        return TermResult({"cls": cls, "reg": reg}, logs, _sigmoid_scored(outputs, assigned),
                          self.boxes.positive_ious(batch))


class DenseCriterion(Criterion):
    """A classification term over the priors + ``BoxRegression`` on the positives, both divided by
    the number of positives. By default RetinaNet's: ``SigmoidClassification`` (focal) and L1 on
    delta-encoded offsets (l1 / l2 / smooth_l1 on offsets, the IoU family on decoded boxes)."""

    def __init__(self, assigner=None, *, cls_loss: str = "focal", reg_loss: str = "l1", coder=None,
                 weighting: LossWeighting | None = None, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 smooth_l1_beta: float = 1.0 / 9, normalizer_momentum: float | None = None,
                 diagnostics: bool = False) -> None:
        self._compose(assigner or MaxIoUAssigner(), SigmoidClassification(cls_loss, alpha=focal_alpha, gamma=focal_gamma),
                      BoxRegression(reg_loss, coder or DeltaXYWHCoder(), beta=smooth_l1_beta), weighting,
                      normalizer_momentum, diagnostics)
        self.cls_kwargs = self.terms[0].kwargs

    def _compose(self, assigner, classification, boxes: BoxRegression, weighting: LossWeighting | None,
                 normalizer_momentum: float | None, diagnostics: bool) -> None:
        Criterion.__init__(self, assigner=assigner, terms=[classification, boxes], weighting=weighting,
                           normalizer_momentum=normalizer_momentum, diagnostics=diagnostics)
        self.cls_name, self.reg_name, self.reg_kwargs, self.coder = classification.name, boxes.name, boxes.kwargs, boxes.coder


class SSDCriterion(DenseCriterion):
    """The dense composition with SSD's terms: ``SoftmaxClassification`` over C + 1 logits
    (background last) with 3:1 hard negative mining (``neg_pos_ratio=None``: every negative) and
    Smooth L1 (beta 1) on SSD-encoded offsets."""

    background_logit = True

    def __init__(self, assigner=None, *, cls_loss: str = "ce", reg_loss: str = "smooth_l1", coder=None,
                 weighting: LossWeighting | None = None, neg_pos_ratio: float | None = 3.0,
                 smooth_l1_beta: float = 1.0, normalizer_momentum: float | None = None,
                 diagnostics: bool = False) -> None:
        self._compose(assigner or SSDMatcher(), SoftmaxClassification(cls_loss, neg_pos_ratio=neg_pos_ratio),
                      BoxRegression(reg_loss, coder or SSDCoder(), beta=smooth_l1_beta), weighting,
                      normalizer_momentum, diagnostics)
        self.neg_pos_ratio = neg_pos_ratio


class YOLOCriterion(Criterion):
    """YOLO v1's five-part loss: ``YOLOConfidence`` (obj + lambda_noobj noobj + class, the "cls"
    the weighting sees) and ``YOLOBoxRegression`` (lambda_coord coord, "reg"), each part a sum
    divided by the batch size. Assignment picks the responsible predictor of each gt by the IoU
    of its decoded box."""

    def __init__(self, boxes_per_cell: int = 2, *, assigner=None, cls_loss: str = "yolo_sse", reg_loss: str = "l2",
                 lambda_coord: float = 5.0, lambda_noobj: float = 0.5, coder=None,
                 weighting: LossWeighting | None = None, diagnostics: bool = False,
                 ignore_iof_thr: float | None = 0.5) -> None:
        boxes = YOLOBoxRegression(reg_loss, coder or YOLOCellCoder(sqrt_wh=True), lambda_coord=lambda_coord)
        confidence = YOLOConfidence(cls_loss, boxes_per_cell=boxes_per_cell, lambda_noobj=lambda_noobj)
        super().__init__(assigner=assigner or YOLOGridAssigner(boxes_per_cell, ignore_iof_thr=ignore_iof_thr),
                         terms=[confidence, boxes], weighting=weighting, diagnostics=diagnostics)
        self.cls_name, self.reg_name, self.coder, self.boxes_per_cell = cls_loss, reg_loss, boxes.coder, boxes_per_cell
        self.boxes = boxes

    def assign(self, outputs, gt_boxes, gt_labels, gt_valid, ignore):
        """The responsible predictors by the IoU of their decoded boxes, which the result carries
        (``pred_boxes``: the confidence term's IoU targets, decoded once)."""
        if outputs.objectness is None:
            raise ValueError("YOLOCriterion needs outputs.objectness (the confidence logits)")
        with torch.no_grad():
            pred_boxes = self.boxes.decode(outputs, outputs.priors.float(), outputs.box_regression.float())
        result = self.assigner.assign_batch(outputs.priors, outputs.num_per_level, gt_boxes, gt_labels, gt_valid,
                                            ignore=ignore, pred_boxes=pred_boxes)
        return replace(result, pred_boxes=pred_boxes)


class RankingCriterion(Criterion):
    """``RankingLoss`` alone: AP Loss (+ Smooth L1, beta 1, on the positives' encoded offsets;
    fixed weights by default) or aLRP Loss (the weighting defaults to SelfBalance, SB on the
    localisation component)."""

    def __init__(self, assigner=None, *, loss: str = "alrp", reg_loss: str = "smooth_l1", coder=None,
                 weighting: LossWeighting | None = None, delta: float = 1.0, alrp_iou: str = "giou",
                 diagnostics: bool = False) -> None:
        ranking = RankingLoss(loss, boxes=BoxRegression(reg_loss, coder or DeltaXYWHCoder()), delta=delta,
                              alrp_iou=alrp_iou)
        if weighting is None:  # the loss's own: aLRP's self-balance, AP Loss's fixed weights
            weighting = WEIGHTINGS[ranking.entry.weighting]()
        super().__init__(assigner=assigner or MaxIoUAssigner(), terms=[ranking], weighting=weighting,
                         diagnostics=diagnostics)
        self.loss_name, self.reg_name, self.coder = loss, reg_loss, ranking.boxes.coder
        self.delta, self.alrp_iou = delta, alrp_iou
