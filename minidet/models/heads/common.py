"""What the heads share: the base class owning the priors and the box coder, and the flattening
of a level's predictions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...anchors import PriorGenerator
from ...coders import BoxCoder
from ...structures import HeadOutput


def flatten_level(x: Tensor, per_location: int) -> Tensor:
    """[B, K * D, H, W] -> [B, H * W * K, D]: location-major (row-major), then prior k."""
    b, kd, h, w = x.shape
    d = kd // per_location
    return x.view(b, per_location, d, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * per_location, d)


class DenseHead(nn.Module):
    """A head with its prior generator and box coder (plain attributes: no state). Subclasses
    implement ``predictions(feats)`` -> (class logits, box regression [B, A, 4], objectness
    [B, A] or None); ``forward`` adds the priors; ``scores`` is the post-processing's scoring."""

    def __init__(self, prior_generator: PriorGenerator, coder: BoxCoder) -> None:
        super().__init__()
        self.prior_generator, self.coder = prior_generator, coder

    def predictions(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        raise NotImplementedError

    def forward(self, feats: list[Tensor], image_size: tuple[int, int]) -> HeadOutput:
        """feats: the maps the head reads; image_size: (h, w) of the input batch."""
        cls, box, objectness = self.predictions(feats)
        priors, npl = self.prior_generator([f.shape[-2:] for f in feats], image_size, feats[0].device)
        return HeadOutput(cls, box, priors, npl, image_size, objectness)

    @staticmethod
    def scores(out: HeadOutput) -> Tensor:
        """Class scores [B, A, C]: a sigmoid per class (the softmax and YOLO heads override it)."""
        return torch.sigmoid(out.cls_logits.float())
