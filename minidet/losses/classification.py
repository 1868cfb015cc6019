"""Classification losses: cross-entropy (softmax and binary), focal (sigmoid and softmax),
YOLO v1's sum-squared error on probabilities, and the multi-class hinge (SVM) loss.

Every function takes ``weight`` (per element, broadcastable to the unreduced loss) and
``reduction`` in {"none", "sum", "mean"}; inputs in float16/bfloat16 are computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..boxes import use_device_path
from .reduction import as_float32, reduce_loss

__all__ = [
    "softmax_cross_entropy",
    "binary_cross_entropy",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_from_labels",
    "softmax_focal_loss",
    "yolo_sse",
    "multiclass_hinge_loss",
]


def _check_class_targets(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [N, C] and integer targets [N], got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )


def _split_ignored(targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(mask [N] of non-ignored targets, targets with ignored entries replaced by class 0)."""
    valid = targets != ignore_index
    return valid, torch.where(valid, targets, torch.zeros_like(targets))


def softmax_cross_entropy(logits: Tensor, targets: Tensor, weight: Tensor | None = None,
                          reduction: str = "mean", ignore_index: int = -1) -> Tensor:
    """-log softmax(logits)[target]. logits [N, C], targets [N] int64 -> [N] or scalar.

    Computed as logsumexp(x) - x[target] (stable for any logit size). Entries whose target
    is ``ignore_index`` get loss 0 and are left out of the "mean".
    """
    _check_class_targets(logits, targets)
    x = as_float32(logits)
    valid, safe_t = _split_ignored(targets, ignore_index)
    loss = torch.logsumexp(x, dim=1) - x.gather(1, safe_t[:, None]).squeeze(1)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "mean":
        weighted = reduce_loss(loss, weight, "sum")
        return weighted / valid.sum().clamp(min=1)
    return reduce_loss(loss, weight, reduction)


def binary_cross_entropy(logits: Tensor, targets: Tensor, weight: Tensor | None = None,
                         reduction: str = "mean") -> Tensor:
    """Element-wise BCE on logits: -(t log sigma(x) + (1 - t) log(1 - sigma(x))), any shape."""
    x, t = as_float32(logits), as_float32(targets).to(as_float32(logits).dtype)
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    return reduce_loss(loss, weight, reduction)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       weight: Tensor | None = None, reduction: str = "sum") -> Tensor:
    """RetinaNet's focal loss FL = -alpha_t (1 - p_t)^gamma log(p_t) on sigmoid logits.

    logits and targets (0/1 or soft labels) of any equal shape; alpha < 0 disables the
    alpha balancing. The default "sum" is what RetinaNet normalises by #positives.
    """
    x, t = as_float32(logits), as_float32(targets).to(as_float32(logits).dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t).pow(gamma) if gamma != 0 else ce
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return reduce_loss(loss, weight, reduction)


_FOCAL_CHUNK = 1 << 20  # elements per chunk (CPU form): the temporaries stay in cache


