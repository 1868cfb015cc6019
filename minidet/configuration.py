"""A training run's configuration: resolved once, saved with the run, the truth on resume.

Every ``python -m minidet.train`` flag defaults to "unset"; the value a run uses comes from the
first of these that sets it (highest first):

1. the flags given on the command line;
2. on ``--resume``, the configuration saved in the checkpoint (so a resumed run rebuilds the
   same model, criterion and optimizer; the flags given with it override only what they name);
3. the recipe (``--config train/RECIPE.yaml``, whose keys are the flags);
4. the preset: ``small`` (the tuned small-CPU setup of the no-flag run) unless a recipe is
   given or ``--preset none``; a preset has common keys and keys per family;
5. the family's defaults, next to ``build_model`` (``minidet.models.family_options`` for the
   model, ``Family.training_defaults`` for image size and augmentation): the published settings;
6. the optimizer's defaults (``OPTIMIZER_DEFAULTS``: SGD 0.01 for 16 images, momentum 0.9,
   weight decay 1e-4; AdamW 0.003, weight decay 0.05);
7. ``ENGINE_DEFAULTS``.

The learning rate, momentum, weight decay and reference batch of a preset or recipe belong to
its optimizer: when the run's optimizer differs, they are not used (``--optimizer sgd`` never
inherits AdamW's settings). ``lr`` is for ``base_batch`` images; the optimizer uses ``lr *
images per step (all processes) / base_batch`` (linear scaling; ``base_batch`` unset: as given).

The run's length is ``epochs`` or ``iters`` (optimizer steps), one or the other: the highest
layer that sets either decides (``--iters`` on the command line over a recipe's or the preset's
``epochs``, ``--epochs`` with ``--resume`` over the saved ``iters``); the command line or a
recipe giving both is an error. With ``iters`` the resolved ``epochs`` is None until the trainer
derives it (ceil(iters / batches per epoch)); a saved configuration holding both (the derived
``epochs``) counts as ``iters``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .models import FAMILIES, family_options

__all__ = ["ENGINE_DEFAULTS", "OPTIMIZER_DEFAULTS", "PRESETS", "model_keys", "ConfigError", "resolve",
           "model_options", "preset_values", "changes", "effective_lr", "lr_step_fractions", "check_device"]

# A detector trained from scratch needs at least this many optimizer steps to learn anything
# useful. Measured here (eval/README.md, shapes at 128 px, the tiny backbone): 315 steps reach
# COCO AP 0.13, the no-flag run's 1500 steps 0.658; the shortest published schedules are far
# longer (detectron2 / mmdetection 1x: 90k iterations, whose warmup alone is 500-1000).
MIN_STEPS_FROM_SCRATCH = 1000

ENGINE_DEFAULTS: dict = {
    "preset": "small", "model": "retinanet", "backbone": "tiny", "pretrained": False, "data": "shapes",
    "format": None, "train_split": "train", "val_split": "val", "shapes_images": 2000,
    "shapes_val_images": 200, "lenient": False,
    "epochs": 12, "iters": None, "batch_size": 16, "optimizer": "sgd", "schedule": "step", "lr_steps": None,
    "warmup_iters": 500, "clip_grad": 0.0, "ema": False, "amp": None, "device": None, "workers": "auto",
    "sync_bn": False, "out": None, "resume": None, "weights": None, "eval_interval": 1, "log_interval": 10,
    "max_bad_steps": 10, "diagnostics": False, "tensorboard": False, "plots": True, "seed": 0, "quiet": False,
    "frozen_stages": None, "frozen_bn": None, "anchors": None, "mosaic": None, "min_iters": None,
    "scale_jitter": None,
}
# --anchors / --mosaic unset: "auto" and CUSTOM_MOSAIC for custom data (any --data but the built-in
# shapes), "default" and 0 for the shapes data (its preset anchors are tuned) and for runs saved
# before these flags existed (they resume as they ran)
ANCHOR_MODES = ("auto", "default")
FITTED_ANCHOR_KEYS = ("anchor_sizes", "anchor_ratios")
CUSTOM_MOSAIC = 0.5

OPTIMIZER_DEFAULTS: dict = {
    # torchvision / detectron2 / mmdetection: 0.01 for 16 images, momentum 0.9, weight decay 1e-4
    "sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "base_batch": 16},
    "adamw": {"lr": 0.003, "momentum": 0.9, "weight_decay": 0.05, "base_batch": None},
}
OPTIMIZER_KEYS = ("lr", "momentum", "weight_decay", "base_batch")

PRESETS: dict = {
    # the no-flag run: a tiny-backbone RetinaNet tuned on the shapes data at 128 px on 2 CPU cores
    "small": {
        "common": {"backbone": "tiny", "img_size": 128, "epochs": 12, "batch_size": 16, "optimizer": "adamw",
                   "lr": 0.006, "weight_decay": 0.05, "schedule": "cosine", "warmup_iters": 100,
                   "clip_grad": 10.0, "ema": True, "eval_interval": 4, "amp": "auto", "scale_jitter": [0.8, 1.25]},
        "retinanet": {"assigner": "atss", "reg_loss": "giou", "head_norm": "gn", "head_convs": 1,
                      "anchor_sizes": [16, 32, 64, 128, 256]},
    },
    "none": {"common": {}},
}

# preset keys added after runs had been saved: resuming a run whose configuration lacks one (or
# holds None) keeps what that run used (the family's / engine's default), not the preset's value
LATER_PRESET_KEYS = ("amp", "scale_jitter", "head_convs")

# build_model options that are flags for every family (each family adds its own: Family.flags)
_COMMON_MODEL = ("cls_loss", "reg_loss", "assigner", "assigner_options", "weighting", "weighting_options",
                 "alwa_interval", "loss_weights", "ignore_iof_thr", "channels_last", "diagnostics")


def model_keys(model: str) -> tuple[str, ...]:
    """The build_model options of family ``model`` that are train flags."""
    return (*_COMMON_MODEL, *FAMILIES[model].flags)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the flag and the fix."""


