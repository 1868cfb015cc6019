"""SSD's hard negative mining: which negatives a softmax classification loss sees."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def hard_negative_mask(neg_loss: Tensor, positive: Tensor, negative: Tensor, ratio: float = 3.0) -> Tensor:
    """SSD hard negative mining, per image: keep the negatives with the highest loss, at most
    ``ratio`` per positive of the same image.

    neg_loss [B, A] (the classification loss each prior would get as background),
    positive, negative [B, A] bool -> mask [B, A] of the kept negatives. Ties in loss keep the
    lower prior index. An image without positives keeps no negatives.
    """
    num_keep = (positive.sum(dim=1, keepdim=True) * ratio).floor().long()
    num_keep = torch.minimum(num_keep, negative.sum(dim=1, keepdim=True))
    ranked = torch.where(negative, neg_loss, torch.full_like(neg_loss, -torch.inf))
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return negative & (rank < num_keep)
