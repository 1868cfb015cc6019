"""The optimiser: SGD or AdamW over two parameter groups, with and without weight decay."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..configuration import effective_lr
from ..distributed import world_size

__all__ = ["NORM_LAYERS", "parameter_groups", "build_optimizer"]

# Normalisation layers whose (affine) parameters never get weight decay. _NormBase covers
# BatchNorm1d/2d/3d, SyncBatchNorm and InstanceNorm; torchvision's FrozenBatchNorm2d has buffers
# only, so there is nothing of it to place.
NORM_LAYERS = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    NORM_LAYERS = (*NORM_LAYERS, nn.RMSNorm)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters of ``model`` in two optimiser groups -> [decay, no_decay].

    The rule: weight decay (``weight_decay``) applies only to the weights of convolutions and
    linear layers (the parameters with 2 or more dimensions); weight decay 0 for

    - every parameter of a normalisation layer (BatchNorm, SyncBatchNorm, GroupNorm, LayerNorm,
      InstanceNorm; FrozenBatchNorm has no trainable parameters),
    - every bias,
    - every other parameter with at most one dimension (e.g. SSD's L2Norm scale),
    - every parameter of the loss, ``model.criterion`` (e.g. the learned log-variances of the
      uncertainty weighting: decaying them pulls the loss weights towards 1).

    This is what mmdetection's ``paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0)``,
    detectron2's ``WEIGHT_DECAY_NORM = 0`` with ``WEIGHT_DECAY_BIAS = 0`` and timm's
    ``param_groups_weight_decay`` (``ndim <= 1`` or a bias) do. Each parameter appears once (shared
    parameters too), the model's in ``model.parameters()`` order then the criterion's; frozen parameters (``requires_grad``
    False) are left out; a group without parameters is dropped.
    """
    no_decay: set[int] = set()
    criterion = getattr(model, "criterion", None)
    if isinstance(criterion, nn.Module):
        no_decay.update(id(p) for p in criterion.parameters())
    for module in model.modules():
        if isinstance(module, NORM_LAYERS):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name.rsplit(".", 1)[-1] == "bias":
            no_decay.add(id(p))
    decay_params, no_decay_params = [], []
    for p in trainable_parameters(model):
        (no_decay_params if id(p) in no_decay else decay_params).append(p)
    groups = [{"params": decay_params, "weight_decay": weight_decay},
              {"params": no_decay_params, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates: the model's and its criterion's (held beside the
    network, see ``Detector``), each once, frozen ones left out."""
    params = list(model.parameters())
    criterion = getattr(model, "criterion", None)
    if isinstance(criterion, nn.Module):
        params += list(criterion.parameters())
    return [p for p in dict.fromkeys(params) if p.requires_grad]


def build_optimizer(model: nn.Module, args, grouped: bool = True) -> torch.optim.Optimizer:
    """``args.optimizer`` ("sgd" with ``args.momentum``, or "adamw") at ``args.lr`` (scaled
    linearly from ``args.base_batch`` images to the images of one step, ``effective_lr``) over
    ``parameter_groups(model, args.weight_decay)``; ``grouped=False``: one group where every
    trainable parameter gets ``args.weight_decay`` (what minidet did before the groups; kept for
    resuming runs that were started that way)."""
    if grouped:
        params = parameter_groups(model, args.weight_decay)
    else:
        params = [{"params": trainable_parameters(model), "weight_decay": args.weight_decay}]
    lr = effective_lr(vars(args), world_size()) if hasattr(args, "base_batch") else args.lr
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        # fused: one kernel for all tensors (2.5x faster than the per-tensor loop torch uses on the CPU)
        fused = all(p.device.type in ("cpu", "cuda") for group in params for p in group["params"])
        return torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay, fused=fused or None)
    raise ValueError(f"unknown optimizer {args.optimizer!r}; choose sgd or adamw")
