"""See a trained detector work: ``python -m minidet.demo`` (also ``minidet-demo``).

    python -m minidet.demo                                   # shipped weights on synthetic shapes
    python -m minidet.demo --source photo.jpg --conf 0.3    # also show less certain boxes
    python -m minidet.demo --source images/ --save-json --save-txt
    python -m minidet.demo --source clip.mp4                 # writes an annotated clip.mp4
    python -m minidet.demo --source 0 --show                 # camera 0 in a window

Annotated images / video go to --out; one line per image reports the detections and latency.
The default --conf 0.5 is for looking at the pictures (python -m minidet.eval keeps every box
down to the model's own threshold, 0.05 (SSD: 0.01), as AP needs). Annotated images are drawn at a
readable size: a short side under --draw-size px is enlarged to it (the long side at most 4096),
images longer than 4096 px are shrunk to it, all others keep their size; --draw-size 0 draws at
the original size. detections.json and --save-txt always use the original image's pixels.
Image files are used as displayed, EXIF orientation applied (phone photos come out upright;
see minidet/data/image_io.py): boxes, annotated images, detections.json and --save-txt labels
all refer to the upright image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from .api import DEFAULT_WEIGHTS, load
from .cli import HelpFormatter
from .data.image_io import IMAGE_SUFFIXES, read_rgb, write_rgb
from .data.problems import DataError
from .engine.checkpoint import CheckpointError
from .visualize import DRAW_MIN_SIDE, draw_detections

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class DemoError(RuntimeError):
    """A problem with the demo's input or output; the message says what to do."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minidet.demo", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                   help="checkpoint (default: weights/retinanet_shapes.pt, the shipped shapes RetinaNet)")
    p.add_argument("--source", default="shapes", help="image file, folder, video file, camera index, or 'shapes'")
    p.add_argument("--num", type=int, default=6, help="images to generate for --source shapes")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--conf", type=float, default=0.5, help="score threshold of the boxes shown and saved, "
                   "chosen for viewing; lower it to see less certain boxes")
    p.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default: the model's)")
    p.add_argument("--max-det", type=int, default=None, help="max detections per image (default: the model's)")
    p.add_argument("--draw-size", type=int, default=DRAW_MIN_SIDE, help="annotated images: enlarge a smaller "
                   "short side to this many px for drawing; 0 keeps the original size")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--show", action="store_true", help="show results in a window (needs an OpenCV build with GUI)")
    p.add_argument("--save-json", action="store_true", help="write detections.json (COCO results format)")
    p.add_argument("--save-txt", action="store_true", help="write YOLO txt labels (class cx cy w h score)")
    return p.parse_args(argv)


def frames(source: str, num: int, img_size: int) -> Iterator[tuple[str, np.ndarray, float | None]]:
    """(name, RGB frame, fps or None) for every input image / frame."""
    if source == "shapes":
        from .data import ShapesDataset

        ds = ShapesDataset(num, img_size, split="val", seed=1)
        for i in range(num):
            yield f"shapes_{i:03d}", ds.load(i)["image"], None
        return
    path = Path(source)
    if source.isdigit() or path.suffix.lower() in VIDEO_SUFFIXES:
        cap = cv2.VideoCapture(int(source) if source.isdigit() else str(path))
        if not cap.isOpened():
            what = f"camera {source}" if source.isdigit() else f"video {path}"
            raise DemoError(f"cannot open {what} — check the path / index (and that OpenCV can decode it)")
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        stem = f"camera{source}" if source.isdigit() else path.stem
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield f"{stem}_{i:05d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), fps
            i += 1
        cap.release()
        return
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DemoError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise DemoError(f"--source {source}: no such file or folder (give an image, a folder, a video, a camera "
                        f"index or 'shapes')")
    for f in files:
        try:
            yield f.stem, read_rgb(f), None
        except DataError as err:
            raise DemoError(str(err)) from None


def show(window: str, image: np.ndarray) -> None:
    try:
        cv2.imshow(window, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.waitKey(1)
    except cv2.error:
        raise DemoError("this OpenCV build has no GUI support (minidet installs opencv-python-headless): drop --show "
                        "and look at the files in --out, or pip install opencv-python") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        predictor = load(args.weights, args.device)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    predictor.set_thresholds(args.conf, args.iou, args.max_det)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = predictor.class_names
    results, writer, n = [], None, 0
    try:
        for name, image, fps in frames(args.source, args.num, predictor.img_size):
            t = time.perf_counter()
            det = predictor.predict(image)
            ms = (time.perf_counter() - t) * 1e3
            drawn = draw_detections(image, det["boxes"], det["scores"], det["labels"], names,
                                    min_side=args.draw_size or None)
            counts = Counter(det["names"])
            summary = ", ".join(f"{c} {k}" for k, c in counts.most_common()) or "nothing"
            print(f"{name}: {len(det['boxes'])} detections ({summary}) in {ms:.1f} ms")
            if fps is None:
                write_rgb(out / f"{name}.png", drawn)
            else:
                if writer is None:
                    video = out / f"{name.rsplit('_', 1)[0]}.mp4"
                    h, w = drawn.shape[:2]
                    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            if args.show:
                show("minidet", drawn)
            h, w = image.shape[:2]
            for (x1, y1, x2, y2), s, lab in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(),
                                               strict=True):
                results.append({"image_id": name, "category_id": int(lab), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "score": float(s)})
            if args.save_txt:
                (out / "labels").mkdir(exist_ok=True)
                lines = [f"{lab} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f} {s:.4f}"
                         for (x1, y1, x2, y2), s, lab in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                             det["labels"].tolist(), strict=True)]
                (out / "labels" / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            n += 1
    except DemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if writer is not None:
            writer.release()
    if args.save_json:
        (out / "detections.json").write_text(json.dumps(results))
    if n == 0:
        print(f"error: {args.source} gave no images", file=sys.stderr)
        return 2
    print(f"{n} image(s) -> {out}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
