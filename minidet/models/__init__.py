"""minidet.models: backbones, FPN, the YOLO / SSD / RetinaNet heads and the Detector."""

from .backbones import BACKBONES, build_backbone
from .detector import (
    MODELS,
    TRAINING_DEFAULTS,
    Detector,
    ModelOptions,
    PostProcess,
    build_model,
    family_options,
)
from .fpn import FPN

__all__ = ["BACKBONES", "build_backbone", "MODELS", "TRAINING_DEFAULTS", "Detector", "ModelOptions", "PostProcess",
           "build_model", "family_options", "FPN"]
