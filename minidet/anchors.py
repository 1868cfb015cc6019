"""Prior boxes of the three detector families, in xyxy image pixels.

- ``AnchorGenerator``: RetinaNet/FPN anchors, several sizes x aspect ratios per location.
- ``DefaultBoxGenerator``: SSD default boxes from the s_min/s_max scale rule.
- ``GridCellGenerator``: YOLO v1 grid cells (B boxes per cell share the cell's rectangle).

All are ``PriorGenerator``s with one signature, ``gen(feature_sizes, image_size, device, dtype)
-> (priors [A, 4], num_per_level list[int])``, in the SAME flattening order the heads use for
their outputs: level -> location (row-major: y, then x) -> prior within the location. Results
are cached per (feature sizes, image size, device, dtype), so calling a generator on every
forward pass costs a dictionary lookup.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["PriorGenerator", "AnchorGenerator", "DefaultBoxGenerator", "GridCellGenerator"]

Size = tuple[int, int]  # (height, width)


def _grid_centres(height: int, width: int, step_y: float, step_x: float, offset: float,
                  device: torch.device, dtype: torch.dtype) -> Tensor:
    """Centres [H*W, 2] (x, y) of a feature map's locations, row-major."""
    ys = (torch.arange(height, device=device, dtype=torch.float64) + offset) * step_y
    xs = (torch.arange(width, device=device, dtype=torch.float64) + offset) * step_x
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1).to(dtype)


def _place(centres: Tensor, wh: Tensor) -> Tensor:
    """Boxes [L*K, 4] for every centre [L, 2] and every shape wh [K, 2] (location-major)."""
    half = (wh * 0.5)[None, :, :]
    c = centres[:, None, :]
    return torch.cat([c - half, c + half], dim=2).reshape(-1, 4)


