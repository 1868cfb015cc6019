"""Reading a run's metric records (metrics.jsonl lines): which are training and which evaluation
records, one per iteration / epoch, and which fields are loss components. Shared by the run
logger (results.csv) and the plots (results.png)."""

from __future__ import annotations

import math

# train-record fields that are not loss components (see minidet.criterion and Trainer.train_epoch)
_NOT_LOSSES = {"kind", "epoch", "iteration", "lr", "img_per_s", "num_pos", "pos_per_image", "grad_ratio"}


def finite(v) -> bool:
    """Whether a record value is a finite number (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def last_per_key(records: list[dict], key: str) -> list[dict]:
    """One record per value of ``key`` (the last one: a resumed run logs the iterations after its
    checkpoint again), in increasing ``key`` order."""
    out = {r[key]: r for r in records if key in r}
    return [out[k] for k in sorted(out)]


def train_and_evals(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train records, one per iteration; evaluation records, one per epoch), each deduplicated
    by ``last_per_key``."""
    return (last_per_key([r for r in records if r.get("kind") == "train"], "iteration"),
            last_per_key([r for r in records if r.get("kind") == "eval"], "epoch"))


def loss_keys(train: list[dict]) -> list[str]:
    """The loss components logged in train records: "loss" first, then the raw components
    (cls, reg, and family-specific parts), without weights, weighted copies or diagnostics."""
    keys = {k for r in train for k, v in r.items() if finite(v)} - _NOT_LOSSES
    keys = {k for k in keys if not k.startswith("weight_") and not k.endswith("_weighted") and not k.startswith("score_iou")}
    return sorted(keys, key=lambda k: (k != "loss", k))
