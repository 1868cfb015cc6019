"""minidet: a minimal object-detection framework (YOLO, SSD, RetinaNet) in PyTorch."""

__version__ = "0.1.0"


def load(weights=None, device: str = "cpu"):
    """Load a checkpoint for inference: ``minidet.load("weights/retinanet_shapes.pt").predict(img)``."""
    from .api import DEFAULT_WEIGHTS
    from .api import load as _load

    return _load(weights or DEFAULT_WEIGHTS, device)
