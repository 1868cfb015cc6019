"""Exponential moving average of model weights (as in YOLOv5 / timm), with a warm-up ramp."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """An exponential moving average of a model's weights, for evaluation and best.pt.

    Policy (YOLOv5's ModelEMA, timm's ModelEmaV2): after every applied optimizer step, every
    floating-point entry of ``model.state_dict()`` — the parameters AND the floating buffers,
    i.e. the BatchNorm running means and variances — becomes ``d * ema + (1 - d) * model`` with
    ``d = decay * (1 - exp(-updates / tau))`` (a warm-up ramp: early updates follow the model
    closely); integer buffers (BatchNorm's ``num_batches_tracked``) are copied. The loss state
    is not part of it: a Detector's criterion lives beside the network, outside its state dict.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the policy above (multi-tensor ops: one kernel launch per group)."""
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        ema_state = self.module.state_dict()
        ema_f, model_f, ema_i, model_i = [], [], [], []
        for k, v in model.state_dict().items():
            if not isinstance(v, torch.Tensor) or k not in ema_state:  # extra state is not averaged
                continue
            if v.dtype.is_floating_point:
                ema_f.append(ema_state[k])
                model_f.append(v.detach())
            else:
                ema_i.append(ema_state[k])
                model_i.append(v)
        if ema_f:
            torch._foreach_lerp_(ema_f, model_f, 1 - d)  # ema + (1 - d)(model - ema): one kernel per tensor
        if ema_i:
            torch._foreach_copy_(ema_i, model_i)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates, self.decay, self.tau = state["updates"], state["decay"], state["tau"]
