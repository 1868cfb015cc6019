"""Reading images from disk with clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .problems import DataError


def read_rgb(path: str | Path) -> np.ndarray:
    """Image file -> uint8 HxWx3 RGB array; a clear DataError for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path} — check the dataset root and the image paths "
                        f"in its annotations")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"cannot decode image {path} (corrupt or not an image) — replace or delete the file, "
                        f"or run with --lenient to skip it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 HxWx3 RGB array (format from the file suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    buf.tofile(str(path))
