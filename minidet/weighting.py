"""Loss-weighting schemes: how one step's raw loss components become the training loss.

Each scheme is an ``nn.Module``: ``forward(losses, record=True)`` takes the step's raw
components (``{"cls": ..., "reg": ..., ...}``, scalar tensors) and returns them weighted (same
keys; the training loss is their sum); ``weights`` gives the weights just applied. ``record``
is False for steps that must not enter a scheme's statistics (aLRP: steps without positives).
State (weights, histories, counters) is in ``state_dict`` so a resumed run continues exactly.

- ``FixedWeights``: constant task weights (also YOLO's lambdas).
- ``ALWA``: adaptive loss weight adjustment, variants 1 (mean + std) and 2 (std).
- ``SelfBalance``: aLRP Loss's SB weight on the localisation component.
- ``UncertaintyWeighting``: Kendall et al.'s learned homoscedastic uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["LossWeighting", "FixedWeights", "ALWA", "SelfBalance", "UncertaintyWeighting", "WEIGHTINGS"]


class LossWeighting(nn.Module):
    """Base class: subclasses implement ``_weights()`` (current weights) and may ``_observe``."""

    def forward(self, losses: dict[str, Tensor], record: bool = True) -> dict[str, Tensor]:
        weights = self._weights(losses)
        weighted = {k: v * weights.get(k, 1.0) for k, v in losses.items()}
        if record and self.training:
            self._observe(losses, weighted)
        self._last = {k: float(weights.get(k, 1.0)) for k in losses}
        return weighted

    @property
    def weights(self) -> dict[str, float]:
        """The weights applied by the latest forward (empty before the first)."""
        return dict(getattr(self, "_last", {}))

    def _weights(self, losses: dict[str, Tensor]) -> dict[str, float | Tensor]:
        raise NotImplementedError

    def _observe(self, losses: dict[str, Tensor], weighted: dict[str, Tensor]) -> None:
        pass


class FixedWeights(LossWeighting):
    """Constant weights per component; components not named weigh 1."""

    def __init__(self, **weights: float) -> None:
        super().__init__()
        self.fixed = {k: float(v) for k, v in (weights or {"cls": 1.0, "reg": 1.0}).items()}

    def _weights(self, losses):
        return self.fixed

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.fixed.items())


class _HistoryState:
    """get/set_extra_state for modules that keep Python lists of recorded floats."""

    _state_lists: tuple[str, ...] = ()

    def get_extra_state(self) -> dict:
        return {name: list(getattr(self, name)) for name in self._state_lists}

    def set_extra_state(self, state: dict) -> None:
        for name in self._state_lists:
            setattr(self, name, list(state[name]))


class ALWA(_HistoryState, LossWeighting):
    """Adaptive Loss Weight Adjustment (variants ALWA_1 and ALWA_2).

    Keeps the WEIGHTED cls and reg values of the last ``interval`` recorded steps. When the
    window is full it computes, for each, mean + sample std (variant 1) or the sample std
    (variant 2, ddof = 1); if cls > reg it sets lambda_cls = 1 - (cls - reg) / cls, then clears
    the window. lambda_reg keeps its initial value. The new weight applies from the next step.
    """

    _state_lists = ("cls_history", "reg_history")

    def __init__(self, variant: int = 2, interval: int = 100, init: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        if variant not in (1, 2):
            raise ValueError(f"ALWA variant must be 1 or 2, got {variant}")
        if interval < 2:
            raise ValueError(f"ALWA interval must be >= 2 (a sample std needs two values), got {interval}")
        self.variant, self.interval = variant, interval
        self.register_buffer("lambda_cls", torch.tensor(float(init[0]), dtype=torch.float64))
        self.register_buffer("lambda_reg", torch.tensor(float(init[1]), dtype=torch.float64))
        self.cls_history: list[float] = []
        self.reg_history: list[float] = []

    def _weights(self, losses):
        return {"cls": float(self.lambda_cls), "reg": float(self.lambda_reg)}

    def _statistic(self, values: list[float]) -> float:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return mean + std if self.variant == 1 else std

    def _observe(self, losses, weighted):
        self.cls_history.append(float(weighted["cls"].detach()))
        self.reg_history.append(float(weighted["reg"].detach()))
        if len(self.cls_history) >= self.interval:
            cls, reg = self._statistic(self.cls_history), self._statistic(self.reg_history)
            if cls > reg:
                self.lambda_cls.fill_(1.0 - (cls - reg) / cls)
            self.cls_history.clear()
            self.reg_history.clear()

    def extra_repr(self) -> str:
        return f"variant={self.variant}, interval={self.interval}"


class SelfBalance(_HistoryState, LossWeighting):
    """aLRP Loss's self-balance: the localisation component ("reg") is multiplied by SB.

    SB starts at ``init`` (50). Recorded steps (those with positives) store the float values
    of cls and of the unweighted reg. When a period of ``period`` steps ends, SB becomes
    (mean reg + mean cls) / mean reg over the period, the records are cleared, and the new SB
    already applies to the step that completed the period. ``period=None``: one epoch — the
    trainer sets ``period`` to its steps per epoch (or calls ``end_period()`` itself).
    """

    _state_lists = ("cls_history", "reg_history")

    def __init__(self, init: float = 50.0, period: int | None = None) -> None:
        super().__init__()
        self.period = period
        self.register_buffer("sb", torch.tensor(float(init), dtype=torch.float64))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self.cls_history: list[float] = []
        self.reg_history: list[float] = []

    def forward(self, losses: dict[str, Tensor], record: bool = True) -> dict[str, Tensor]:
        if self.training:
            if record:
                self.cls_history.append(float(losses["cls"].detach()))
                self.reg_history.append(float(losses["reg"].detach()))
            self.steps += 1
            if self.period and int(self.steps) % self.period == 0:
                self.end_period()
        return super().forward(losses, record=False)

    def end_period(self) -> None:
        """Close the period: update SB from its records (if any) and clear them."""
        if self.reg_history:
            mean_reg = sum(self.reg_history) / len(self.reg_history)
            mean_cls = sum(self.cls_history) / len(self.cls_history)
            if mean_reg > 0:
                self.sb.fill_((mean_reg + mean_cls) / mean_reg)
        self.cls_history.clear()
        self.reg_history.clear()

    def _weights(self, losses):
        return {"cls": 1.0, "reg": float(self.sb)}

    def extra_repr(self) -> str:
        return f"period={self.period}"


class UncertaintyWeighting(LossWeighting):
    """Kendall, Gal & Cipolla (2018): learned log-variances s_k = log sigma_k^2.

    A classification component becomes exp(-s) L + s / 2 (1/sigma^2 L + log sigma) and a
    regression component 0.5 exp(-s) L + s / 2 (1/(2 sigma^2) L + log sigma). The s_k are
    ``nn.Parameter``s: give the criterion's parameters to the optimiser.
    """

    def __init__(self, keys: Sequence[str] = ("cls", "reg"), regression_keys: Sequence[str] = ("reg",)) -> None:
        super().__init__()
        self.log_vars = nn.ParameterDict({k: nn.Parameter(torch.zeros(())) for k in keys})
        self.regression_keys = set(regression_keys)

    def _factor(self, key: str) -> float:
        return 0.5 if key in self.regression_keys else 1.0

    def forward(self, losses: dict[str, Tensor], record: bool = True) -> dict[str, Tensor]:
        out = {}
        for k, v in losses.items():
            if k in self.log_vars:
                s = self.log_vars[k]
                out[k] = self._factor(k) * torch.exp(-s) * v + 0.5 * s
            else:
                out[k] = v
        self._last = {k: (self._factor(k) * math.exp(-float(self.log_vars[k].detach())) if k in self.log_vars else 1.0)
                      for k in losses}
        return out


WEIGHTINGS = {
    "fixed": FixedWeights,
    "alwa1": lambda **kw: ALWA(variant=1, **kw),
    "alwa2": lambda **kw: ALWA(variant=2, **kw),
    "self_balance": SelfBalance,
    "uncertainty": UncertaintyWeighting,
}
