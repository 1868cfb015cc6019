"""Detection heads: RetinaNet (dense sigmoid), SSD (multi-scale softmax), YOLO v1 (grid)."""

from .retinanet import RetinaNetHead
from .ssd import SSDExtras, SSDHead
from .yolo import YOLOHead

__all__ = ["RetinaNetHead", "SSDHead", "SSDExtras", "YOLOHead"]
