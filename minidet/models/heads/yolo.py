"""YOLO v1-style head: one S x S grid (S follows the input size) on the stride-32 map."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..backbones import conv_bn_act


class YOLOHead(nn.Module):
    """Per cell: B predictors of (x, y, sqrt w, sqrt h, confidence) and one set of C class
    logits. x, y (position in the cell) and sqrt w, sqrt h (relative to the image) pass a
    sigmoid so they stay in (0, 1); confidence and classes stay logits for the criterion."""

    def __init__(self, in_channels: int, num_classes: int, boxes_per_cell: int = 2, hidden: int = 256) -> None:
        super().__init__()
        self.b, self.num_classes = boxes_per_cell, num_classes
        self.convs = nn.Sequential(conv_bn_act(in_channels, hidden, 3), conv_bn_act(hidden, hidden, 3))
        self.pred = nn.Conv2d(hidden, boxes_per_cell * 5 + num_classes, 1)
        nn.init.normal_(self.pred.weight, std=0.01)
        nn.init.zeros_(self.pred.bias)

    def forward(self, c5: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> cls logits [B, S*S*Bp, C] (shared by a cell's predictors), boxes [B, S*S*Bp, 4],
        confidence logits [B, S*S*Bp] (float32; cell-major, then predictor)."""
        y = self.pred(self.convs(c5)).float()
        n, _, h, w = y.shape
        y = y.permute(0, 2, 3, 1).reshape(n, h * w, -1)
        boxes = torch.sigmoid(y[..., : self.b * 5].reshape(n, h * w, self.b, 5))
        conf = y[..., : self.b * 5].reshape(n, h * w, self.b, 5)[..., 4]
        cls = y[..., self.b * 5 :][:, :, None, :].expand(n, h * w, self.b, self.num_classes)
        return (cls.reshape(n, h * w * self.b, self.num_classes), boxes[..., :4].reshape(n, h * w * self.b, 4),
                conf.reshape(n, h * w * self.b))
