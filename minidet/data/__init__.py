"""minidet.data: dataset readers (COCO, VOC, YOLO), the synthetic ``shapes`` dataset,
transforms and loaders."""

from .coco import read_coco
from .config import build_dataset, detect_format, load_config, resolve_config
from .dataset import DetectionDataset, Record
from .loader import build_loader, collate
from .problems import DataError, DataReport
from .shapes import SHAPES, ShapesDataset
from .transforms import EvalTransform, TrainTransform, unletterbox
from .voc import read_voc
from .yolo import read_yolo

__all__ = [
    "read_coco", "read_voc", "read_yolo", "build_dataset", "detect_format", "load_config", "resolve_config",
    "DetectionDataset", "Record", "build_loader", "collate", "DataError", "DataReport", "SHAPES",
    "ShapesDataset", "EvalTransform", "TrainTransform", "unletterbox",
]
