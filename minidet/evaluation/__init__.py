"""minidet.evaluation: COCO AP (pycocotools semantics), VOC mAP and LRP / oLRP."""

from .coco import STAT_NAMES, COCOEvaluator, coco_evaluate, format_table

__all__ = ["STAT_NAMES", "COCOEvaluator", "coco_evaluate", "format_table"]
