"""minidet.models: backbones, FPN, the YOLO / SSD / RetinaNet heads and the Detector."""

from .backbones import BACKBONES, build_backbone
from .detector import MODELS, Detector, PostProcess, build_model, load_matching_state
from .fpn import FPN

__all__ = ["BACKBONES", "build_backbone", "MODELS", "Detector", "PostProcess", "build_model",
           "load_matching_state", "FPN"]
