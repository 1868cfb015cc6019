"""Loss-weighting schemes: how one step's raw loss components become the training loss.

Each scheme is an ``nn.Module``: ``forward(losses, record=True)`` takes the step's raw
components (``{"cls": ..., "reg": ..., ...}``, scalar tensors) and returns them weighted (same
keys; the training loss is their sum); ``weights`` gives the weights just applied. ``record``
is False for steps that must not enter a scheme's statistics (aLRP: steps without positives);
it may be a boolean 0-dim tensor on the device (the Criterion passes ``num_pos > 0``), so that
the decision is taken there without a host sync.
State (weights, histories, counters) is in ``state_dict`` so a resumed run continues exactly.

- ``FixedWeights``: constant task weights (also YOLO's lambdas).
- ``ALWA``: adaptive loss weight adjustment, variants 1 (mean + std) and 2 (std).
- ``SelfBalance``: aLRP Loss's SB weight on the localisation component.
- ``UncertaintyWeighting``: Kendall et al.'s learned homoscedastic uncertainty.

No host syncs in a training step. The adaptive schemes keep their records in device buffers (a
window / period history and a record count) and take their updates with ``torch.where`` on the
device: a training step never reads a tensor on the host. Reading ``weights`` or a history
(``cls_history``) does, and so does ``state_dict()`` (the histories are saved as lists of floats,
the format of earlier versions) — for logging and checkpoints, outside the step. The updates are
the same float64 computations as the earlier Python-float code, in the same order: sums are
sequential (``cumsum``; exactly Python's ``sum`` on the CPU), squares are ``d * d`` (correctly
rounded; CPython's ``d ** 2`` goes through libm's ``pow``, which is 1 ulp off for ~0.1% of
values), so trajectories agree with it to the last float64 ulp.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

__all__ = ["LossWeighting", "FixedWeights", "ALWA", "SelfBalance", "UncertaintyWeighting", "WEIGHTINGS",
           "build_weighting"]

Record = bool | Tensor


def _scale(loss: Tensor, weight: float | Tensor) -> Tensor:
    """loss * weight with the result in loss's dtype, computed as ``loss * python_float`` is
    (half-precision losses in float32, the weight rounded to float32 / kept in float64)."""
    if not isinstance(weight, Tensor):
        return loss * weight
    if not (loss.is_floating_point() or loss.is_complex()):
        loss = loss.to(torch.get_default_dtype())  # as an integer tensor * a Python float
    if loss.dtype in (torch.float16, torch.bfloat16):
        return (loss.float() * weight.float()).to(loss.dtype)
    return loss * weight.to(loss.dtype)


def _as_record(record: Record) -> Record:
    """A boolean tensor stays (decided on its device); anything else becomes a Python bool."""
    return record.bool() if isinstance(record, Tensor) else bool(record)


class LossWeighting(nn.Module):
    """Base class: subclasses implement ``_weights()`` (current weights) and may ``_observe``."""

    def forward(self, losses: dict[str, Tensor], record: Record = True) -> dict[str, Tensor]:
        record = _as_record(record)
        weights = self._weights(losses)
        weighted = {k: _scale(v, weights.get(k, 1.0)) for k, v in losses.items()}
        if self.training and record is not False:
            self._observe(losses, weighted, record)
        self._last = {k: weights.get(k, 1.0) for k in losses}
        return weighted

    @property
    def weights(self) -> dict[str, float]:
        """The weights applied by the latest forward (empty before the first), as floats.
        Reading them waits for the device; ``weight_tensors()`` does not."""
        return {k: float(v) for k, v in getattr(self, "_last", {}).items()}

    def weight_tensors(self) -> dict[str, float | Tensor]:
        """The weights applied by the latest forward without a host sync: Python floats for
        constant weights, detached 0-dim tensors (on the device) for the adaptive ones."""
        return dict(getattr(self, "_last", {}))

    def _weights(self, losses: dict[str, Tensor]) -> dict[str, float | Tensor]:
        """Current weights: floats, or 0-dim tensors that later in-place updates do not change."""
        raise NotImplementedError

    def _observe(self, losses: dict[str, Tensor], weighted: dict[str, Tensor], record: Record) -> None:
        pass


class FixedWeights(LossWeighting):
    """Constant weights per component; components not named weigh 1. ``cls_reg``: (cls, reg)."""

    MODEL_OPTIONS = {"loss_weights": "cls_reg"}  # build_weighting: the model option -> this keyword

    def __init__(self, cls_reg: Sequence[float] | None = None, **weights: float) -> None:
        super().__init__()
        if cls_reg is not None:
            weights = {"cls": cls_reg[0], "reg": cls_reg[1], **weights}
        self.fixed = {k: float(v) for k, v in (weights or {"cls": 1.0, "reg": 1.0}).items()}

    def _weights(self, losses):
        return self.fixed

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.fixed.items())


def _sequential_sum(values: Tensor, count: Tensor | None = None) -> Tensor:
    """Row sums of values [R, K] added left to right (Python's ``sum``; ``cumsum`` is sequential
    on the CPU), over the first ``count`` entries of each row when given (the others count 0)."""
    if count is not None:
        inside = torch.arange(values.shape[1], device=values.device) < count
        values = torch.where(inside, values, torch.zeros_like(values))
    if values.shape[1] == 0:
        return values.new_zeros(values.shape[0])
    return values.cumsum(1)[:, -1]


class _DeviceHistory(nn.Module):
    """Records of (cls, reg) pairs in a device buffer [2, capacity] with a device-side count.

    ``_append`` writes at the count and advances it by ``record`` (a bool or a bool tensor), so
    whether a step is recorded is decided on the device. The buffer grows by doubling, driven by
    a host-side upper bound of the count (the calls since the last clear), so no sync is needed.
    ``cls_history`` / ``reg_history`` and the extra state read the records as float lists.
    """

    _history: Tensor
    _count: Tensor
    _grows = True  # False: the owner clears the records before the buffer can fill (ALWA's window)

    def _init_history(self, capacity: int) -> None:
        self.register_buffer("_history", torch.zeros(2, capacity, dtype=torch.float64), persistent=False)
        self.register_buffer("_count", torch.zeros((), dtype=torch.int64), persistent=False)
        self._calls = 0  # upper bound of _count (appends since the last clear), known on the host

    def _append(self, cls: Tensor, reg: Tensor, record: Record) -> None:
        if self._grows and self._history.shape[1] <= self._calls:
            grow = max(16, self._history.shape[1])
            self._history = torch.cat([self._history, self._history.new_zeros(2, grow)], dim=1)
        values = torch.stack([cls.detach().reshape(()).double(), reg.detach().reshape(()).double()])
        self._history.index_copy_(1, self._count.view(1), values[:, None])
        if isinstance(record, Tensor):
            self._count += record.to(torch.int64)
        else:
            self._count += 1
        self._calls += 1

    def _clear(self, where: Tensor | None = None) -> None:
        """Forget the records (where the 0-dim bool ``where`` holds, if given)."""
        if where is None:
            self._count.zero_()
            self._calls = 0
        else:
            self._count.masked_fill_(where, 0)

    def _records(self, row: int) -> list[float]:
        return self._history[row, : int(self._count)].tolist()

    @property
    def cls_history(self) -> list[float]:
        """The recorded classification values (reads the device)."""
        return self._records(0)

    @property
    def reg_history(self) -> list[float]:
        """The recorded regression values (reads the device)."""
        return self._records(1)

    def get_extra_state(self) -> dict:
        return {"cls_history": self.cls_history, "reg_history": self.reg_history}

    def set_extra_state(self, state: dict) -> None:
        cls, reg = list(state["cls_history"]), list(state["reg_history"])
        if len(cls) != len(reg):
            raise ValueError(f"weighting state: {len(cls)} cls but {len(reg)} reg records")
        n = len(cls)
        capacity = max(self._history.shape[1], n + 1)
        history = torch.zeros(2, capacity, dtype=torch.float64)
        if n:
            history[:, :n] = torch.tensor([cls, reg], dtype=torch.float64)
        self._history = history.to(self._history.device)
        self._count = torch.tensor(n, dtype=torch.int64).to(self._count.device)
        self._calls = n


class ALWA(_DeviceHistory, LossWeighting):
    """Adaptive Loss Weight Adjustment (variants ALWA_1 and ALWA_2).

    Keeps the WEIGHTED cls and reg values of the last ``interval`` recorded steps. When the
    window is full it computes, for each, mean + sample std (variant 1) or the sample std
    (variant 2, ddof = 1); if cls > reg it sets lambda_cls = 1 - (cls - reg) / cls, then clears
    the window. lambda_reg keeps its initial value. The new weight applies from the next step.
    The window, its count and the update live on the device (see the module docstring).
    """

    MODEL_OPTIONS = {"alwa_interval": "interval", "loss_weights": "init"}  # (build_weighting)

    def __init__(self, variant: int = 2, interval: int = 100, init: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        if variant not in (1, 2):
            raise ValueError(f"ALWA variant must be 1 or 2, got {variant}")
        if interval < 2:
            raise ValueError(f"ALWA interval must be >= 2 (a sample std needs two values), got {interval}")
        self.variant, self.interval = variant, interval
        self.register_buffer("lambda_cls", torch.tensor(float(init[0]), dtype=torch.float64))
        self.register_buffer("lambda_reg", torch.tensor(float(init[1]), dtype=torch.float64))
        self._init_history(interval)

    def _weights(self, losses):
        return {"cls": self.lambda_cls.detach().clone(), "reg": self.lambda_reg.detach().clone()}

    def _statistic(self, values: Tensor, count: Tensor) -> Tensor:
        """[2]: mean + sample std (variant 1) or the sample std (variant 2) of the first
        ``count`` values of each row, as ``sum(v) / n`` and ``sqrt(sum((v - mean)^2) / (n - 1))``."""
        n = count.to(torch.float64)
        mean = _sequential_sum(values, count) / n
        dev = values - mean[:, None]
        std = (_sequential_sum(dev * dev, count) / (n - 1)).sqrt()
        return mean + std if self.variant == 1 else std

    # The window is cleared when it holds ``interval`` records, so the count is below the
    # capacity (``interval``, or n + 1 after loading n >= interval records) at every append.
    _grows = False

    def _observe(self, losses, weighted, record):
        self._append(weighted["cls"], weighted["reg"], record)
        full = self._count >= self.interval
        if isinstance(record, Tensor):
            full = full & record
        stat = self._statistic(self._history, self._count)
        cls, reg = stat[0], stat[1]
        update = full & (cls > reg)
        self.lambda_cls.copy_(torch.where(update, 1.0 - (cls - reg) / cls, self.lambda_cls))
        self._clear(where=full)

    def extra_repr(self) -> str:
        return f"variant={self.variant}, interval={self.interval}"


class SelfBalance(_DeviceHistory, LossWeighting):
    """aLRP Loss's self-balance: the localisation component ("reg") is multiplied by SB.

    SB starts at ``init`` (50). Recorded steps (those with positives) store the float values
    of cls and of the unweighted reg. When a period of ``period`` steps ends, SB becomes
    (mean reg + mean cls) / mean reg over the period, the records are cleared, and the new SB
    already applies to the step that completed the period. ``period=None``: only
    ``end_period()`` closes a period (``python -m minidet.train`` builds it with one epoch's steps).
    Records and SB live on the device; the step counter ``steps`` also has a host copy (read
    from the buffer once after a ``load_state_dict``), so the period end needs no sync.
    """

    MODEL_OPTIONS = {"sb_period": "period"}  # (build_weighting)

    def __init__(self, init: float = 50.0, period: int | None = None) -> None:
        super().__init__()
        self.period = period
        self.register_buffer("sb", torch.tensor(float(init), dtype=torch.float64))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self._init_history(16)
        self._host_steps: int | None = 0

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._host_steps = None  # ``steps`` was loaded: read it again once

    def forward(self, losses: dict[str, Tensor], record: Record = True) -> dict[str, Tensor]:
        if self.training:
            record = _as_record(record)
            if record is not False:
                self._append(losses["cls"], losses["reg"], record)
            if self._host_steps is None:
                self._host_steps = int(self.steps)
            self.steps += 1
            self._host_steps += 1
            if self.period and self._host_steps % self.period == 0:
                self.end_period()
        return super().forward(losses, record=False)

    def end_period(self) -> None:
        """Close the period: update SB from its records (if any) and clear them."""
        n = self._count.to(torch.float64)
        sums = _sequential_sum(self._history, self._count)
        mean_cls, mean_reg = sums[0] / n, sums[1] / n
        update = (self._count > 0) & (mean_reg > 0)
        self.sb.copy_(torch.where(update, (mean_reg + mean_cls) / mean_reg, self.sb))
        self._clear()

    def _weights(self, losses):
        return {"cls": 1.0, "reg": self.sb.detach().clone()}

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

    def forward(self, losses: dict[str, Tensor], record: Record = True) -> dict[str, Tensor]:
        out = {}
        for k, v in losses.items():
            if k in self.log_vars:
                s = self.log_vars[k]
                out[k] = self._factor(k) * torch.exp(-s) * v + 0.5 * s
            else:
                out[k] = v
        # the effective weights factor * exp(-s), in float64 on the device (no sync)
        self._last = {k: (self._factor(k) * torch.exp(-self.log_vars[k].detach().double())
                          if k in self.log_vars else 1.0) for k in losses}
        return out


WEIGHTINGS = {
    "fixed": FixedWeights,
    "alwa1": partial(ALWA, variant=1),
    "alwa2": partial(ALWA, variant=2),
    "self_balance": SelfBalance,
    "uncertainty": UncertaintyWeighting,
}


def _model_options(make) -> dict:
    """The ``MODEL_OPTIONS`` of a WEIGHTINGS entry (a class, or a functools.partial of one)."""
    return getattr(getattr(make, "func", make), "MODEL_OPTIONS", {})


def build_weighting(name: str | None, options: dict | None = None, **model_options) -> LossWeighting | None:
    """``WEIGHTINGS[name]`` built with ``options`` (``--weighting-option KEY=VALUE``) over the model
    options the scheme reads (its class's ``MODEL_OPTIONS``: model option -> its keyword, e.g.
    ALWA's ``alwa_interval`` -> ``interval``; unset ones are left out). None: the criterion's own
    scheme, except that ``loss_weights`` alone means fixed weights."""
    from .assigners import checked_options

    if name is None and model_options.get("loss_weights") is not None:
        name = "fixed"
    if name is None:
        if options:
            raise ValueError("--weighting-option needs --weighting (the scheme it configures)")
        return None
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; choose one of: {', '.join(WEIGHTINGS)}")
    make = WEIGHTINGS[name]
    reads = _model_options(make)
    given = {k: v for k, v in model_options.items() if v is not None}
    if "loss_weights" in given:
        if len(given["loss_weights"]) != 2 or min(given["loss_weights"]) < 0:
            raise ValueError(f"loss_weights must be two non-negative numbers (cls, reg), got {given['loss_weights']}")
        if "loss_weights" not in reads:
            takers = [n for n, m in WEIGHTINGS.items() if "loss_weights" in _model_options(m)]
            raise ValueError(f"loss_weights set the weights of {' / '.join(takers)}; the {name} weighting sets its own")
    checked_options("weighting", name, make, options)
    # (an option given by name wins over the model option that would set the same keyword)
    return make(**{kw: given[opt] for opt, kw in reads.items() if opt in given} | (options or {}))
