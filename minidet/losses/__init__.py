"""minidet.losses: every classification, regression and ranking loss, as plain functions, and the
tables that name them. The criterion and the command line read these tables: a new loss is a
function in one of the files below plus its entry in one table (a classification loss's entry
also says which heads can train with it and how they call it)."""

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from .classification import (
    binary_cross_entropy,
    multiclass_hinge_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_labels,
    softmax_cross_entropy,
    softmax_focal_loss,
    yolo_sse,
)
from .ranking import alrp_loss, ap_loss
from .regression import ciou_loss, diou_loss, giou_loss, iou_loss, l1_loss, l2_loss, smooth_l1_loss


class RegressionLoss(NamedTuple):
    """A regression loss ``fn(pred, target, weight=None, reduction=...)`` and what it compares:
    the coder's encoded offsets (``on_offsets``) or decoded xyxy boxes; ``options``: the term
    settings it takes (Smooth L1: beta)."""

    fn: Callable
    on_offsets: bool
    options: tuple[str, ...] = ()


class ClassificationLoss(NamedTuple):
    """A classification loss and how a head's term calls it.

    ``target`` "one_hot": ``fn(scores [N, K], one-hot targets [N, K], weight=[N, K], reduction=)``
    with ``scores`` the logits, or probabilities when ``probabilities`` (a sigmoid head: sigmoid;
    YOLO's cells: softmax over the classes); "labels": ``fn(logits [N, K], labels [N],
    reduction=)`` (softmax over K, -1: no target). ``heads``: the terms that can train with it —
    "sigmoid" (RetinaNet: one logit per class), "softmax" (SSD: C + 1 logits, background last),
    "yolo" (YOLO v1's classes per cell). ``from_labels(logits [N, C], labels [N], weight=[N],
    **options) -> sum``: an equal fused form a sigmoid head uses instead (no [N, C] target);
    ``options``: the term settings it takes (focal: alpha, gamma)."""

    fn: Callable
    target: str
    heads: frozenset[str]
    probabilities: bool = False
    from_labels: Callable | None = None
    options: tuple[str, ...] = ()


class RankingLoss(NamedTuple):
    """A ranking loss (classification and localisation together) over every entry of the batch:
    ``fn(logits, targets, delta)`` -> cls with the box regression of the positives beside it
    (``loc_errors`` False: AP Loss), or ``fn(logits, targets, loc_errors [P], delta)`` -> (cls,
    reg) (aLRP Loss); ``weighting``: the scheme it trains with unless told (a WEIGHTINGS name)."""

    fn: Callable
    loc_errors: bool
    weighting: str = "fixed"


_SIGMOID, _SOFTMAX, _YOLO = frozenset({"sigmoid"}), frozenset({"softmax"}), frozenset({"yolo"})
# (the order is the order of the choices each head lists)
CLASSIFICATION_LOSSES: dict[str, ClassificationLoss] = {
    "focal": ClassificationLoss(sigmoid_focal_loss, "one_hot", _SIGMOID | _YOLO,
                                from_labels=sigmoid_focal_loss_from_labels, options=("alpha", "gamma")),
    "bce": ClassificationLoss(binary_cross_entropy, "one_hot", _SIGMOID,
                              from_labels=partial(sigmoid_focal_loss_from_labels, alpha=-1.0, gamma=0.0)),
    "ce": ClassificationLoss(softmax_cross_entropy, "labels", _SOFTMAX | _YOLO),
    "softmax_focal": ClassificationLoss(softmax_focal_loss, "labels", _SOFTMAX),
    "yolo_sse": ClassificationLoss(yolo_sse, "one_hot", _SIGMOID | _YOLO, probabilities=True),
    "hinge": ClassificationLoss(multiclass_hinge_loss, "labels", _SOFTMAX),
}
REGRESSION_LOSSES: dict[str, RegressionLoss] = {
    "l1": RegressionLoss(l1_loss, on_offsets=True),
    "l2": RegressionLoss(l2_loss, on_offsets=True),
    "smooth_l1": RegressionLoss(smooth_l1_loss, on_offsets=True, options=("beta",)),
    "iou": RegressionLoss(iou_loss, on_offsets=False),
    "giou": RegressionLoss(giou_loss, on_offsets=False),
    "diou": RegressionLoss(diou_loss, on_offsets=False),
    "ciou": RegressionLoss(ciou_loss, on_offsets=False),
}
RANKING_LOSSES: dict[str, RankingLoss] = {"ap": RankingLoss(ap_loss, loc_errors=False),
                                          "alrp": RankingLoss(alrp_loss, loc_errors=True, weighting="self_balance")}
ALL_LOSSES: dict[str, Callable] = {k: v.fn for table in (CLASSIFICATION_LOSSES, REGRESSION_LOSSES, RANKING_LOSSES)
                                   for k, v in table.items()}


def losses_for(head_kind: str) -> list[str]:
    """The classification losses a head of ``head_kind`` can train with, in table order."""
    return [name for name, entry in CLASSIFICATION_LOSSES.items() if head_kind in entry.heads]


def classification_loss(name: str, head_kind: str, head: str) -> ClassificationLoss:
    """The table entry of ``name``; a ValueError naming the valid choices when ``head`` (its kind
    ``head_kind``) cannot train with it."""
    entry = CLASSIFICATION_LOSSES.get(name)
    if entry is None or head_kind not in entry.heads:
        raise ValueError(f"classification loss {name!r} cannot train a {head}; valid choices: "
                         f"{', '.join(losses_for(head_kind))}")
    return entry


def table_entry(table: dict, kind: str, name: str, head: str = "head"):
    """``table[name]``, or a ValueError naming the valid choices."""
    if name not in table:
        raise ValueError(f"{kind} loss {name!r} cannot train a {head}; valid choices: {', '.join(table)}")
    return table[name]


__all__ = ["softmax_cross_entropy", "binary_cross_entropy", "sigmoid_focal_loss", "sigmoid_focal_loss_from_labels",
           "softmax_focal_loss", "yolo_sse", "multiclass_hinge_loss", "ap_loss", "alrp_loss", "l1_loss", "l2_loss",
           "smooth_l1_loss", "iou_loss", "giou_loss", "diou_loss", "ciou_loss", "RegressionLoss",
           "ClassificationLoss", "RankingLoss", "losses_for", "classification_loss", "table_entry",
           "CLASSIFICATION_LOSSES", "REGRESSION_LOSSES", "RANKING_LOSSES", "ALL_LOSSES"]
