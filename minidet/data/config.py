"""Choosing a dataset: the built-in ``shapes``, a dataset YAML, or a dataset folder.

``--data`` (``build_dataset``'s ``data``) accepts these forms:

1. A minidet dataset YAML (paths relative to the YAML's folder unless absolute)::

    format: coco            # coco | voc | yolo | shapes
    root: /data/coco
    train: {images: train2017, annotations: annotations/instances_train2017.json}
    val:   {images: val2017, annotations: annotations/instances_val2017.json}
    # (a split given as a string S means {images: S, annotations: annotations/instances_S.json})

    format: voc             # root holds Annotations/, JPEGImages/, ImageSets/Main/
    root: VOCdevkit/VOC2007
    train: trainval         # or {folder: some/flat/folder} of image + xml pairs
    val: test
    names: [aeroplane, bicycle, ...]
    use_difficult: false    # true: train on "difficult" objects too (evaluation always ignores them)

    format: yolo            # labels/ mirrors images/
    root: .
    train: images/train
    val: images/val
    names: [person, car]    # or {0: person, 1: car}, or a file of names given as names_file

    format: shapes          # the synthetic dataset; keys are ShapesDataset arguments
    train: {num_images: 2000, image_size: 256}
    val: {num_images: 200, image_size: 256}

2. An Ultralytics ``data.yaml`` (no ``format`` key; read as YOLO)::

    path: ../datasets/mine  # dataset root: relative to the YAML's folder (else the working
                            # directory); default: the YAML's folder
    train: images/train     # image folders (or image-list .txt files, or lists of them),
    val: images/val         # relative to path (else to the YAML's folder); train/images works too
    test: images/test       # optional
    names: [person, car]    # or {0: person, 1: car}
    nc: 2                   # optional; must equal the number of names

   The labels of ``.../images/...`` are in ``.../labels/...`` (the last ``images`` becomes
   ``labels``). Without split keys, the splits are found as in a YOLO folder (below).

3. A dataset folder. A ``dataset.yaml`` (minidet) or else ``data.yaml`` (Ultralytics) in it
   describes it, also when ``--format`` is given (which must then agree with it). Otherwise the
   layout tells the format (``--format`` overrides the guess) and the splits:

   - COCO: ``annotations/instances_<split>.json`` with images in ``<split>/`` or
     ``images/<split>/`` (the standard layout and the one ``python -m minidet.data.shapes``
     writes); ``instances_train2017.json`` + ``train2017/`` is split ``train2017``, and also
     ``train`` when there is no other ``train<year>``; ``annotations/<split>.json`` works too, as
     does Roboflow's ``<split>/_annotations.coco.json``.
   - VOC devkit: ``Annotations/`` + ``JPEGImages/`` + ``ImageSets/Main/<split>.txt``. The class
     names are every ``<object><name>`` in the annotation files of all splits, sorted (printed;
     write them in a YAML to fix their order for good).
   - YOLO: ``images/<split>/`` + ``labels/<split>/``, or ``<split>/images/`` + ``<split>/labels/``;
     class names from ``data.yaml`` (above) or a ``classes.txt`` / ``obj.names`` file.

   Roboflow's ``valid`` split also answers to ``val``.

``--format`` together with a YAML whose format differs is an error naming both.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .coco import read_coco
from .dataset import DetectionDataset
from .problems import DataError, DataReport
from .shapes import ShapesDataset
from .voc import read_voc, voc_class_names
from .yolo import read_yolo

FORMATS = ("coco", "voc", "yolo", "shapes")
FOLDER_YAMLS = ("dataset.yaml", "data.yaml")  # minidet's, then Ultralytics'
ULTRALYTICS_SPLITS = ("train", "val", "test", "minival")
NOT_SPLITS = {"format", "root", "names", "names_file", "use_difficult", "nc", "path", "download", "yaml_file"}
COCO_NON_INSTANCE_PREFIXES = ("captions_", "person_keypoints_", "panoptic_", "stuff_", "image_info_")
YOLO_NAME_FILES = ("classes.txt", "obj.names")


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({err})") from None


def _is_ultralytics(cfg) -> bool:
    """An Ultralytics data.yaml: no 'format' key, but class 'names' (or their count 'nc')."""
    return isinstance(cfg, dict) and "format" not in cfg and ("names" in cfg or "nc" in cfg)


def _names(value, source) -> list[str] | None:
    """Class names given as a list or as Ultralytics' {0: name, 1: name, ...}."""
    if value is None:
        return None
    if isinstance(value, dict):
        try:
            keys = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            keys = []
        if keys != list(range(len(value))):
            raise DataError(f"{source}: 'names' as a mapping needs the class indices 0..{len(value) - 1} as keys, "
                            f"got {list(value)}")
        by_index = {int(k): v for k, v in value.items()}
        return [str(by_index[k]) for k in keys]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    raise DataError(f"{source}: 'names' must be a list of class names or a mapping {{0: name, ...}}, got {value!r}")


