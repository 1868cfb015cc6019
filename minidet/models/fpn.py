"""Feature pyramid network (Lin et al., 2017) producing P3-P7 for RetinaNet."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .tiny_maps import run_tiny_in_fp32


class FPN(nn.Module):
    """C3, C4, C5 -> P3..P7 (``out_channels`` each).

    Laterals are 1x1 convs, the top-down path adds nearest-upsampled maps, 3x3 convs smooth
    P3-P5; P6 is a 3x3 stride-2 conv on C5 (``p6_from="c5"``, RetinaNet) or on P5 ("p5",
    as FCOS/ATSS), P7 a 3x3 stride-2 conv on ReLU(P6). ``extra_levels`` = 0 gives P3-P5.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, extra_levels: int = 2,
                 p6_from: str = "c5") -> None:
        super().__init__()
        if p6_from not in ("c5", "p5"):
            raise ValueError(f"p6_from must be 'c5' or 'p5', got {p6_from!r}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.p6_from = p6_from
        extra_in = in_channels[-1] if p6_from == "c5" else out_channels
        self.extra = nn.ModuleList(
            nn.Conv2d(extra_in if i == 0 else out_channels, out_channels, 3, stride=2, padding=1)
            for i in range(extra_levels)
        )
        self.out_channels = [out_channels] * (len(in_channels) + extra_levels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.smooth, laterals, strict=True)]
        x = feats[-1] if self.p6_from == "c5" else outs[-1]
        for i, conv in enumerate(self.extra):
            x = run_tiny_in_fp32(conv, x if i == 0 else F.relu(x))
            outs.append(x)
        return outs