class _FocalFromLabels(torch.autograd.Function):
    """Sigmoid focal loss summed over [N, C] logits with one-hot targets given as labels.

    Writes the analytic gradient straight into one buffer, so no [N, C] target tensor or
    autograd temporaries exist. With q = 1 - p_t and ce = -log p_t: loss = alpha_t q^gamma ce
    and d loss / d x = (1 - 2t) alpha_t q^gamma (q + gamma (1 - q) ce). Every entry is first
    treated as a negative (t = 0); the few positive entries (one per row at most) are then
    corrected in place.

    Two forms (``minidet.boxes.use_device_path``): on the CPU, chunk by chunk so that the
    temporaries stay in cache, finding the dropped rows and the positives with ``nonzero``; on an
    accelerator, unchunked and without host syncs (the positives are corrected with a gather /
    scatter over every row, masked). The gradients are the same float operations element by
    element; the loss is the same sum, accumulated in float64 instead of float32 chunk dots.
    """

    @staticmethod
    def forward(ctx, logits, labels, weight, alpha: float, gamma: float):
        a_neg, a_pos = (1.0 - alpha, alpha) if alpha >= 0 else (1.0, 1.0)
        if use_device_path(logits.device):
            total, grad = _focal_from_labels_unchunked(logits, labels, weight, a_neg, a_pos, gamma)
            ctx.grad = grad
            return total
        n, c = logits.shape
        grad = torch.empty_like(logits)
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        binary_weight = bool(((weight == 0) | (weight == 1)).all())
        rows = max(1, _FOCAL_CHUNK // max(c, 1))
        for s in range(0, n, rows):
            x = logits[s : s + rows].float()
            w = weight[s : s + rows]
            p = torch.sigmoid(x)
            ce = F.softplus(x)  # -log(1 - p): every entry taken as a negative first
            mod = _pow(p, gamma)
            if binary_weight:
                dropped = torch.nonzero(w == 0).squeeze(1)
                mod[dropped] = 0
            else:
                mod.mul_(w[:, None])
            neg_sum = torch.dot(mod.view(-1), ce.view(-1)) * a_neg
            # gradient of a negative: a_neg p^gamma (p + gamma (1 - p) ce)
            g = (1 - p).mul_(ce).mul_(gamma * a_neg).add_(p, alpha=a_neg)
            g = torch.mul(g, mod, out=grad[s : s + rows])
            lab = labels[s : s + rows]
            r = torch.nonzero((lab >= 0) & (lab < c) & (w != 0)).squeeze(1)
            if r.numel():
                k = lab[r]
                xp = x[r, k]
                neg_sum = neg_sum - torch.dot(mod[r, k], ce[r, k]) * a_neg
                q = torch.sigmoid(-xp)  # 1 - p
                ce1 = F.softplus(-xp)  # -log p
                mod1 = _pow(q, gamma) * (w[r] * a_pos)
                neg_sum = neg_sum + torch.dot(mod1, ce1)
                g[r, k] = (-mod1 * (q + gamma * (1 - q) * ce1)).to(g.dtype)
            total += neg_sum.double()
        ctx.grad = grad  # an attribute, not a saved tensor: backward hands it over without a copy
        return total.float()

    @staticmethod
    def backward(ctx, grad_out):
        # The buffer is scaled in place (no second [N, C] allocation), so it serves one backward.
        grad = getattr(ctx, "grad", None)
        if grad is None:
            raise RuntimeError("sigmoid_focal_loss_from_labels supports one backward pass per forward")
        ctx.grad = None
        return grad.mul_(grad_out.to(grad.dtype)), None, None, None, None


def _focal_from_labels_unchunked(logits: Tensor, labels: Tensor, w: Tensor, a_neg: float, a_pos: float,
                                 gamma: float) -> tuple[Tensor, Tensor]:
    """The accelerator form of ``_FocalFromLabels.forward``: (loss, gradient buffer) with the
    chunked form's element-wise operations, on the whole [N, C] at once and without host syncs.
    The sums are taken in float64 (one float32 dot over ~10^8 terms would lose ~1e-4)."""
    n, c = logits.shape
    if c == 0:
        return torch.zeros((), device=logits.device), torch.zeros_like(logits)
    x = logits.float()
    p = torch.sigmoid(x)
    ce = F.softplus(x)  # -log(1 - p): every entry taken as a negative first
    mod = _pow(p, gamma)
    # The CPU form zeroes the dropped rows when every weight is 0 or 1 and multiplies by the
    # weight otherwise; both at once, decided on the device: mod * w, then exact zeros where
    # w == 0 if the weights are binary (mod * 1 == mod exactly).
    binary = ((w == 0) | (w == 1)).all()
    mod.mul_(w[:, None]).masked_fill_(((w == 0) & binary)[:, None], 0)
    # Positives: one entry per row at most (column k of row i where valid), gathered densely.
    valid = (labels >= 0) & (labels < c) & (w != 0)
    k = torch.where(valid, labels, torch.zeros_like(labels))[:, None]
    zero = torch.zeros((), dtype=mod.dtype, device=mod.device)
    xp = x.gather(1, k).squeeze(1)
    neg_at_pos = torch.where(valid, mod.gather(1, k).squeeze(1) * ce.gather(1, k).squeeze(1), zero)
    q = torch.sigmoid(-xp)  # 1 - p
    ce1 = torch.where(valid, F.softplus(-xp), zero)  # -log p
    mod1 = torch.where(valid, _pow(q, gamma) * (w * a_pos), zero)
    # gradient of a negative: a_neg p^gamma (p + gamma (1 - p) ce), written into one buffer
    g = (1 - p).mul_(ce).mul_(gamma * a_neg).add_(p, alpha=a_neg)
    del p
    grad = torch.mul(g, mod, out=g if logits.dtype == g.dtype else torch.empty_like(logits))
    del g
    g_pos = (-mod1 * (q + gamma * (1 - q) * ce1)).to(grad.dtype)
    grad.scatter_(1, k, torch.where(valid, g_pos, grad.gather(1, k).squeeze(1))[:, None])
    # loss: every entry as a negative, minus that term at the positives, plus their own term
    total = ce.mul_(mod).sum(dtype=torch.float64) * a_neg
    total = total - neg_at_pos.sum(dtype=torch.float64) * a_neg + torch.sum(mod1 * ce1, dtype=torch.float64)
    return total.float(), grad


def _pow(x: Tensor, gamma: float) -> Tensor:
    """x ** gamma as a new tensor (cheap for the common gamma in {0, 1, 2})."""
    if gamma == 2:
        return x * x
    if gamma == 1:
        return x.clone()
    if gamma == 0:
        return torch.ones_like(x)
    return x.pow(gamma)


def sigmoid_focal_loss_from_labels(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                                   weight: Tensor | None = None) -> Tensor:
    """Summed sigmoid focal loss for one-hot targets given as class labels (fast path).

    logits [N, C]; labels [N]: the positive class of each row, or any value outside 0..C-1
    (e.g. -1) for an all-negative row; weight [N] per row (0 drops a row, e.g. an ignored
    anchor). Equals ``sigmoid_focal_loss(logits, one_hot(labels) * weight, ..., "sum")``
    but builds no [N, C] target and has an analytic gradient: on the CPU in cache-sized
    chunks, on an accelerator in one pass without host syncs (``_FocalFromLabels``).
    gamma = 0 with alpha < 0 is the plain binary cross-entropy sum.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    w = torch.ones(logits.shape[0], device=logits.device) if weight is None else as_float32(weight)
    with torch.autocast(logits.device.type, enabled=False):
        return _FocalFromLabels.apply(logits, labels, w, float(alpha), float(gamma))


def softmax_focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: Tensor | None = None,
                       weight: Tensor | None = None, reduction: str = "sum", ignore_index: int = -1) -> Tensor:
    """Focal loss on a softmax: -alpha[t] (1 - p_t)^gamma log p_t. logits [N, C], targets [N].

    ``alpha`` is an optional per-class weight [C] (e.g. a lower weight for the background
    class of a softmax head); ignored targets give 0.
    """
    _check_class_targets(logits, targets)
    x = as_float32(logits)
    valid, safe_t = _split_ignored(targets, ignore_index)
    log_pt = torch.log_softmax(x, dim=1).gather(1, safe_t[:, None]).squeeze(1)
    loss = -((1 - log_pt.exp()).clamp(min=0).pow(gamma)) * log_pt
    if alpha is not None:
        loss = loss * as_float32(alpha).to(loss.device)[safe_t]
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    return reduce_loss(loss, weight, reduction)


def yolo_sse(probs: Tensor, targets: Tensor, obj_mask: Tensor | None = None, lambda_noobj: float = 0.5,
             weight: Tensor | None = None, reduction: str = "sum") -> Tensor:
    """YOLO v1's sum-squared error on probabilities (any equal shapes).

    For confidences: probs [N] (predicted, in [0, 1]), targets [N] (IoU of the responsible
    predictor with its gt, 0 elsewhere), obj_mask [N] True for responsible predictors; the
    others weigh ``lambda_noobj``. For class probabilities of cells with an object: probs
    [M, C] against one-hot targets [M, C] with obj_mask None (all weigh 1).
    """
    p, t = as_float32(probs), as_float32(targets).to(as_float32(probs).dtype)
    loss = (p - t) ** 2
    if obj_mask is not None:
        loss = loss * torch.where(obj_mask, 1.0, lambda_noobj).to(loss.dtype)
    return reduce_loss(loss, weight, reduction)


def multiclass_hinge_loss(logits: Tensor, targets: Tensor, margin: float = 1.0, weight: Tensor | None = None,
                          reduction: str = "mean", ignore_index: int = -1) -> Tensor:
    """Multi-class SVM hinge loss: sum_{c != t} max(0, margin - x_t + x_c) / C.

    logits [N, C], targets [N] -> [N] or scalar; the same normalisation as
    ``torch.nn.functional.multi_margin_loss`` (p = 1). Ignored targets give 0 and are left
    out of the "mean".
    """
    _check_class_targets(logits, targets)
    x = as_float32(logits)
    valid, safe_t = _split_ignored(targets, ignore_index)
    x_t = x.gather(1, safe_t[:, None])
    margins = (margin - x_t + x).clamp(min=0)
    margins = margins.scatter(1, safe_t[:, None], 0.0)  # the target class itself does not count
    loss = margins.sum(1) / x.shape[1]
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "mean":
        return reduce_loss(loss, weight, "sum") / valid.sum().clamp(min=1)
    return reduce_loss(loss, weight, reduction)
