"""One image through an assigner's batched entry point (tests work image by image)."""

from collections.abc import Sequence

import torch
from torch import Tensor

from minidet.assigners import AssignResult


def assign_one(assigner, priors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor, gt_labels: Tensor,
               ignore_boxes: Tensor | None = None, **kwargs) -> AssignResult:
    """priors [A, 4], gt_boxes [G, 4], gt_labels [G], ignore_boxes [M, 4] -> results of shape [A]."""
    valid = torch.ones(1, len(gt_boxes), dtype=torch.bool, device=priors.device)
    ignore = None
    if ignore_boxes is not None:
        ignore = (ignore_boxes[None], torch.ones(1, len(ignore_boxes), dtype=torch.bool, device=priors.device))
    out = assigner.assign_batch(priors, num_per_level, gt_boxes[None], gt_labels[None], valid, ignore=ignore, **kwargs)
    return AssignResult(out.gt_inds[0], out.labels[0], out.max_iou[0])