def _yaml_format(path: Path) -> str | None:
    """The format a YAML describes ('yolo' for an Ultralytics data.yaml), or None."""
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if isinstance(cfg, dict) and isinstance(cfg.get("format"), str):
        return cfg["format"]
    return "yolo" if _is_ultralytics(cfg) else None


def _child_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []


def detect_format(folder: Path) -> str:
    """Guess a dataset folder's format from its YAML or its layout."""
    folder = Path(folder)
    for name in FOLDER_YAMLS:
        if (folder / name).is_file() and (fmt := _yaml_format(folder / name)):
            return fmt
    if (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir():
        return "voc"
    if ((folder / "images").is_dir() and (folder / "labels").is_dir()) or any(
            (d / "images").is_dir() and (d / "labels").is_dir() for d in _child_dirs(folder)):
        return "yolo"
    if any((folder / "annotations").glob("*.json")) or any(
            (d / "_annotations.coco.json").is_file() for d in _child_dirs(folder)):
        return "coco"
    raise DataError(f"cannot tell the format of {folder}: expected Annotations/ + JPEGImages/ (VOC), images/ + "
                    f"labels/ (YOLO) or annotations/*.json (COCO), or a dataset.yaml / data.yaml — or pass --format, "
                    f"or a dataset YAML")


def _coco_splits(folder: Path) -> dict:
    """{split: {images, annotations}} of a COCO folder (see the module docstring)."""
    splits: dict = {}
    for js in sorted((folder / "annotations").glob("*.json")):
        stem = js.stem
        if stem.startswith("instances_"):
            name = stem[len("instances_"):]
        elif stem.startswith(COCO_NON_INSTANCE_PREFIXES):
            continue
        else:
            name = stem
        images = next((c for c in (name, f"images/{name}") if (folder / c).is_dir()), name)
        splits[name] = {"images": images, "annotations": f"annotations/{js.name}"}
    for d in _child_dirs(folder):  # Roboflow: <split>/_annotations.coco.json beside the images
        if (d / "_annotations.coco.json").is_file():
            splits.setdefault(d.name, {"images": d.name, "annotations": f"{d.name}/_annotations.coco.json"})
    years: dict[str, list[str]] = {}
    for name in splits:  # train2017 also answers to train (when it is the only train<year>)
        if m := re.fullmatch(r"(.+?)(?:19|20)\d\d", name):
            years.setdefault(m.group(1), []).append(name)
    for base, names in years.items():
        if base not in splits and len(names) == 1:
            splits[base] = splits[names[0]]
    return splits


def _yolo_splits(folder: Path) -> dict:
    """{split: images folder relative to ``folder``} of a YOLO tree."""
    splits = {d.name: f"images/{d.name}" for d in _child_dirs(folder / "images")}
    for d in _child_dirs(folder):
        if (d / "images").is_dir():
            splits.setdefault(d.name, f"{d.name}/images")
    return splits


def _voc_splits(folder: Path) -> dict:
    """{split: split} for ImageSets/Main/<split>.txt (not the per-class <class>_<split>.txt lists)."""
    stems = {f.stem for f in (folder / "ImageSets" / "Main").glob("*.txt")}
    return {s: s for s in sorted(stems) if not ("_" in s and s.rsplit("_", 1)[1] in stems)}


def _alias_val(splits: dict) -> dict:
    if "val" not in splits and "valid" in splits:  # Roboflow's name
        splits["val"] = splits["valid"]
    return splits


_VOC_NAMES: dict[tuple, list[str]] = {}


def _voc_folder_names(folder: Path) -> list[str]:
    """Class names of a VOC folder from its XML files (cached per folder state; printed once)."""
    ann = folder / "Annotations"
    key = (str(folder.resolve()), ann.stat().st_mtime_ns if ann.is_dir() else 0)
    if key not in _VOC_NAMES:
        names = voc_class_names(folder)
        if not names:
            raise DataError(f"{folder}: no <object><name> in its VOC annotation files, so no class names — add a "
                            f"dataset YAML with 'names: [...]'")
        print(f"{folder}: no dataset YAML; {len(names)} class names from the <name> tags of its VOC annotations "
              f"(sorted): {names} — a dataset YAML with these 'names' keeps their order fixed")
        _VOC_NAMES[key] = names
    return _VOC_NAMES[key]


def _check_format(cfg: dict, fmt: str | None, source) -> dict:
    if fmt is not None and cfg.get("format") != fmt:
        raise DataError(f"--format {fmt} disagrees with {source}, which describes a {cfg.get('format')} dataset — "
                        f"drop --format (the YAML says the format) or fix the YAML's format")
    return cfg


def _folder_config(folder: Path, fmt: str | None) -> dict:
    """A config dict for a dataset folder: its dataset.yaml / data.yaml, else its layout."""
    yaml_file = next((folder / n for n in FOLDER_YAMLS if (folder / n).is_file()), None)
    if yaml_file is not None and (yaml_file.name == "dataset.yaml" or _yaml_format(yaml_file) is not None):
        return _check_format(load_config(yaml_file), fmt, yaml_file)
    fmt = fmt or detect_format(folder)
    cfg: dict = {"format": fmt, "root": str(folder), "_source": str(folder), "_folder": True}
    if fmt == "coco":
        cfg.update(_alias_val(_coco_splits(folder)))
    elif fmt == "yolo":
        cfg.update(_alias_val(_yolo_splits(folder)))
        names_file = next((folder / n for n in YOLO_NAME_FILES if (folder / n).is_file()), None)
        if names_file is None:
            raise DataError(f"{folder}: a YOLO folder needs its class names — add a data.yaml with 'names: [...]' "
                            f"(or a classes.txt, one name a line)")
        cfg["names"] = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
    elif fmt == "voc":
        cfg.update(_voc_splits(folder))
        cfg["names"] = _voc_folder_names(folder)
    return cfg


def _under(root: Path, base: Path, rel: str) -> str:
    """``rel`` resolved against ``root``, else against ``base`` (the first that exists)."""
    p = Path(rel)
    if p.is_absolute():
        return str(p)
    candidates = [root / p, base / p]
    if rel.startswith("../"):
        candidates.append(root / rel[3:])  # as Ultralytics does
    return str(next((c for c in candidates if c.exists()), candidates[0]))


def _ultralytics_config(cfg: dict, path: Path) -> dict:
    """A minidet config from an Ultralytics data.yaml at ``path``."""
    base = path.parent.absolute()
    root = base
    if cfg.get("path"):
        p = Path(str(cfg["path"]))
        candidates = [p] if p.is_absolute() else [base / p, Path.cwd() / p]
        root = next((c for c in candidates if c.is_dir()), candidates[0])
    names = _names(cfg.get("names"), path)
    if names is None:
        if isinstance(cfg.get("nc"), int):
            names = [f"class{k}" for k in range(cfg["nc"])]
        else:
            raise DataError(f"{path}: needs the class 'names' (a list, or {{0: name, ...}})")
    if "nc" in cfg and cfg["nc"] != len(names):
        raise DataError(f"{path}: nc is {cfg['nc']} but {len(names)} names are given — make them agree")
    out: dict = {"format": "yolo", "root": str(root), "names": names, "_source": str(path)}
    for split in ULTRALYTICS_SPLITS:
        value = cfg.get(split)
        if isinstance(value, str) and value:
            out[split] = _under(root, base, value)
        elif isinstance(value, list) and value:
            out[split] = [_under(root, base, str(v)) for v in value]
    if not any(s in out for s in ULTRALYTICS_SPLITS):
        out.update(_alias_val(_yolo_splits(root)))
    return out


def load_config(path: str | Path) -> dict:
    """Read a dataset YAML (minidet's, or an Ultralytics data.yaml), with clear errors for
    missing files and keys."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset YAML not found: {path}")
    cfg = _read_yaml(path)
    if _is_ultralytics(cfg):
        return _ultralytics_config(cfg, path)
    if not isinstance(cfg, dict) or cfg.get("format") not in FORMATS:
        raise DataError(f"{path}: needs a 'format' key, one of {list(FORMATS)} (or, for an Ultralytics data.yaml, "
                        f"'names' and the 'train' / 'val' image folders)")
    root = Path(cfg.get("root", "."))
    cfg["root"] = str(root if root.is_absolute() else (path.parent / root))
    cfg["_source"] = str(path)
    if "names_file" in cfg:
        names_path = Path(cfg["root"]) / cfg["names_file"]
        if not names_path.is_file():
            raise DataError(f"{path}: names_file {names_path} not found")
        cfg["names"] = [n.strip() for n in names_path.read_text().splitlines() if n.strip()]
    cfg["names"] = _names(cfg.get("names"), path)
    if cfg["names"] is None:
        cfg.pop("names")
    return cfg


def resolve_config(data: str | Path | dict | None, fmt: str | None = None) -> dict:
    """'shapes' / None -> the synthetic default; a YAML file or a folder -> its config dict
    (``fmt``: the --format flag; it must agree with a YAML)."""
    if data is None or data == "shapes":
        return _check_format({"format": "shapes", "_source": "shapes"}, fmt, "--data shapes")
    if isinstance(data, dict):
        return _check_format(data, fmt, data.get("_source", "the dataset config"))
    path = Path(data)
    if path.is_dir():
        return _folder_config(path, fmt)
    if not path.exists() and fmt is not None:
        raise DataError(f"dataset folder not found: {path}")
    return _check_format(load_config(path), fmt, path)


def _splits_of(cfg: dict) -> list[str]:
    return [k for k in cfg if not k.startswith("_") and k not in NOT_SPLITS]


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
    if spec is None or split.startswith("_") or split in NOT_SPLITS:
        found = ", ".join(_splits_of(cfg)) or "none"
        if cfg.get("_folder"):
            raise DataError(f"{source}: no '{split}' split in this {fmt.upper()} folder (splits found: {found}) — "
                            f"choose one with --train-split / --val-split / --split, or see minidet/data/config.py "
                            f"for the folder layouts")
        raise DataError(f"{source}: no '{split}' split (splits: {found}) — add a '{split}:' entry")
    root = Path(cfg["root"])
    names = cfg.get("names")
    if fmt == "coco":
        if not isinstance(spec, dict):
            spec = {"images": str(spec), "annotations": f"annotations/instances_{spec}.json"}
        if "images" not in spec or "annotations" not in spec:
            raise DataError(f"{source}: the COCO split '{split}' needs 'images' and 'annotations'")
        if not (root / spec["images"]).is_dir():
            raise DataError(f"{source}: the images folder of split '{split}' not found: {root / spec['images']}")
        return read_coco(root / spec["annotations"], root / spec["images"], report, transform)
    if not names:
        raise DataError(f"{source}: a {fmt.upper()} dataset needs its class 'names' list")
    if fmt == "voc":
        use_difficult = bool(cfg.get("use_difficult", False))
        if isinstance(spec, dict):
            return read_voc(root / spec["folder"], None, names, report, transform, use_difficult)
        return read_voc(root, str(spec), names, report, transform, use_difficult)
    images = [root / str(s) for s in spec] if isinstance(spec, list) else root / str(spec)
    return read_yolo(images, names, report=report, transform=transform)
