"""SSD: extra feature layers and the per-level 3x3 classification / box predictors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...anchors import DefaultBoxGenerator
from ...structures import HeadOutput
from ..tiny_maps import run_tiny_in_fp32
from .common import BoxCoder, DenseHead, flatten_level


class SSDExtras(nn.Module):
    """Extra feature maps after the backbone: each a 1x1 reduction and a 3x3 conv, given as
    (mid, out) (stride 2, padding 1: halves the resolution) or (mid, out, stride, padding).
    SSD300 (conv8_2 .. conv11_2): two stride-2 layers, then two unpadded stride-1 layers
    (5 -> 3 -> 1 at 300 px)."""

    def __init__(self, in_channels: int, channels: list[tuple[int, ...]]) -> None:
        super().__init__()
        layers, cin = [], in_channels
        for spec in channels:
            mid, out, stride, padding = (*spec, 2, 1) if len(spec) == 2 else spec
            layers.append(nn.Sequential(nn.Conv2d(cin, mid, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(mid, out, 3, stride=stride, padding=padding), nn.ReLU(inplace=True)))
            cin = out
        self.layers = nn.ModuleList(layers)
        self.out_channels = [spec[1] for spec in channels]

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, layer in enumerate(self.layers):
            conv = layer[2]
            if conv.padding == (0, 0) and min(x.shape[-2:]) < conv.kernel_size[0]:
                raise ValueError(f"the input is too small for SSD300's extra layers (a {x.shape[-2]}x{x.shape[-1]} map "
                                 f"reaches extra layer {i + 1}, which needs at least 3x3); train and evaluate at "
                                 f"--img-size 300")
            x = run_tiny_in_fp32(layer, x)
            outs.append(x)
        return outs


class SSDHead(DenseHead):
    """Per level a 3x3 conv to K * (C + 1) class logits (background last) and one to K * 4."""

    def __init__(self, *, in_channels: list[int], num_classes: int, prior_generator: DefaultBoxGenerator,
                 coder: BoxCoder) -> None:
        super().__init__(prior_generator, coder)
        self.k, self.num_classes = prior_generator.num_boxes_per_location(), num_classes
        self.cls = nn.ModuleList(nn.Conv2d(c, k * (num_classes + 1), 3, padding=1)
                                 for c, k in zip(in_channels, self.k, strict=True))
        self.box = nn.ModuleList(nn.Conv2d(c, k * 4, 3, padding=1) for c, k in zip(in_channels, self.k, strict=True))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def predictions(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, None]:
        """-> cls logits [B, A_total, C + 1], box deltas [B, A_total, 4] (float32), no objectness."""
        cls = [flatten_level(conv(f), k) for conv, f, k in zip(self.cls, feats, self.k, strict=True)]
        box = [flatten_level(conv(f), k) for conv, f, k in zip(self.box, feats, self.k, strict=True)]
        return torch.cat(cls, 1).float(), torch.cat(box, 1).float(), None

    @staticmethod
    def scores(out: HeadOutput) -> Tensor:
        """Class scores [B, A, C]: a softmax over C + 1, the background column dropped."""
        return torch.softmax(out.cls_logits.float(), -1)[..., :-1]
