"""Ranking-based losses: AP Loss (Chen et al.) and aLRP Loss (Oksuz et al., NeurIPS 2020).

The semantics are those of the authors' released implementations (tested against a loop written
from this description, not against that code): ranking over ALL entries of the batch
(flattened logits, targets 1 / 0 / -1 for positive / negative / ignored), the smoothed step H(x) = clamp(x / (2 delta) + 0.5, 0, 1), relevant
negatives with logit >= min(positive logits) - delta, and gradients given by the papers'
error-driven update (custom autograd Functions), not by autograd of a surrogate.

The authors loop over positives; here every sum of H over pairs is computed at once. With the
positive logits sorted, H(v - r_i) is 1 below a point, 0 above another and linear in between,
so for any set of values v_j the sums sum_j w_j H(v_j - r_i) (per positive) and
sum_i c_i H(v_j - r_i) (per value) come from two binary searches per value plus prefix sums
(``_StepSums``): O((N + P) log P) time and O(N + P) memory for N relevant negatives and P
positives, instead of the O(N P) of the pairwise form. All of it runs in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ap_loss", "alrp_loss"]


class _StepSums:
    """Sums of H(v_j - r_i) for values v [R] against references r [P] sorted ascending.

    H(v - r_i) is 1 when v >= r_i + delta, 0 when v <= r_i - delta and linear between, so
    the 2P breakpoints r_i -+ delta cut the line into 2P + 1 bins inside which every value
    sees the same split of the references into "H = 1" (i < full[bin]), "linear"
    (full[bin] <= i < part[bin]) and "H = 0". One binary search per value finds its bin;
    everything else is prefix sums over the P references. (A value exactly on a breakpoint
    may land in the neighbouring bin; H is continuous there, so the sums agree to rounding.)
    """

    def __init__(self, ref: Tensor, values: Tensor, delta: float) -> None:
        """ref [P] sorted ascending; values [R] (consumed: overwritten in place)."""
        self.ref, self.delta = ref, delta
        self.inv = 1.0 / (2.0 * delta)
        lo, hi = ref - delta, ref + delta
        edges = torch.sort(torch.cat([lo, hi])).values
        self.bin = _bucketize(values, edges)  # [R] in 0..2P
        left = torch.cat([edges.new_full((1,), -torch.inf), edges])  # left edge of every bin
        self.full = torch.searchsorted(hi, left, right=True)  # [2P + 1]
        self.part = torch.searchsorted(lo, left, right=True)
        self.lin = values.mul_(self.inv).add_(0.5)  # H(v - r) = lin - r * inv inside the ramp

    def per_ref(self, weights: Tensor | None = None) -> Tensor:
        """[P]: sum_j w_j H(v_j - r_i) (w = 1 when not given)."""
        n, k = self.ref.numel(), self.full.numel()
        a = self.lin if weights is None else weights * self.lin
        w_bin = torch.bincount(self.bin, weights, minlength=k).to(self.ref.dtype)
        a_bin = torch.bincount(self.bin, a, minlength=k).to(self.ref.dtype)

        def spread(index: Tensor, x: Tensor) -> Tensor:  # prefix sums of x by bin boundary
            return torch.zeros(n + 1, dtype=x.dtype, device=x.device).index_add_(0, index, x).cumsum(0)[:n]

        ones = w_bin.sum() - spread(self.full, w_bin)  # bins whose "H = 1" part covers i
        win_a = spread(self.full, a_bin) - spread(self.part, a_bin)
        win_w = spread(self.full, w_bin) - spread(self.part, w_bin)
        return ones + win_a - win_w * self.ref * self.inv

    def per_value(self, coef: Tensor) -> Tensor:
        """[R]: sum_i c_i H(v_j - r_i) for per-reference coefficients c [P]."""
        zero = coef.new_zeros(1)
        c = torch.cat([zero, coef.cumsum(0)])
        cs = torch.cat([zero, (coef * self.ref).cumsum(0)])
        c_full, c_part = c[self.full], c[self.part]
        intercept = c_full - (cs[self.part] - cs[self.full]) * self.inv
        slope = (c_part - c_full).take(self.bin)
        return slope.mul_(self.lin).add_(intercept.take(self.bin))


_GRID_CELLS = 1 << 16


def _bucketize(values: Tensor, edges: Tensor) -> Tensor:
    """#{edges <= v} for every value (edges sorted), like searchsorted(right=True) but faster.

    A uniform grid over the edges' range answers every value whose grid cell holds no edge
    with one table lookup; the cell map is monotone in v, so an edge in another cell is on
    the right side of v for sure. Values in cells that hold an edge fall back to a binary
    search (a small fraction when the grid is much finer than the number of edges).
    """
    lo, hi = float(edges[0]), float(edges[-1])
    if values.numel() < 4 * _GRID_CELLS or not hi > lo:
        return torch.searchsorted(edges, values, right=True)
    scale = (_GRID_CELLS - 2) / (hi - lo)

    def cell(x: Tensor) -> Tensor:
        return (x - lo).mul_(scale).clamp_(0, _GRID_CELLS - 1).long()

    edge_cells = cell(edges)
    below = torch.searchsorted(edge_cells, torch.arange(_GRID_CELLS, device=edges.device))
    has_edge = torch.zeros(_GRID_CELLS, dtype=torch.bool, device=edges.device)
    has_edge[edge_cells] = True
    table = torch.where(has_edge, -1, below)  # -1: this cell needs the binary search
    out = table.take(cell(values))
    todo = torch.nonzero(out < 0).squeeze(1)
    if todo.numel():
        out[todo] = torch.searchsorted(edges, values[todo], right=True)
    return out


class _Ranking:
    """The ranking quantities of RANKING_LOSSES.md for one batch, positives sorted ascending."""

    def __init__(self, logits: Tensor, targets: Tensor, delta: float) -> None:
        flat, t = logits.reshape(-1), targets.reshape(-1)
        pos_idx = torch.nonzero(t == 1).squeeze(1)
        s = flat[pos_idx].double()
        self.sort = torch.sort(s, stable=True).indices
        self.pos_idx = pos_idx[self.sort]  # flat indices of positives, ascending logit
        self.s = s[self.sort]
        threshold = float(self.s[0]) - delta
        self.neg_idx = torch.nonzero((t == 0) & (flat >= threshold)).squeeze(1)
        self.negatives = _StepSums(self.s, flat[self.neg_idx].double(), delta)
        self.positives = _StepSums(self.s, self.s.clone(), delta)
        # rank_pos(i) = 1 + sum_{k != i} H(s_k - s_i); the k = i term is H(0) = 1/2.
        self.rank_pos = 1.0 + self.positives.per_ref() - 0.5
        self.n_fp = self.negatives.per_ref()
        self.rank = self.rank_pos + self.n_fp
        self.prec = self.rank_pos / self.rank

    def save_grad(self, ctx, g_pos: Tensor, g_neg: Tensor, like: Tensor) -> None:
        """Keep the per-positive [P] and per-relevant-negative [R] gradients for backward."""
        ctx.shape, ctx.dtype = like.shape, like.dtype
        ctx.save_for_backward(self.pos_idx, self.neg_idx, g_pos.to(like.dtype), g_neg.to(like.dtype))


def _dense_grad(ctx, grad_out: Tensor) -> Tensor:
    """The saved sparse gradient, times grad_out, scattered into the logits' shape."""
    pos_idx, neg_idx, g_pos, g_neg = ctx.saved_tensors
    scale = grad_out.to(ctx.dtype)
    grad = torch.zeros(ctx.shape.numel(), dtype=ctx.dtype, device=g_pos.device)
    grad[pos_idx] = g_pos * scale
    grad[neg_idx] = g_neg * scale
    return grad.view(ctx.shape)


