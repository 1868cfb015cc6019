"""The Python API for inference: ``minidet.load("weights/retinanet_shapes.pt").predict(image)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import EvalTransform, collate
from .data.image_io import read_rgb
from .engine.checkpoint import model_from_checkpoint

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "retinanet_shapes.pt"


class Predictor:
    """A loaded detector: ``predict(image)`` -> boxes / scores / labels / names in the image's
    own pixels. image: a file path, or a uint8 RGB array [H, W, 3]."""

    def __init__(self, model, class_names: list[str], img_size: int, device: torch.device) -> None:
        self.model, self.class_names, self.img_size, self.device = model, class_names, img_size, device
        self.transform = EvalTransform(img_size)

    def set_thresholds(self, conf: float | None = None, iou: float | None = None, max_det: int | None = None) -> None:
        post = self.model.postprocess
        post.score_thresh = post.score_thresh if conf is None else conf
        post.nms_thresh = post.nms_thresh if iou is None else iou
        post.max_det = post.max_det if max_det is None else max_det

    @torch.no_grad()
    def predict_batch(self, images: list) -> list[dict]:
        items = []
        for im in images:
            array = read_rgb(im) if isinstance(im, str | Path) else np.asarray(im)
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {array.dtype} {array.shape}")
            items.append(self.transform({"image": array, "boxes": np.zeros((0, 4), np.float32),
                                         "labels": np.zeros(0, np.int64), "ignore_boxes": np.zeros((0, 4), np.float32)}))
        batch, targets = collate(items)
        dets = self.model.predict(batch.to(self.device), [t["image_size"] for t in targets],
                                  [t["scale"] for t in targets], [t["orig_size"] for t in targets])
        out = []
        for d in dets:
            labels = d["labels"].cpu().numpy()
            out.append({"boxes": d["boxes"].cpu().numpy(), "scores": d["scores"].cpu().numpy(), "labels": labels,
                        "names": [self.class_names[i] for i in labels]})
        return out

    def predict(self, image) -> dict:
        """Detections of one image: {"boxes" [K, 4] xyxy, "scores" [K], "labels" [K], "names"}."""
        return self.predict_batch([image])[0]


def load(weights: str | Path = DEFAULT_WEIGHTS, device: str = "cpu", raw_weights: bool = False) -> Predictor:
    """A Predictor from a minidet checkpoint (default: the shipped shapes RetinaNet), with the
    weights training evaluated (a last.pt's EMA when the run kept one) unless ``raw_weights``
    (``minidet.engine.checkpoint.checkpoint_weights``)."""
    model, ckpt = model_from_checkpoint(weights, map_location="cpu", raw=raw_weights)
    dev = torch.device(device)
    model.to(dev).eval()
    return Predictor(model, model.class_names, ckpt.get("img_size") or 512, dev)
