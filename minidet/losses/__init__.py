"""minidet.losses: every classification, regression and ranking loss, as plain functions."""

from .classification import (
    binary_cross_entropy,
    multiclass_hinge_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_labels,
    softmax_cross_entropy,
    softmax_focal_loss,
    yolo_sse,
)
from .modules import (
    ALL_LOSSES,
    CLASSIFICATION_LOSSES,
    JOINT_LOSSES,
    REGRESSION_LOSSES,
    Loss,
    build_loss,
)
from .ranking import alrp_loss, ap_loss
from .regression import ciou_loss, diou_loss, giou_loss, iou_loss, l1_loss, l2_loss, smooth_l1_loss

__all__ = [
    "softmax_cross_entropy",
    "binary_cross_entropy",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_from_labels",
    "softmax_focal_loss",
    "yolo_sse",
    "multiclass_hinge_loss",
    "ap_loss",
    "alrp_loss",
    "l1_loss",
    "l2_loss",
    "smooth_l1_loss",
    "iou_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
    "Loss",
    "build_loss",
    "CLASSIFICATION_LOSSES",
    "REGRESSION_LOSSES",
    "JOINT_LOSSES",
    "ALL_LOSSES",
]