def _loss_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _check(logits: Tensor, targets: Tensor) -> None:
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape (one target per entry), got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )


class _APLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, delta: float) -> Tensor:
        r = _Ranking(logits.detach(), targets, delta)
        p = r.s.numel()
        interp = torch.cummax(r.prec, 0).values  # positives ascend in logit: running max
        g_pos = -(1.0 - interp)
        on_envelope = r.prec >= interp
        w = torch.where(on_envelope, torch.ones_like(interp),
                        (1.0 - interp) / torch.where(on_envelope, torch.ones_like(r.prec), 1.0 - r.prec))
        g_neg = r.negatives.per_value(w / r.rank)
        r.save_grad(ctx, g_pos / p, g_neg.div_(p), logits)
        return (1.0 - interp.mean()).to(_loss_dtype(logits))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        return _dense_grad(ctx, grad_out), None, None


def ap_loss(logits: Tensor, targets: Tensor, delta: float = 1.0) -> Tensor:
    """AP Loss: 1 - interpolated AP of the positives in the ranking of all entries.

    logits: classification logits of all anchors of all images, any shape (e.g. [B, A, C]);
    targets: same shape, 1 positive / 0 negative / -1 ignored. Returns a scalar whose
    backward is the error-driven update of Chen et al. (divided by the number of positives).
    Without positives the loss is 0 (and still part of the graph).
    """
    _check(logits, targets)
    with torch.autocast(logits.device.type, enabled=False):
        if not bool((targets == 1).any()):
            return (logits.sum() * 0).to(_loss_dtype(logits))
        return _APLossFunction.apply(logits, targets, float(delta))


