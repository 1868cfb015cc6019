"""Tree crowns in aerial RGB images: a small real detection dataset from the sample data that the
DeepForest package (MIT licence, https://github.com/weecology/DeepForest) ships in its wheel.

    pip download deepforest==2.1.0 --no-deps -d /tmp/pkg     # the wheel only; nothing installed
    python datasets/prepare_deepforest.py /tmp/pkg/deepforest-2.1.0-py3-none-any.whl --out data/deepforest
    python datasets/prepare_deepforest.py --download --out data/deepforest   # runs that pip download
    python -m minidet.data.check data/deepforest
    python -m minidet.train --data data/deepforest

Reads every Pascal VOC XML in the wheel's ``deepforest/data/`` that has an image of the same name
(PNG first), maps every object to the one class "Tree" (SOAP_061's "Alive" / "Dead" are tree
health, not other objects) and writes a VOC devkit folder: ``JPEGImages/`` (PNG tiles, lossless),
``Annotations/``, ``ImageSets/Main/{train,val}.txt``, plus ``dataset.yaml`` (so ``--data <out>``
needs no flags) and the DeepForest licence.

Rules (see datasets/README.md for why):

- Tiles: images larger than --tile (400) px are cut into n = ceil(size / tile) tiles per axis,
  spread evenly from edge to edge (equal small overlaps, every tile full size, no padding); an
  image of at most --tile px is one tile. Tiles are named ``<image>_x<left>_y<top>``.
- Boxes cut by a tile border: the part inside the tile is kept as an object when at least
  --min-visible (0.5) of the box's area is inside, and as a ``difficult`` object (an ignore region
  for training and evaluation) when less is; boxes not overlapping the tile are left out.
- Coordinates are VOC's 1-based inclusive pixels, as the source files are (1..width); a tile moves
  them by its offset, so an untiled image keeps its annotation values exactly.
- Split: whole source images, never tiles of one image on both sides (neighbouring tiles share
  trees and overlap): val = the tiles of --val (default: the 1249x1035 Yellowstone image), train
  = all the others.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from minidet.data.image_io import decode_rgb, write_rgb

DATA_DIR = "deepforest/data/"
IMAGE_ORDER = (".png", ".jpg", ".jpeg", ".tif", ".tiff")  # the first that exists is the image of an XML
CLASS_NAME = "Tree"
DEFAULT_VAL = ("2019_YELL_2_541000_4977000_image_crop",)
DEFAULT_VERSION = "2.1.0"
WRITTEN = ("JPEGImages", "Annotations", "ImageSets", "dataset.yaml", "LICENSE-deepforest.txt")


class PrepareError(RuntimeError):
    """A problem with the input wheel or the output folder; the message says what to do."""


@dataclass
class Source:
    """One annotated image of the wheel: RGB pixels, continuous xyxy boxes [N, 4] (VOC xmin - 1,
    ymin - 1, xmax, ymax) and the original class names."""

    stem: str
    image: np.ndarray
    boxes: np.ndarray
    names: list[str]


@dataclass
class Tile:
    """A cut-out of a source image: its boxes in tile pixels, the fraction of each box's area
    inside the tile, and which boxes are difficult."""

    name: str
    source: str
    image: np.ndarray
    boxes: np.ndarray
    visible: np.ndarray
    difficult: np.ndarray


def _number(obj: ET.Element, tag: str, where: str) -> float:
    text = obj.findtext(f"bndbox/{tag}")
    try:
        return float(text)
    except (TypeError, ValueError):
        raise PrepareError(f"{where}: <{tag}> must be a number, got {text!r}") from None


def read_sources(wheel: Path) -> tuple[list[Source], str | None]:
    """The annotated images in ``wheel``'s deepforest/data/ (sorted by name) and its licence text."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as err:
        raise PrepareError(f"{wheel}: not a readable wheel / zip file ({err}) — give the .whl that "
                           f"`pip download deepforest --no-deps` writes, or use --download") from None
    with zf:
        files = {PurePosixPath(n): n for n in zf.namelist() if n.startswith(DATA_DIR)}
        licence = next((zf.read(n).decode("utf-8", "replace") for n in zf.namelist()
                        if n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")), None)
        sources = []
        for xml_path in sorted(p for p in files if p.suffix.lower() == ".xml"):
            image_path = next((p for s in IMAGE_ORDER for p in files
                               if p.parent == xml_path.parent and p.stem == xml_path.stem and p.suffix.lower() == s),
                              None)
            if image_path is None:
                print(f"skipped {xml_path}: no image of the same name")
                continue
            where = f"{wheel}:{xml_path}"
            try:
                root = ET.fromstring(zf.read(files[xml_path]))
            except ET.ParseError as err:
                raise PrepareError(f"{where}: not valid XML ({err})") from None
            image = decode_rgb(np.frombuffer(zf.read(files[image_path]), np.uint8))
            if image is None:
                raise PrepareError(f"{wheel}:{image_path}: cannot be decoded — is the wheel complete?")
            h, w = image.shape[:2]
            size = (root.findtext("size/width"), root.findtext("size/height"))
            if all(size) and (int(float(size[0])), int(float(size[1]))) != (w, h):
                raise PrepareError(f"{where}: <size> says {size[0]}x{size[1]} but {image_path.name} is {w}x{h}")
            objects = root.findall("object")
            boxes = np.array([[_number(o, "xmin", where) - 1, _number(o, "ymin", where) - 1,
                               _number(o, "xmax", where), _number(o, "ymax", where)] for o in objects],
                             np.float64).reshape(-1, 4)
            names = [(o.findtext("name") or "").strip() for o in objects]
            sources.append(Source(xml_path.stem.replace(" ", "_"), image, boxes, names))
    if not sources:
        raise PrepareError(f"{wheel}: no image + VOC XML pairs in {DATA_DIR} — is this a deepforest wheel?")
    return sources, licence


def tile_origins(size: int, tile: int) -> list[int]:
    """Left (or top) edges of the tiles along one axis: ceil(size / tile) tiles spread evenly from
    0 to size - tile, so they cover the axis with equal overlaps; [0] when size <= tile."""
    if size <= tile:
        return [0]
    n = math.ceil(size / tile)
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def cut_boxes(boxes: np.ndarray, x0: float, y0: float, width: float,
              height: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] (continuous xyxy in the image) as seen by the tile at (x0, y0) of
    width x height -> (clipped boxes [K, 4] in tile pixels, visible fraction of their area [K])
    for the K boxes that overlap the tile."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    shifted = boxes - np.array([x0, y0, x0, y0])
    clipped = np.clip(shifted, 0, [width, height, width, height])
    inter = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(clipped[:, 3] - clipped[:, 1], 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = inter > 0
    return clipped[keep], inter[keep] / area[keep]


def make_tiles(source: Source, tile: int, min_visible: float) -> list[Tile]:
    """Every tile of one source image (see ``tile_origins`` and ``cut_boxes``)."""
    h, w = source.image.shape[:2]
    tiles = []
    for y0 in tile_origins(h, tile):
        for x0 in tile_origins(w, tile):
            tw, th = min(tile, w), min(tile, h)
            boxes, visible = cut_boxes(source.boxes, x0, y0, tw, th)
            tiles.append(Tile(f"{source.stem}_x{x0:04d}_y{y0:04d}", source.stem,
                              source.image[y0:y0 + th, x0:x0 + tw], boxes, visible, visible < min_visible))
    return tiles


def _fmt(v: float) -> str:
    return f"{v:g}"  # integers stay integers ("12"), anything else keeps its digits


def voc_xml(tile: Tile) -> str:
    """The VOC annotation of a tile (1-based inclusive pixels: xmin = x1 + 1, xmax = x2)."""
    h, w = tile.image.shape[:2]
    lines = ["<annotation>", "    <folder>JPEGImages</folder>", f"    <filename>{tile.name}.png</filename>",
             f"    <source><database>DeepForest sample data</database><image>{tile.source}</image></source>",
             f"    <size><width>{w}</width><height>{h}</height><depth>3</depth></size>",
             "    <segmented>0</segmented>"]
    for (x1, y1, x2, y2), visible, hard in zip(tile.boxes.tolist(), tile.visible.tolist(), tile.difficult.tolist(),
                                               strict=True):
        lines += ["    <object>", f"        <name>{CLASS_NAME}</name>", "        <pose>Unspecified</pose>",
                  f"        <truncated>{int(visible < 1)}</truncated>", f"        <difficult>{int(hard)}</difficult>",
                  f"        <bndbox><xmin>{_fmt(x1 + 1)}</xmin><ymin>{_fmt(y1 + 1)}</ymin>"
                  f"<xmax>{_fmt(x2)}</xmax><ymax>{_fmt(y2)}</ymax></bndbox>", "    </object>"]
    return "\n".join(lines + ["</annotation>", ""])


def _prepare_out(out: Path, overwrite: bool) -> None:
    present = [out / n for n in WRITTEN if (out / n).exists()]
    if present and not overwrite:
        raise PrepareError(f"--out {out} already holds a dataset ({present[0].name}, ...) — pass --overwrite to "
                           f"replace it, or choose another --out")
    for p in present:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def percentiles(values: np.ndarray) -> str:
    if len(values) == 0:
        return "-"
    q = np.percentile(values, [0, 5, 25, 50, 75, 95, 100])
    return " / ".join(f"{v:.0f}" for v in q)


def summarize(tiles: dict[str, list[Tile]], sources: dict[str, list[str]], trees: dict[str, int]) -> list[str]:
    """Printable lines: per split the tiles, their objects and difficult objects, the source
    images and their trees, and box sizes (min / p5 / p25 / median / p75 / p95 / max, pixels) of
    the objects."""
    lines = []
    for split, items in tiles.items():
        boxes = np.concatenate([t.boxes[~t.difficult] for t in items] or [np.zeros((0, 4))])
        hard = sum(int(t.difficult.sum()) for t in items)
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        lines += [f"{split}: {len(items)} images, {len(boxes)} boxes + {hard} difficult (tiles of "
                  f"{', '.join(sources[split])}: {trees[split]} trees; overlapping tiles show some twice)",
                  f"  box width  px (min / p5 / p25 / median / p75 / p95 / max): {percentiles(bw)}",
                  f"  box height px: {percentiles(bh)}",
                  f"  sqrt(area) px: {percentiles(np.sqrt(bw * bh))}"]
    return lines


def prepare(wheel: Path, out: Path, tile: int = 400, min_visible: float = 0.5,
            val: tuple[str, ...] = DEFAULT_VAL, overwrite: bool = False) -> dict[str, list[Tile]]:
    """Write the VOC dataset to ``out``; -> {split: tiles}."""
    sources, licence = read_sources(wheel)
    stems = [s.stem for s in sources]
    unknown = [v for v in val if v not in stems]
    if unknown:
        raise PrepareError(f"--val {' '.join(unknown)}: not an annotated image of {wheel.name}; choose from "
                           f"{' '.join(stems)}")
    if len(set(val)) == len(stems):
        raise PrepareError("--val names every annotated image, which leaves no training images — name fewer")
    _prepare_out(out, overwrite)
    split_sources = {"train": [s for s in stems if s not in val], "val": [s for s in stems if s in val]}
    tiles: dict[str, list[Tile]] = {"train": [], "val": []}
    original = sorted({n for s in sources for n in s.names})
    for source in sources:
        split = "val" if source.stem in val else "train"
        for t in make_tiles(source, tile, min_visible):
            write_rgb(out / "JPEGImages" / f"{t.name}.png", t.image)
            (out / "Annotations").mkdir(parents=True, exist_ok=True)
            (out / "Annotations" / f"{t.name}.xml").write_text(voc_xml(t))
            tiles[split].append(t)
    main_dir = out / "ImageSets" / "Main"
    main_dir.mkdir(parents=True, exist_ok=True)
    for split, items in tiles.items():
        (main_dir / f"{split}.txt").write_text("".join(f"{t.name}\n" for t in items))
    (out / "dataset.yaml").write_text(
        f"# Tree crowns from the DeepForest {wheel.name} sample data (MIT licence, LICENSE-deepforest.txt);\n"
        f"# written by datasets/prepare_deepforest.py: {tile} px tiles, boxes less than {min_visible:g} inside\n"
        f"# a tile are difficult; val = the tiles of {', '.join(val)}.\n"
        f"format: voc\nroot: .\ntrain: train\nval: val\nnames: [{CLASS_NAME}]\n")
    if licence:
        (out / "LICENSE-deepforest.txt").write_text(licence)
    print(f"{len(sources)} annotated images in {wheel.name} (class names {original} -> {CLASS_NAME})")
    trees = {split: sum(len(s.boxes) for s in sources if s.stem in names) for split, names in split_sources.items()}
    print("\n".join(summarize(tiles, split_sources, trees)))
    print(f"-> {out} (VOC devkit + dataset.yaml); check it: python -m minidet.data.check {out}")
    return tiles


def download(version: str, folder: Path) -> Path:
    """``pip download deepforest==version --no-deps`` into ``folder``; -> the wheel."""
    cmd = [sys.executable, "-m", "pip", "download", f"deepforest=={version}", "--no-deps", "--only-binary=:all:",
           "-d", str(folder)]
    print("running:", " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        raise PrepareError(f"pip download deepforest=={version} failed (see pip's message above) — check the network, "
                           f"or download the wheel elsewhere and pass its path")
    wheels = sorted(folder.glob(f"deepforest-{version}-*.whl"))
    if not wheels:
        raise PrepareError(f"pip download wrote no deepforest-{version}-*.whl into {folder}")
    return wheels[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python datasets/prepare_deepforest.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wheel", nargs="?", type=Path, help="the deepforest .whl (or use --download)")
    p.add_argument("--download", action="store_true", help="pip download the wheel (--no-deps) into a temp folder")
    p.add_argument("--deepforest-version", default=DEFAULT_VERSION, help="version --download fetches (default: "
                   "%(default)s, the one the README's counts are from)")
    p.add_argument("--out", type=Path, required=True, help="output folder (VOC devkit layout)")
    p.add_argument("--tile", type=int, default=400, help="tile side in px (default: %(default)s)")
    p.add_argument("--min-visible", type=float, default=0.5, help="fraction of a cut box's area that must lie "
                   "in the tile for it to stay an object; less makes it difficult (default: %(default)s)")
    p.add_argument("--val", nargs="+", default=list(DEFAULT_VAL), help="source images (XML names without .xml) "
                   "whose tiles form the val split (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    args = p.parse_args(argv)
    if (args.wheel is None) == (not args.download):
        p.error("give the wheel's path or --download (one of them)")
    if args.tile < 1 or not 0 < args.min_visible <= 1:
        p.error("--tile must be >= 1 and --min-visible in (0, 1]")
    try:
        if args.download:
            with tempfile.TemporaryDirectory() as tmp:
                prepare(download(args.deepforest_version, Path(tmp)), args.out, args.tile, args.min_visible,
                        tuple(args.val), args.overwrite)
        else:
            if not args.wheel.is_file():
                raise PrepareError(f"wheel not found: {args.wheel} — pip download deepforest=={DEFAULT_VERSION} "
                                   f"--no-deps -d DIR, or use --download")
            prepare(args.wheel, args.out, args.tile, args.min_visible, tuple(args.val), args.overwrite)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