def _plain(value):
    """Tuples -> lists (YAML / JSON friendly), recursively."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _first(key: str, layers: list[Mapping]) -> object:
    for layer in layers:
        if layer.get(key) is not None:
            return layer[key]
    return None


def _bound(layer: Mapping, optimizer: str) -> dict:
    """``layer`` without its optimizer settings when it names another optimizer."""
    if layer.get("optimizer") not in (None, optimizer):
        return {k: v for k, v in layer.items() if k not in OPTIMIZER_KEYS}
    return dict(layer)


def resolve(flags: Mapping, recipe: Mapping | None = None, saved: Mapping | None = None) -> dict:
    """The complete configuration (every key set) from the given flags (unset ones absent or
    None), a recipe and, on resume, the saved configuration; see the module docstring."""
    flags = {k: v for k, v in flags.items() if v is not None}
    recipe = {k: v for k, v in (recipe or {}).items() if v is not None}
    saved = {k: v for k, v in (saved or {}).items() if v is not None}
    top = [flags, saved, recipe]
    preset_name = _first("preset", top) or ("none" if recipe else ENGINE_DEFAULTS["preset"])
    if preset_name not in PRESETS:
        raise ConfigError(f"--preset {preset_name!r} is not a preset; choose one of: {', '.join(PRESETS)}")
    model = _first("model", [*top, PRESETS[preset_name]["common"], ENGINE_DEFAULTS])
    if model not in FAMILIES:
        raise ConfigError(f"--model {model!r} is not a detector family; choose one of: {', '.join(FAMILIES)}")
    for key in flags:  # a flag of another family would be silently ignored
        owners = [f.name for f in FAMILIES.values() if key in f.flags]
        if owners and model not in owners:
            raise ConfigError(f"--{key.replace('_', '-')} is an option of --model {' / '.join(owners)}; --model "
                              f"{model} has no such option: leave it out")
    preset = {**PRESETS[preset_name]["common"], **PRESETS[preset_name].get(model, {})}
    if saved:
        preset = {k: v for k, v in preset.items() if k not in LATER_PRESET_KEYS or k in saved}
    optimizer = _first("optimizer", [*top, preset, ENGINE_DEFAULTS])
    if optimizer not in OPTIMIZER_DEFAULTS:
        raise ConfigError(f"--optimizer {optimizer!r} is not supported; choose one of: {', '.join(OPTIMIZER_DEFAULTS)}")
    backbone = _first("backbone", [*top, preset, ENGINE_DEFAULTS])
    family = {k: v for k, v in family_options(model, backbone).items() if k in model_keys(model)}
    if "head_norm" in family:
        family["head_norm"] = family["head_norm"] or "none"
    old_run = bool(saved) and "anchors" not in saved  # saved before --anchors / --mosaic existed
    custom = _first("data", [*top, preset, ENGINE_DEFAULTS]) not in (None, "shapes") and not old_run
    anchors = _first("anchors", [*top, preset]) or ("auto" if custom else "default")
    if anchors not in ANCHOR_MODES:
        raise ConfigError(f"--anchors {anchors!r} is not an anchor mode; choose one of: {', '.join(ANCHOR_MODES)}")
    if anchors == "auto":  # the fit replaces the preset's anchors (minidet.anchor_fit.fit_for_config)
        preset = {k: v for k, v in preset.items() if k not in FITTED_ANCHOR_KEYS}
    layers = [flags, saved, _bound(recipe, optimizer), _bound(preset, optimizer), FAMILIES[model].training_defaults, family,
              OPTIMIZER_DEFAULTS[optimizer], ENGINE_DEFAULTS]
    keys = dict.fromkeys(k for layer in reversed(layers) for k in layer)
    cfg = {k: _plain(_first(k, layers)) for k in keys}
    cfg.update(preset=preset_name, model=model, optimizer=optimizer, backbone=backbone)
    pretrained_resnet = bool(cfg["pretrained"]) and str(backbone).startswith("resnet")
    if cfg["frozen_stages"] is None:  # torchvision's rule: freeze stem + stage 1 of pretrained ResNets
        cfg["frozen_stages"] = 2 if pretrained_resnet else 0
    if cfg["frozen_bn"] is None:  # ... and use frozen BatchNorm with them
        cfg["frozen_bn"] = pretrained_resnet
    cfg["anchors"] = anchors
    if cfg["mosaic"] is None:
        cfg["mosaic"] = CUSTOM_MOSAIC if custom else 0.0
    cfg["epochs"], cfg["iters"] = _run_length([("flags", flags), ("saved", saved), ("recipe", recipe),
                                                ("preset", preset), ("defaults", ENGINE_DEFAULTS)])
    if custom:
        _custom_data_defaults(cfg, given=lambda k: _first(k, top) is not None)
    return cfg


def _custom_data_defaults(cfg: dict, given) -> None:
    """Custom ``--data`` (not the built-in shapes), for what the flags, a recipe or a resumed run
    leave unset: ``img_size`` "auto" (``minidet.class_sizes.plan_img_size`` on the training
    boxes, chosen when the data is read), ``eval_interval`` "auto" (about 10 evaluations per run),
    ``scale_jitter`` the augmentation's own (standard 0.6-1.4, strong 0.5-1.5)
    and, from scratch, ``min_iters`` = ``MIN_STEPS_FROM_SCRATCH``: the preset's 12 epochs or that
    many optimizer steps, whichever is longer (a small data set's 12 epochs are a few dozen)."""
    if not given("img_size"):
        cfg["img_size"] = "auto"
    if not given("eval_interval"):
        cfg["eval_interval"] = "auto"
    if not given("scale_jitter"):  # the augmentation's own range (the preset's 0.8-1.25 is tuned on the shapes)
        cfg["scale_jitter"] = None
    from_scratch = not cfg["pretrained"] and not cfg.get("weights")
    if from_scratch and not (given("epochs") or given("iters")) and cfg.get("min_iters") is None:
        cfg["min_iters"] = MIN_STEPS_FROM_SCRATCH


def _run_length(layers: list[tuple[str, Mapping]]) -> tuple[int | None, int | None]:
    """(epochs, iters) from the highest layer that sets either (see the module docstring)."""
    for name, layer in layers:
        epochs, iters = layer.get("epochs"), layer.get("iters")
        if epochs is not None and iters is not None:
            if name == "flags":
                raise ConfigError(f"--iters {iters} and --epochs {epochs} both set the run's length; give one of them")
            if name == "recipe":
                raise ConfigError(f"--config: the recipe sets both iters ({iters}) and epochs ({epochs}); keep one")
            return None, iters  # a saved run: its epochs were derived from iters
        if iters is not None:
            return None, iters
        if epochs is not None:
            return epochs, None
    return None, None


def changes(saved: Mapping, cfg: Mapping) -> list[str]:
    """'key: old -> new' for every key whose value differs between two configurations."""
    skip = ("resume", "config", "out")
    return [f"{k}: {saved.get(k)!r} -> {cfg[k]!r}" for k in cfg if k not in skip and saved.get(k) != cfg[k]]


def preset_values(cfg: Mapping) -> dict:
    """The values the configuration's preset sets for its detector family (common + family part)."""
    preset = PRESETS.get(cfg.get("preset"), {})
    return {**preset.get("common", {}), **preset.get(cfg["model"], {})}


def model_options(cfg) -> dict:
    """``build_model`` keyword options of a resolved configuration (a dict or a namespace)."""
    cfg = cfg if isinstance(cfg, Mapping) else vars(cfg)
    opts = {k: cfg[k] for k in model_keys(cfg["model"]) if k in cfg}
    for k in ("anchor_sizes", "anchor_scales", "anchor_ratios", "coder_stds", "loss_weights"):
        if opts.get(k) is not None:
            opts[k] = tuple(opts[k])
    if "head_norm" in opts and opts["head_norm"] in (None, "none"):
        opts["head_norm"] = None
    if opts.get("ignore_iof_thr") is not None and opts["ignore_iof_thr"] < 0:
        opts["ignore_iof_thr"] = None
    if opts.get("neg_pos_ratio") == "all":  # no hard negative mining: every negative
        opts["neg_pos_ratio"] = None
    if str(cfg["backbone"]).startswith("resnet"):
        opts.update(frozen_stages=cfg["frozen_stages"], frozen_bn=cfg["frozen_bn"])
    return opts


def effective_lr(cfg: Mapping, world_size: int = 1) -> float:
    """The optimizer's learning rate: ``lr`` scaled linearly from ``base_batch`` images to the
    images of one step over all processes (``lr`` as given when ``base_batch`` is unset)."""
    if not cfg.get("base_batch"):
        return float(cfg["lr"])
    return float(cfg["lr"]) * cfg["batch_size"] * world_size / cfg["base_batch"]


def lr_step_fractions(cfg: Mapping, batches_per_epoch: int | None = None) -> tuple[float, ...]:
    """Where the step schedule decays, as fractions of the run: ``lr_steps`` (epochs) / epochs;
    unset: 8/12 and 11/12 (the 1x schedule's epochs 8 and 11 of 12, at any length). With
    ``iters`` an ``lr_steps`` epoch s is iteration s x ``batches_per_epoch`` of the ``iters``."""
    if not cfg.get("lr_steps"):
        return (8 / 12, 11 / 12)
    if cfg.get("iters"):
        if batches_per_epoch is None:
            raise ValueError("lr_step_fractions: a run given in iters needs batches_per_epoch")
        return tuple(float(s) * batches_per_epoch / cfg["iters"] for s in cfg["lr_steps"])
    return tuple(float(s) / cfg["epochs"] for s in cfg["lr_steps"])


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have (ConfigError naming --device)."""
    if device is None or device == "cpu":
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA GPU is available on this machine (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device}: minidet trains on cpu or cuda")