class _ALRPClassificationFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, loc_errors: Tensor, delta: float,
                eps: float) -> tuple[Tensor, Tensor]:
        r = _Ranking(logits.detach(), targets, delta)
        p = r.s.numel()
        loc = loc_errors.detach().double()[r.sort]  # loc errors come in flat-index order
        loc_above = r.positives.per_ref(loc) - 0.5 * loc  # sum_{k != i} H(s_k - s_i) loc_k
        active = r.n_fp > eps
        g_pos = torch.where(active, -(r.n_fp + loc_above) / r.rank, torch.zeros_like(r.rank))
        coef = torch.where(active, -g_pos / torch.where(active, r.n_fp, torch.ones_like(r.n_fp)),
                           torch.zeros_like(r.rank))
        g_neg = r.negatives.per_value(coef)
        r.save_grad(ctx, g_pos / p, g_neg.div_(p), logits)
        rank = torch.empty_like(r.rank)
        rank[r.sort] = r.rank  # back to flat-index order of the positives
        ctx.mark_non_differentiable(rank)
        return (1.0 - r.prec.mean()).to(_loss_dtype(logits)), rank

    @staticmethod
    def backward(ctx, grad_cls: Tensor, grad_rank: Tensor):
        return _dense_grad(ctx, grad_cls), None, None, None, None


def alrp_loss(logits: Tensor, targets: Tensor, loc_errors: Tensor, delta: float = 1.0,
              eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """aLRP Loss -> (classification component, localisation component).

    logits, targets: as for ``ap_loss``; loc_errors [P]: one per positive entry in increasing
    flat-index order, 1 - GIoU(decoded prediction, gt) in [0, 2), differentiable w.r.t. the
    box branch. The classification component's gradient w.r.t. the logits is the paper's
    error-driven update; the localisation component (mean over positives, by decreasing
    logit with a stable sort, of the cumulative loc errors over the detached rank) sends its
    gradient only into ``loc_errors``. The reported aLRP value is cls + loc; a trainer
    optimises cls + SB * loc. Without positives both are 0 (and still part of the graph).
    """
    _check(logits, targets)
    num_pos = int((targets == 1).sum())
    if loc_errors.shape != (num_pos,):
        raise ValueError(f"loc_errors must have shape [{num_pos}] (one per positive), got {tuple(loc_errors.shape)}")
    with torch.autocast(logits.device.type, enabled=False):
        if num_pos == 0:
            zero = (logits.sum() * 0).to(_loss_dtype(logits))
            return zero, zero + loc_errors.sum() * 0
        cls, rank = _ALRPClassificationFunction.apply(logits, targets, loc_errors, float(delta), float(eps))
        pos_logits = logits.detach().reshape(-1)[torch.nonzero(targets.reshape(-1) == 1).squeeze(1)]
        order = torch.sort(pos_logits, descending=True, stable=True).indices
        loc = loc_errors.to(_loss_dtype(logits))[order]
        loc_loss = (loc.cumsum(0) / rank[order].to(loc.dtype)).mean()
        return cls, loc_loss
