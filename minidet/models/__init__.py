"""minidet.models: backbones, FPN, the YOLO / SSD / RetinaNet heads and the Detector."""

from .backbones import BACKBONES, build_backbone
from .detector import Detector, ModelOptions, PostProcess, build_model, family_options
from .families import FAMILIES, Family
from .fpn import FPN

__all__ = ["BACKBONES", "build_backbone", "FAMILIES", "Family", "Detector", "ModelOptions", "PostProcess",
           "build_model", "family_options", "FPN"]
