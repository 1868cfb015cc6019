"""RetinaNet head: shared 4-conv classification and box subnets over every pyramid level."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...anchors import AnchorGenerator
from .common import BoxCoder, DenseHead, flatten_level


def _tower(channels: int, num_convs: int, norm: str | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        if norm == "gn":
            layers.append(nn.GroupNorm(min(32, channels), channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaNetHead(DenseHead):
    """Per level: cls tower -> A * C logits, box tower -> A * 4 deltas; weights shared across
    levels. Classification bias starts at -log((1 - prior_prob) / prior_prob) (RetinaNet, 0.01)."""

    def __init__(self, *, in_channels: int, num_classes: int, prior_generator: AnchorGenerator, coder: BoxCoder,
                 num_convs: int = 4, norm: str | None = None, prior_prob: float = 0.01) -> None:
        super().__init__(prior_generator, coder)
        if norm not in (None, "gn"):
            raise ValueError(f"norm must be None or 'gn', got {norm!r}")
        self.num_anchors, self.num_classes = prior_generator.num_anchors_per_location, num_classes
        self.cls_tower = _tower(in_channels, num_convs, norm)
        self.box_tower = _tower(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, self.num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, self.num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def predictions(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, None]:
        """-> cls logits [B, A_total, C], box deltas [B, A_total, 4] (float32), no objectness."""
        cls = [flatten_level(self.cls_logits(self.cls_tower(f)), self.num_anchors) for f in feats]
        box = [flatten_level(self.bbox_pred(self.box_tower(f)), self.num_anchors) for f in feats]
        return torch.cat(cls, 1).float(), torch.cat(box, 1).float(), None
