"""Exponential moving average of model weights (as in YOLOv5 / timm), with a warm-up ramp."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """ema = d * ema + (1 - d) * model after every step, d = decay * (1 - exp(-updates / tau));
    buffers (BatchNorm statistics) are copied."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        ema_state = self.module.state_dict()
        for k, v in model.state_dict().items():
            if not isinstance(v, torch.Tensor):  # extra state (loss-weighting records) is not averaged
                continue
            if v.dtype.is_floating_point and k in ema_state:
                ema_state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            elif k in ema_state:
                ema_state[k].copy_(v)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates, self.decay, self.tau = state["updates"], state["decay"], state["tau"]
