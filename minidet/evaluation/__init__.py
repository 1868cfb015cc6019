"""minidet.evaluation: COCO AP (pycocotools semantics), VOC mAP (devkit semantics) and LRP /
oLRP; ``detector_eval`` evaluates a detector on a dataset (``python -m minidet.eval --weights``
and train-time validation)."""

from .coco import STAT_NAMES, COCOEvaluator, coco_evaluate, format_table

__all__ = ["STAT_NAMES", "COCOEvaluator", "coco_evaluate", "format_table"]
