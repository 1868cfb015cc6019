"""Checkpoints: written atomically, read with clear errors, turned back into models.

A checkpoint is a dict saved with torch.save; the fields a model needs are "model" (state
dict), "config" (``build_model`` arguments), "class_names" and "img_size"; training adds
optimizer, scheduler, scaler, EMA, weighting state, epoch / iteration and RNG states.

Which weights a loaded model gets (``checkpoint_weights``, the one place that decides, used by
``model_from_checkpoint``, hence by ``python -m minidet.eval``, ``minidet.load``, the demo and
export, by fine-tuning with ``--weights`` and by ``slim_checkpoint``): the weights training
evaluated, i.e. the EMA when the run kept one (last.pt's "ema"; best.pt and slim files store it
as "model", marked ``"model_weights": "ema"``), else "model"; ``raw=True`` (``--raw-weights``)
takes the optimizer's own weights, which only last.pt holds.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from ..models import build_model

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "slim_checkpoint", "CheckpointError",
           "remove_stale_temp_files", "checkpoint_weights", "load_matching_state"]

INFERENCE_KEYS = ("model", "model_weights", "config", "class_names", "img_size", "data", "category_ids")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated or not a minidet checkpoint."""


# save_checkpoint's temporary files: "." + the checkpoint's name + "." + mkstemp's random part + ".tmp"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+\.(?:pt|pth))\.[^.]+\.tmp$")


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder (``.NAME.XXXXXXXX.tmp``), fsync, then
    rename over ``path``: a crash during the write never leaves a truncated checkpoint at
    ``path``. A process killed outright (SIGKILL, power loss) can leave the temporary file
    behind; ``remove_stale_temp_files`` clears those."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files an interrupted ``save_checkpoint`` left in ``folder``
    (``.last.pt.XXXXXXXX.tmp``, ``.best.pt.*.tmp``, any ``.*.pt(h).*.tmp``) -> the paths removed.
    Call it when a run (re)starts in ``folder``, before anything saves there; other files are
    left alone."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for item in folder.iterdir():
        if _TEMP_NAME.match(item.name) and item.is_file() and not item.is_symlink():
            try:
                item.unlink()
            except FileNotFoundError:  # removed meanwhile
                continue
            removed.append(item)
    return sorted(removed)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint; a clear CheckpointError for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} — check the --weights / --resume path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"cannot read checkpoint {path} ({err.__class__.__name__}: {err}) — the file is "
                              f"truncated or not a PyTorch checkpoint; use another checkpoint (e.g. best.pt or "
                              f"last.pt of the run)") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a minidet checkpoint (it needs 'model' and 'config' entries); "
                              f"train with python -m minidet.train to make one")
    return state


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k] for k, v in a.items())


def checkpoint_weights(state: dict, raw: bool = False) -> tuple[dict, str]:
    """-> (the state dict to load, what it is): the weights training evaluated (the EMA when the
    run kept one) or, ``raw``, the optimizer's own (see the module docstring)."""
    ema = (state.get("ema") or {}).get("module")
    marked = state.get("model_weights") == "ema"  # best.pt / slim: "model" is the evaluated EMA
    if raw:
        if marked:
            raise CheckpointError("--raw-weights: this checkpoint holds only the weights training evaluated (the "
                                  "EMA, as best.pt does); evaluate the run's last.pt for the raw weights")
        if ema is None:
            return state["model"], "raw weights (the run kept no EMA)"
        if _same_tensors(state["model"], ema):  # a best.pt written before the mark, or no step taken yet
            return state["model"], "stored weights (equal to the run's EMA; the file holds no others)"
        return state["model"], "raw weights (the optimizer's; training evaluated the EMA)"
    if marked:
        return state["model"], "EMA weights (the weights training evaluated)"
    if ema is not None:
        return ema, "EMA weights (the weights training evaluated; --raw-weights for the optimizer's)"
    return state["model"], "the checkpoint's weights (it holds no separate EMA)"


def model_from_checkpoint(state: dict | str | Path, map_location: str | torch.device = "cpu", raw: bool = False):
    """Rebuild the model a checkpoint describes and load its weights -> (model, checkpoint): the
    weights training evaluated unless ``raw`` (``checkpoint_weights``; ``model.weights_used``
    says which)."""
    if not isinstance(state, dict):
        state = load_checkpoint(state, map_location)
    weights, model_weights_used = checkpoint_weights(state, raw)
    config = dict(state["config"])
    name = config.pop("name")
    num_classes = config.pop("num_classes")
    backbone = config.pop("backbone", "tiny")
    model = build_model(name, num_classes, backbone=backbone, **config)
    model.load_state_dict(weights)
    model.weights_used = model_weights_used
    model.class_names = list(state.get("class_names") or [str(i) for i in range(num_classes)])
    model.img_size = state.get("img_size")
    return model, state


def load_matching_state(model: torch.nn.Module, state: dict[str, torch.Tensor],
                        verbose: bool = True) -> tuple[list[str], list[str]]:
    """Fine-tuning: load every tensor of ``state`` whose name and shape match ``model``; the others
    (e.g. the class layers when the number of classes changed) keep their fresh initialisation.
    -> (kept names, re-initialised names); prints a summary when ``verbose``."""
    own = model.state_dict()

    def same(k, v) -> bool:  # tensors must agree in shape; extra state (ALWA / SB records) is kept as is
        return k in own and (getattr(own[k], "shape", None) == getattr(v, "shape", None))

    kept = [k for k, v in state.items() if same(k, v)]
    reinit = [k for k in own if k not in kept]
    model.load_state_dict({k: state[k] for k in kept}, strict=False)
    if verbose:
        print(f"loaded {len(kept)} of {len(own)} tensors from the checkpoint; re-initialised {len(reinit)}:")
        for k in reinit:
            reason = "shape differs" if k in state else "not in checkpoint"
            shape = tuple(getattr(own[k], "shape", ()))
            print(f"  {k} ({reason}: model {shape}"
                  + (f", checkpoint {tuple(getattr(state[k], 'shape', ()))})" if k in state else ")"))
    return kept, reinit


def slim_checkpoint(src: str | Path, dst: str | Path, half: bool = True, **overrides) -> Path:
    """Keep only what inference needs (the weights training evaluated, config, class names, image
    size, data) -> dst; ``half`` stores floating-point weights as float16 (half the size; loaded
    back as float32)."""
    state = load_checkpoint(src)
    slim = {k: state[k] for k in INFERENCE_KEYS if k in state}
    if state.get("ema"):
        slim.update(model=checkpoint_weights(state)[0], model_weights="ema")
    if half:
        slim["model"] = {k: v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                         for k, v in slim["model"].items()}
    slim.update(overrides)
    return save_checkpoint(slim, dst)
