"""The built-in synthetic dataset ``shapes``: no files needed, deterministic for a seed.

Filled and outlined circles, squares, triangles and stars in many colours and sizes (log-uniform,
so many small ones; moderate overlaps), on noisy textured backgrounds. Every image is a pure
function of (seed, split, index): the train and val splits never share an image.

Write it to disk, as a fixture or to try the readers:

    python -m minidet.data.shapes --out data/shapes --format coco --num-images 200 --splits train val

which writes the images, the annotations in that format and ``dataset.yaml`` describing them.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .dataset import DetectionDataset, Record
from .image_io import write_rgb
from .problems import DataReport

SHAPES = ("circle", "square", "triangle", "star")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
    (255, 255, 255), (20, 20, 20),
], dtype=np.uint8)


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices [K, 2] of a square, triangle or star of circumradius ``radius``."""
    if shape == "square":
        k, radii = 4, [radius]
    elif shape == "triangle":
        k, radii = 3, [radius]
    else:  # star: 5 points, inner radius 0.45
        k, radii = 10, [radius, 0.45 * radius]
    t = angle + np.arange(k) * 2 * math.pi / k
    r = np.array([radii[i % len(radii)] for i in range(k)])
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


class ShapesDataset(DetectionDataset):
    """Synthetic shapes: ``num_images`` images of ``image_size`` (int or (height, width)).

    ``classes``: the shape names to use (a subset of SHAPES, in label order) or their number.
    Objects per image are drawn from [min_objects, max_objects]; sizes (circumscribed
    diameter) log-uniform in [min_size, max_size] px. Rendered images are kept in memory up
    to ``cache_bytes`` per process (default 1 GiB: 2000 images at 512 px; 0 turns it off).
    """

    def __init__(self, num_images: int = 1000, image_size: int | Sequence[int] = 256,
                 classes: int | Sequence[str] = SHAPES, seed: int = 0, split: str = "train",
                 min_objects: int = 1, max_objects: int = 6, min_size: float = 10.0,
                 max_size: float | None = None, transform=None, cache_bytes: int = 1 << 30) -> None:
        if isinstance(classes, int):
            classes = SHAPES[:classes]
        unknown = [c for c in classes if c not in SHAPES]
        if unknown or not classes:
            raise ValueError(f"unknown shape classes {unknown}; choose from {list(SHAPES)}")
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.height, self.width = int(h), int(w)
        self.seed, self.split = seed, split
        self.min_objects, self.max_objects = min_objects, max_objects
        self.min_size = min_size
        self.max_size = max_size if max_size is not None else 0.5 * min(self.height, self.width)
        self.shapes = list(classes)
        self._layouts = [self._layout(i) for i in range(num_images)]
        records = [
            Record(path=f"shapes://{split}/{i}", image_id=i, width=self.width, height=self.height,
                   boxes=np.array([o["box"] for o in objs], np.float32).reshape(-1, 4),
                   labels=np.array([o["label"] for o in objs], np.int64))
            for i, objs in enumerate(self._layouts)
        ]
        super().__init__(records, self.shapes, DataReport(strict=True), transform)
        self.cache_budget = cache_bytes
        self._cache: dict[int, np.ndarray] = {}
        self._cache_bytes = 0

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])

    def _layout(self, index: int) -> list[dict]:
        """Objects of image ``index``: shape, geometry, colour, style and tight xyxy box."""
        rng = self._rng(index)
        objects: list[dict] = []
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        for _ in range(n):
            for _try in range(20):
                label = int(rng.integers(len(self.shapes)))
                size = float(np.exp(rng.uniform(np.log(self.min_size), np.log(self.max_size))))
                radius = size / 2
                cx = float(rng.uniform(radius, self.width - radius))
                cy = float(rng.uniform(radius, self.height - radius))
                angle = float(rng.uniform(0, 2 * math.pi))
                filled = bool(rng.random() < 0.6)
                thickness = 0 if filled else int(rng.integers(2, 4))
                shape = self.shapes[label]
                if shape == "circle":
                    x1, y1, x2, y2 = cx - radius, cy - radius, cx + radius, cy + radius
                    poly = None
                else:
                    poly = _polygon(shape, cx, cy, radius, angle)
                    (x1, y1), (x2, y2) = poly.min(0), poly.max(0)
                half = thickness / 2
                box = [max(0.0, x1 - half), max(0.0, y1 - half), min(self.width, x2 + half), min(self.height, y2 + half)]
                if all(_iou(box, o["box"]) < 0.3 for o in objects):
                    objects.append({"label": label, "shape": shape, "centre": (cx, cy), "radius": radius,
                                    "poly": poly, "thickness": thickness, "box": box,
                                    "colour": PALETTE[int(rng.integers(len(PALETTE)))].tolist()})
                    break
        return objects

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        h, w = self.height, self.width
        base = rng.uniform(40, 200, size=3)
        tilt = rng.uniform(-60, 60, size=(2, 3))
        # a smooth colour field (gradient + blobs) upsampled from a coarse grid, plus pixel noise
        gh, gw = max(2, h // 32), max(2, w // 32)
        gy, gx = np.mgrid[0:gh, 0:gw].astype(np.float32)
        coarse = (base + (gx[..., None] / gw) * tilt[0] + (gy[..., None] / gh) * tilt[1]
                  + rng.normal(0, 25, size=(gh, gw, 3))).astype(np.float32)
        img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        img += rng.integers(0, 25, (h, w, 3), dtype=np.uint8)  # uniform noise in [-12, 12] around...
        img -= 12.0  # ...the field
        img = img.clip(0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(0, 6))):  # distracting lines
            p1 = (int(rng.integers(w)), int(rng.integers(h)))
            p2 = (int(rng.integers(w)), int(rng.integers(h)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.line(img, p1, p2, colour, 1, cv2.LINE_AA)
        return img

    def load(self, index: int) -> dict:
        """The untransformed item of image ``index``; renders are deterministic per (seed, split,
        index), so each is drawn once per process and kept while the cache budget lasts."""
        r = self.records[index]
        cached = self._cache.get(index)
        if cached is None:
            cached = self._render(index)
            if self._cache_bytes + cached.nbytes <= self.cache_budget:
                self._cache[index] = cached
                self._cache_bytes += cached.nbytes
        return r.item(cached.copy())

    def _render(self, index: int) -> np.ndarray:
        img = self._background(self._rng(index + 10_000_019))
        for o in self._layouts[index]:
            colour = tuple(int(c) for c in o["colour"])
            # Boxes use continuous coordinates where pixel p spans [p, p + 1); OpenCV puts pixel
            # centres at integers, hence the half-pixel shift. Coordinates in 1/16 px (shift=4).
            if o["shape"] == "circle":
                centre = (int(round((o["centre"][0] - 0.5) * 16)), int(round((o["centre"][1] - 0.5) * 16)))
                radius = int(round(o["radius"] * 16))
                cv2.circle(img, centre, radius, colour, o["thickness"] or -1, cv2.LINE_AA, shift=4)
            else:
                pts = np.round((o["poly"] - 0.5) * 16).astype(np.int32)[None]
                if o["thickness"]:
                    cv2.polylines(img, pts, True, colour, o["thickness"], cv2.LINE_AA, shift=4)
                else:
                    cv2.fillPoly(img, pts, colour, cv2.LINE_AA, shift=4)
        return img


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------------------ writers


def write_coco(ds: DetectionDataset, out: Path, split: str) -> None:
    """<out>/<split>/NNNNNN.png and <out>/annotations/instances_<split>.json (bbox xywh)."""
    images, anns = [], []
    for i in range(len(ds)):
        item = ds.load(i)
        name = f"{i:06d}.png"
        write_rgb(out / split / name, item["image"])
        h, w = item["image"].shape[:2]
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for box, label in zip(item["boxes"].tolist(), item["labels"].tolist(), strict=True):
            x1, y1, x2, y2 = box
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": label + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(ds.class_names)]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


def write_yolo(ds: DetectionDataset, out: Path, split: str) -> None:
    """<out>/images/<split>/NNNNNN.png and <out>/labels/<split>/NNNNNN.txt (class cx cy w h, normalised)."""
    for i in range(len(ds)):
        item = ds.load(i)
        h, w = item["image"].shape[:2]
        write_rgb(out / "images" / split / f"{i:06d}.png", item["image"])
        lines = []
        for (x1, y1, x2, y2), label in zip(item["boxes"].tolist(), item["labels"].tolist(), strict=True):
            lines.append(f"{label} {(x1 + x2) / 2 / w:.8f} {(y1 + y2) / 2 / h:.8f} {(x2 - x1) / w:.8f} {(y2 - y1) / h:.8f}")
        label_file = out / "labels" / split / f"{i:06d}.txt"
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("\n".join(lines) + ("\n" if lines else ""))


def write_voc(ds: DetectionDataset, out: Path, split: str) -> None:
    """<out>/JPEGImages/<id>.png, <out>/Annotations/<id>.xml (1-based xmin/ymin), ImageSets/Main/<split>.txt."""
    ids = []
    for i in range(len(ds)):
        item = ds.load(i)
        h, w = item["image"].shape[:2]
        stem = f"{split}_{i:06d}"
        ids.append(stem)
        write_rgb(out / "JPEGImages" / f"{stem}.png", item["image"])
        objs = "".join(
            f"<object><name>{ds.class_names[label]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x1 + 1:.4f}</xmin><ymin>{y1 + 1:.4f}</ymin><xmax>{x2:.4f}</xmax><ymax>{y2:.4f}</ymax>"
            f"</bndbox></object>"
            for (x1, y1, x2, y2), label in zip(item["boxes"].tolist(), item["labels"].tolist(), strict=True)
        )
        xml = (f"<annotation><filename>{stem}.png</filename><size><width>{w}</width><height>{h}</height>"
               f"<depth>3</depth></size>{objs}</annotation>")
        (out / "Annotations").mkdir(parents=True, exist_ok=True)
        (out / "Annotations" / f"{stem}.xml").write_text(xml)
    (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


WRITERS = {"coco": write_coco, "yolo": write_yolo, "voc": write_voc}


def dataset_yaml(fmt: str, splits: Sequence[str], names: Sequence[str]) -> str:
    """The dataset.yaml text describing a tree written by the writers above."""
    lines = [f"format: {fmt}", "root: ."]
    for s in splits:
        if fmt == "coco":
            lines.append(f"{s}: {{images: {s}, annotations: annotations/instances_{s}.json}}")
        elif fmt == "yolo":
            lines.append(f"{s}: images/{s}")
        else:
            lines.append(f"{s}: {s}")
    lines.append("names: [" + ", ".join(names) + "]")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m minidet.data.shapes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=sorted(WRITERS), default="coco", help="annotation format to write")
    p.add_argument("--num-images", type=int, default=200, help="images per split")
    p.add_argument("--image-size", type=int, default=256, help="square image side in pixels")
    p.add_argument("--splits", nargs="+", default=["train", "val"], choices=sorted(SPLIT_CODES))
    p.add_argument("--classes", type=int, default=len(SHAPES), help="number of shape classes (1-4)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    for split in args.splits:
        ds = ShapesDataset(args.num_images, args.image_size, args.classes, args.seed, split)
        WRITERS[args.format](ds, out, split)
        print(f"wrote {len(ds)} {split} images ({sum(len(r.boxes) for r in ds.records)} boxes) to {out}")
    names = list(SHAPES[: args.classes])
    (out / "dataset.yaml").write_text(dataset_yaml(args.format, args.splits, names))
    print(f"dataset description: {out / 'dataset.yaml'}")


if __name__ == "__main__":
    main()
