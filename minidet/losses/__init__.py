"""minidet.losses: every classification, regression and ranking loss, as plain functions, and the
tables that name them. The criterion and the command line read these tables: a new loss is a
function in one of the files below plus its name in one table."""

from collections.abc import Callable
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
    the coder's encoded offsets (``on_offsets``) or decoded xyxy boxes."""

    fn: Callable
    on_offsets: bool


CLASSIFICATION_LOSSES: dict[str, Callable] = {
    "ce": softmax_cross_entropy,
    "bce": binary_cross_entropy,
    "focal": sigmoid_focal_loss,
    "softmax_focal": softmax_focal_loss,
    "yolo_sse": yolo_sse,
    "hinge": multiclass_hinge_loss,
}
REGRESSION_LOSSES: dict[str, RegressionLoss] = {
    "l1": RegressionLoss(l1_loss, on_offsets=True),
    "l2": RegressionLoss(l2_loss, on_offsets=True),
    "smooth_l1": RegressionLoss(smooth_l1_loss, on_offsets=True),
    "iou": RegressionLoss(iou_loss, on_offsets=False),
    "giou": RegressionLoss(giou_loss, on_offsets=False),
    "diou": RegressionLoss(diou_loss, on_offsets=False),
    "ciou": RegressionLoss(ciou_loss, on_offsets=False),
}
# classification and localisation together (minidet.criterion.RankingLoss)
RANKING_LOSSES: dict[str, Callable] = {"ap": ap_loss, "alrp": alrp_loss}
ALL_LOSSES: dict[str, Callable] = {**CLASSIFICATION_LOSSES, **{k: v.fn for k, v in REGRESSION_LOSSES.items()},
                                   **RANKING_LOSSES}

__all__ = ["softmax_cross_entropy", "binary_cross_entropy", "sigmoid_focal_loss", "sigmoid_focal_loss_from_labels",
           "softmax_focal_loss", "yolo_sse", "multiclass_hinge_loss", "ap_loss", "alrp_loss", "l1_loss", "l2_loss",
           "smooth_l1_loss", "iou_loss", "giou_loss", "diou_loss", "ciou_loss", "RegressionLoss",
           "CLASSIFICATION_LOSSES", "REGRESSION_LOSSES", "RANKING_LOSSES", "ALL_LOSSES"]
