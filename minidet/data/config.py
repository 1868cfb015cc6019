"""Choosing a dataset: the built-in ``shapes``, a dataset YAML, or a dataset folder.

A dataset YAML (paths relative to the YAML's folder unless absolute)::

    format: coco            # coco | voc | yolo | shapes
    root: /data/coco
    train: {images: train2017, annotations: annotations/instances_train2017.json}
    val:   {images: val2017, annotations: annotations/instances_val2017.json}

    format: voc             # root holds Annotations/, JPEGImages/, ImageSets/Main/
    root: VOCdevkit/VOC2007
    train: trainval         # or {folder: some/flat/folder} of image + xml pairs
    val: test
    names: [aeroplane, bicycle, ...]

    format: yolo            # labels/ mirrors images/
    root: .
    train: images/train
    val: images/val
    names: [person, car]    # or a list of names in a file given as names_file

    format: shapes          # the synthetic dataset; keys are ShapesDataset arguments
    train: {num_images: 2000, image_size: 256}
    val: {num_images: 200, image_size: 256}
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .coco import read_coco
from .dataset import DetectionDataset
from .problems import DataError, DataReport
from .shapes import ShapesDataset
from .voc import read_voc
from .yolo import read_yolo

FORMATS = ("coco", "voc", "yolo", "shapes")


def detect_format(folder: Path) -> str:
    """Guess a dataset folder's format from its layout."""
    if (folder / "dataset.yaml").is_file():
        return yaml.safe_load((folder / "dataset.yaml").read_text()).get("format", "")
    if (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir():
        return "voc"
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        return "yolo"
    if (folder / "annotations").is_dir() and any((folder / "annotations").glob("*.json")):
        return "coco"
    raise DataError(f"cannot tell the format of {folder}: expected Annotations/ + JPEGImages/ (VOC), images/ + "
                    f"labels/ (YOLO) or annotations/*.json (COCO) — or pass --format, or a dataset YAML")


def _folder_config(folder: Path, fmt: str | None) -> dict:
    """A config dict for a dataset folder laid out in the usual way for its format."""
    if (folder / "dataset.yaml").is_file() and fmt is None:
        return load_config(folder / "dataset.yaml")
    fmt = fmt or detect_format(folder)
    cfg: dict = {"format": fmt, "root": str(folder), "_source": str(folder)}
    if fmt == "yolo":
        names_file = next((p for p in (folder / "data.yaml", folder / "dataset.yaml") if p.is_file()), None)
        if names_file is None:
            raise DataError(f"{folder}: a YOLO folder needs its class names — add a data.yaml with 'names: [...]'")
        cfg["names"] = yaml.safe_load(names_file.read_text()).get("names")
    if fmt == "voc":
        raise DataError(f"{folder}: a VOC folder needs a dataset YAML listing the class 'names' (VOC files carry "
                        f"no class list)")
    return cfg


def load_config(path: str | Path) -> dict:
    """Read a dataset YAML, with clear errors for missing files and keys."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset YAML not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(cfg, dict) or cfg.get("format") not in FORMATS:
        raise DataError(f"{path}: needs a 'format' key, one of {list(FORMATS)}")
    root = Path(cfg.get("root", "."))
    cfg["root"] = str(root if root.is_absolute() else (path.parent / root))
    cfg["_source"] = str(path)
    if "names_file" in cfg:
        names_path = Path(cfg["root"]) / cfg["names_file"]
        cfg["names"] = [n.strip() for n in names_path.read_text().splitlines() if n.strip()]
    return cfg


def resolve_config(data: str | Path | dict | None, fmt: str | None = None) -> dict:
    """'shapes' / None -> the synthetic default; a YAML file or a folder -> its config dict."""
    if data is None or data == "shapes":
        return {"format": "shapes", "_source": "shapes"}
    if isinstance(data, dict):
        return data
    path = Path(data)
    if path.is_dir():
        return _folder_config(path, fmt)
    return load_config(path)


def build_dataset(data: str | Path | dict | None, split: str = "train", strict: bool = True,
                  transform=None, fmt: str | None = None) -> DetectionDataset:
    """The ``split`` of the dataset described by ``data`` (see ``resolve_config``)."""
    cfg = resolve_config(data, fmt)
    source, fmt = cfg.get("_source", "dataset config"), cfg["format"]
    report = DataReport(strict=strict)
    spec = cfg.get(split)
    if fmt == "shapes":
        spec = spec or ({"num_images": 2000} if split == "train" else {"num_images": 200})
        return ShapesDataset(split=split, transform=transform, **spec)
    if spec is None:
        raise DataError(f"{source}: no '{split}' split — add a '{split}:' entry")
    root = Path(cfg["root"])
    names = cfg.get("names")
    if fmt == "coco":
        if not isinstance(spec, dict):
            spec = {"images": split, "annotations": f"annotations/instances_{split}.json"}
        if "images" not in spec or "annotations" not in spec:
            raise DataError(f"{source}: the COCO split '{split}' needs 'images' and 'annotations'")
        return read_coco(root / spec["annotations"], root / spec["images"], report, transform)
    if not names:
        raise DataError(f"{source}: a {fmt.upper()} dataset needs its class 'names' list")
    if fmt == "voc":
        if isinstance(spec, dict):
            return read_voc(root / spec["folder"], None, names, report, transform)
        return read_voc(root, str(spec), names, report, transform)
    return read_yolo(root / str(spec), names, report=report, transform=transform)