class PriorGenerator:
    """Priors of ``num_levels`` feature maps, in a small LRU cache; subclasses implement ``_make``."""

    num_levels: int
    cache_size = 16

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple, tuple[Tensor, list[int]]] = OrderedDict()

    def __call__(self, feature_sizes: Sequence[Size] | Size, image_size: Size | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Tensor, list[int]]:
        """Priors [A, 4] xyxy pixels and priors per level. feature_sizes: (h, w) of every map (one
        map may be given as its (h, w) alone); image_size: (h, w) of the input (anchors ignore it)."""
        if isinstance(feature_sizes[0], int):
            feature_sizes = [feature_sizes]
        sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        if len(sizes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(sizes)}")
        img = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        key = (sizes, img, torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = self._make(*key)
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def _make(self, sizes: tuple[Size, ...], img: Size | None, device: torch.device,
              dtype: torch.dtype) -> tuple[Tensor, list[int]]:
        raise NotImplementedError


class AnchorGenerator(PriorGenerator):
    """RetinaNet anchors: per level ``len(ratios) * len(scales)`` anchors per location.

    An anchor of base size s, scale k and aspect ratio r = h / w has w = s k / sqrt(r),
    h = s k sqrt(r) (area (s k)^2), centred at ((x + offset) stride, (y + offset) stride).
    Within a location the order is ratio-major: index = ratio_index * len(scales) + scale_index.
    Defaults are RetinaNet's: sizes 32..512 on strides 8..128, scales 2^{0, 1/3, 2/3},
    ratios {0.5, 1, 2}. ATSS uses one anchor per location: ``scales=(8,), ratios=(1,),
    sizes=strides``.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        offset: float = 0.5,
    ) -> None:
        if len(sizes) != len(strides):
            raise ValueError(f"need one size per stride, got {len(sizes)} sizes, {len(strides)} strides")
        super().__init__()
        self.sizes, self.strides = list(sizes), list(strides)
        self.ratios, self.scales, self.offset = list(ratios), list(scales), offset
        self.num_levels = len(self.strides)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.ratios) * len(self.scales)

    def base_shapes(self, level: int) -> Tensor:
        """(w, h) [K, 2] of the anchors of one location on ``level`` (float64)."""
        r = torch.tensor(self.ratios, dtype=torch.float64)
        k = torch.tensor(self.scales, dtype=torch.float64)
        side = self.sizes[level] * k[None, :]  # [1, S]
        w = (side / r.sqrt()[:, None]).reshape(-1)
        h = (side * r.sqrt()[:, None]).reshape(-1)
        return torch.stack([w, h], dim=1)

    def _make(self, sizes, img, device, dtype):
        levels = []
        for lvl, ((h, w), stride) in enumerate(zip(sizes, self.strides, strict=True)):
            centres = _grid_centres(h, w, stride, stride, self.offset, device, torch.float64)
            levels.append(_place(centres, self.base_shapes(lvl).to(device)).to(dtype))
        return torch.cat(levels), [lv.shape[0] for lv in levels]


class DefaultBoxGenerator(PriorGenerator):
    """SSD default boxes (Liu et al., 2016).

    Level k of m gets scale s_k = s_min + (s_max - s_min) k / (m - 1) (k = 0..m-1) unless
    ``scales`` (m + 1 values) are given; s_m = 1 closes the list. Per location, in this
    order: the square of side s_k, the square of side sqrt(s_k s_{k+1}), then for each
    ratio a of the level the pair (w, h) = (s_k sqrt(a), s_k / sqrt(a)) and its transpose.
    Sizes are fractions of the image (width for w, height for h); centres sit at
    ((j + 0.5) / f_w, (i + 0.5) / f_h) of the image. With ``clip`` the xyxy boxes are clipped
    to the image, as the original implementation does.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[Sequence[float]] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
        min_scale: float = 0.2,
        max_scale: float = 0.9,
        scales: Sequence[float] | None = None,
        clip: bool = True,
    ) -> None:
        m = len(aspect_ratios)
        if scales is None:
            if m == 1:
                scales = [min_scale, 1.0]
            else:
                scales = [min_scale + (max_scale - min_scale) * k / (m - 1) for k in range(m)] + [1.0]
        if len(scales) != m + 1:
            raise ValueError(f"need {m + 1} scales for {m} levels (the last closes the list), got {len(scales)}")
        super().__init__()
        self.aspect_ratios = [list(a) for a in aspect_ratios]
        self.scales, self.clip, self.num_levels = list(scales), clip, m

    def num_boxes_per_location(self) -> list[int]:
        return [2 + 2 * len(a) for a in self.aspect_ratios]

    def shapes(self, level: int) -> Tensor:
        """(w, h) [K, 2] as fractions of the image size for one location on ``level``."""
        s, s_next = self.scales[level], self.scales[level + 1]
        wh = [(s, s), (math.sqrt(s * s_next),) * 2]
        for a in self.aspect_ratios[level]:
            r = math.sqrt(a)
            wh += [(s * r, s / r), (s / r, s * r)]
        return torch.tensor(wh, dtype=torch.float64)

    def _make(self, sizes, img, device, dtype):
        img_h, img_w = img
        levels = []
        for lvl, (fh, fw) in enumerate(sizes):
            centres = _grid_centres(fh, fw, img_h / fh, img_w / fw, 0.5, device, torch.float64)
            wh = self.shapes(lvl).to(device) * torch.tensor([img_w, img_h], dtype=torch.float64, device=device)
            boxes = _place(centres, wh)
            if self.clip:
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_w)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_h)
            levels.append(boxes.to(dtype))
        return torch.cat(levels), [lv.shape[0] for lv in levels]


class GridCellGenerator(PriorGenerator):
    """YOLO v1 grid on one map of S_h x S_w: the image split into as many cells, each cell's
    rectangle repeated for its ``boxes_per_cell`` predictors (order: cell row-major, then
    predictor) -> [S_h*S_w*B, 4]."""

    num_levels = 1

    def __init__(self, boxes_per_cell: int = 2) -> None:
        if boxes_per_cell < 1:
            raise ValueError(f"boxes_per_cell must be >= 1, got {boxes_per_cell}")
        super().__init__()
        self.boxes_per_cell = boxes_per_cell

    def _make(self, sizes, img, device, dtype):
        ((sh, sw),), (img_h, img_w) = sizes, img
        ch, cw = img_h / sh, img_w / sw
        centres = _grid_centres(sh, sw, ch, cw, 0.5, device, torch.float64)
        wh = torch.tensor([[cw, ch]], dtype=torch.float64, device=device).expand(self.boxes_per_cell, 2)
        cells = _place(centres, wh).to(dtype)
        return cells, [cells.shape[0]]
