"""Box <-> regression-target coders.

- ``DeltaXYWHCoder``: the R-CNN / RetinaNet parametrisation
  dx = (gx - px) / pw, dy = (gy - py) / ph, dw = log(gw / pw), dh = log(gh / ph),
  normalised as (d - mean) / std; decoding clamps dw, dh to +-log(1000 / 16) so exp() cannot
  explode on an untrained head.
- ``SSDCoder``: the same with SSD's variances (0.1, 0.2), i.e. stds (0.1, 0.1, 0.2, 0.2).
- ``YOLOCellCoder``: YOLO v1 targets: (x, y) of the box centre relative to its grid cell in
  [0, 1), (w, h) relative to the image size, optionally as sqrt(w), sqrt(h).

Every coder (``BoxCoder``) has ``encode(priors, boxes, image_size) -> targets`` and
``decode(priors, targets, image_size) -> boxes``; image_size (height, width) of the input is
needed by YOLO's only (the delta coders take it optionally). Priors and boxes are xyxy pixels
``[..., 4]`` (any matching leading shape, or priors [A, 4] broadcast against [B, A, 4]).
float16/bfloat16 inputs are computed and returned in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["BoxCoder", "DeltaXYWHCoder", "SSDCoder", "YOLOCellCoder"]

Size = tuple[int, int]  # (height, width)


class BoxCoder(Protocol):
    """boxes <-> regression targets relative to priors (see the module docstring)."""

    def encode(self, priors: Tensor, boxes: Tensor, image_size: Size) -> Tensor: ...

    def decode(self, priors: Tensor, targets: Tensor, image_size: Size) -> Tensor: ...


DEFAULT_WH_CLAMP = math.log(1000.0 / 16)
_MIN_SIZE = 1e-6  # widths/heights are floored here before log() so degenerate gts stay finite


def _upcast(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _cxcywh(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x1, y1, x2, y2 = _upcast(boxes).unbind(-1)
    return (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1


class DeltaXYWHCoder:
    """Encode gt boxes as normalised (dx, dy, dw, dh) relative to priors, and back."""

    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        wh_clamp: float = DEFAULT_WH_CLAMP,
    ) -> None:
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.wh_clamp = float(wh_clamp)
        self._stats_cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """means, stds [4] on ``like``'s device and dtype, made once per (device, dtype): building
        them from the Python floats at every call would be a blocking host-to-device copy (a
        host sync) twice per encode / decode."""
        key = (like.device, like.dtype)
        stats = self._stats_cache.get(key)
        if stats is None:
            with torch.inference_mode(False):  # usable later with autograd even if made under inference_mode
                host = torch.tensor([self.means, self.stds], dtype=like.dtype)
                stats = tuple(host.to(like.device).unbind(0))
            self._stats_cache[key] = stats
        return stats

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_stats_cache"] = {}  # device tensors: rebuilt where the copy is used
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_stats_cache", {})  # pickles of earlier versions
        self.__dict__.update(state)

    def encode(self, priors: Tensor, boxes: Tensor, image_size: Size | None = None) -> Tensor:
        """priors [..., 4], gt boxes [..., 4] (xyxy) -> targets [..., 4]; image_size unused."""
        px, py, pw, ph = _cxcywh(priors)
        gx, gy, gw, gh = _cxcywh(boxes)
        deltas = torch.stack(
            [
                (gx - px) / pw,
                (gy - py) / ph,
                torch.log(gw.clamp(min=_MIN_SIZE) / pw),
                torch.log(gh.clamp(min=_MIN_SIZE) / ph),
            ],
            dim=-1,
        )
        mean, std = self._stats(deltas)
        return (deltas - mean) / std

    def decode(self, priors: Tensor, deltas: Tensor, image_size: Size | None = None) -> Tensor:
        """priors [..., 4], predicted targets [..., 4] -> boxes [..., 4] (xyxy); image_size unused."""
        deltas = _upcast(deltas)
        mean, std = self._stats(deltas)
        d = deltas * std + mean
        px, py, pw, ph = _cxcywh(priors.to(d.dtype))
        cx = px + d[..., 0] * pw
        cy = py + d[..., 1] * ph
        w = pw * torch.exp(d[..., 2].clamp(min=-self.wh_clamp, max=self.wh_clamp))
        h = ph * torch.exp(d[..., 3].clamp(min=-self.wh_clamp, max=self.wh_clamp))
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


class SSDCoder(DeltaXYWHCoder):
    """SSD's coder: centre offsets divided by variance[0], log-sizes by variance[1]."""

    def __init__(self, variances: tuple[float, float] = (0.1, 0.2),
                 wh_clamp: float = DEFAULT_WH_CLAMP) -> None:
        v_xy, v_wh = variances
        super().__init__(stds=(v_xy, v_xy, v_wh, v_wh), wh_clamp=wh_clamp)
        self.variances = (float(v_xy), float(v_wh))


class YOLOCellCoder:
    """YOLO v1 parametrisation relative to the responsible grid cell.

    encode: x = (cx - cell_x1) / cell_w, y = (cy - cell_y1) / cell_h, w = box_w / image_w,
    h = box_h / image_h; with ``sqrt_wh`` the last two are sqrt(w), sqrt(h) (the paper's
    choice, so errors on small boxes weigh more). decode inverts it (sqrt outputs are squared).
    """

    def __init__(self, sqrt_wh: bool = True) -> None:
        self.sqrt_wh = sqrt_wh

    def encode(self, priors: Tensor, boxes: Tensor, image_size: Size) -> Tensor:
        """grid cells [..., 4], boxes [..., 4] xyxy, image_size (height, width) -> targets [..., 4]."""
        img_h, img_w = image_size
        cells = _upcast(priors)
        gx, gy, gw, gh = _cxcywh(boxes)
        cw, ch = cells[..., 2] - cells[..., 0], cells[..., 3] - cells[..., 1]
        w, h = gw.clamp(min=0) / img_w, gh.clamp(min=0) / img_h
        if self.sqrt_wh:
            w, h = w.sqrt(), h.sqrt()
        return torch.stack([(gx - cells[..., 0]) / cw, (gy - cells[..., 1]) / ch, w, h], dim=-1)

    def decode(self, priors: Tensor, preds: Tensor, image_size: Size) -> Tensor:
        """grid cells [..., 4], predictions [..., 4], image_size (height, width) -> boxes [..., 4] xyxy."""
        img_h, img_w = image_size
        preds = _upcast(preds)
        cells = priors.to(preds.dtype)
        cw, ch = cells[..., 2] - cells[..., 0], cells[..., 3] - cells[..., 1]
        cx = cells[..., 0] + preds[..., 0] * cw
        cy = cells[..., 1] + preds[..., 1] * ch
        w, h = preds[..., 2], preds[..., 3]
        if self.sqrt_wh:
            w, h = w * w, h * h
        w, h = w * img_w, h * img_h
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
