"""Detection heads: RetinaNet (dense sigmoid), SSD (multi-scale softmax), YOLO v1 (grid); each
owns its prior generator and box coder (``DenseHead``)."""

from .common import DenseHead
from .retinanet import RetinaNetHead
from .ssd import SSDExtras, SSDHead
from .yolo import YOLOHead

__all__ = ["DenseHead", "RetinaNetHead", "SSDHead", "SSDExtras", "YOLOHead"]
