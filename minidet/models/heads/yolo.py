"""YOLO v1-style head: one S x S grid (S follows the input size) on the stride-32 map."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...anchors import GridCellGenerator
from ...structures import HeadOutput
from ..backbones import conv_bn_act
from .common import BoxCoder, DenseHead


class YOLOHead(DenseHead):
    """Per cell: B predictors of (x, y, sqrt w, sqrt h, confidence) and one set of C class
    logits. x, y (position in the cell) and sqrt w, sqrt h (relative to the image) pass a
    sigmoid so they stay in (0, 1); confidence and classes stay logits for the criterion."""

    def __init__(self, *, in_channels: int, num_classes: int, prior_generator: GridCellGenerator, coder: BoxCoder,
                 hidden: int = 256) -> None:
        super().__init__(prior_generator, coder)
        self.b, self.num_classes = prior_generator.boxes_per_cell, num_classes
        self.convs = nn.Sequential(conv_bn_act(in_channels, hidden, 3), conv_bn_act(hidden, hidden, 3))
        self.pred = nn.Conv2d(hidden, self.b * 5 + num_classes, 1)
        nn.init.normal_(self.pred.weight, std=0.01)
        nn.init.zeros_(self.pred.bias)

    def predictions(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """feats: [the stride-32 map] -> cls logits [B, S*S*Bp, C] (a cell's set repeated for its
        predictors), boxes [B, S*S*Bp, 4], confidence logits [B, S*S*Bp] (float32; cell-major,
        then predictor)."""
        y = self.pred(self.convs(feats[-1])).float()
        n, _, h, w = y.shape
        y = y.permute(0, 2, 3, 1).reshape(n, h * w, -1)
        per_box = y[..., : self.b * 5].reshape(n, h * w * self.b, 5)
        return y[..., self.b * 5 :].repeat_interleave(self.b, 1), torch.sigmoid(per_box)[..., :4], per_box[..., 4]

    @staticmethod
    def scores(out: HeadOutput) -> Tensor:
        """Class scores [B, A, C]: sigmoid(confidence) x softmax(class logits)."""
        return torch.sigmoid(out.objectness.float())[..., None] * torch.softmax(out.cls_logits.float(), -1)
