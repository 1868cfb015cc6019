"""Mosaic and the strong (box-safe crop) augmentation keep every box on its own pixels: each box
is drawn as a filled rectangle of a colour of its own (its label names the colour), so a box
whose pixels are not its colour, or a label that outlived its box, shows."""

import numpy as np
import pytest

from minidet.data import DetectionDataset, Record, TrainTransform
from minidet.data.mosaic import Mosaic, mosaic4

GREY = 128


def colour(k: int) -> tuple[int, int, int]:
    """A colour per box id, unlike the grey background, the mean-colour fill and each other."""
    return (20 + 5 * k, 250 - 5 * k, 40 + 90 * (k % 2))


def drawn(h: int, w: int, first_id: int, side: int = 14, ignore: bool = False) -> dict:
    """A grey h x w item with a grid of non-overlapping side x side boxes, ids from first_id;
    with ``ignore`` the last box is an ignore region instead."""
    img = np.full((h, w, 3), GREY, np.uint8)
    boxes = [(x, y, x + side, y + side) for y in range(4, h - side, side + 10) for x in range(6, w - side, side + 12)]
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        img[y1:y2, x1:x2] = colour(first_id + k)
    labels = np.arange(first_id, first_id + len(boxes), dtype=np.int64)
    b = np.array(boxes, np.float32)
    n = len(boxes) - 1 if ignore else len(boxes)
    return {"image": img, "boxes": b[:n], "labels": labels[:n], "ignore_boxes": b[n:], "ignore_labels": labels[n:],
            "areas": np.full(n, side * side, np.float64), "image_id": first_id, "path": f"mem://{first_id}"}


def four_items(ignore: bool = False) -> list[dict]:
    items, next_id = [], 0
    for h, w in ((96, 72), (72, 96), (96, 96), (48, 96)):
        items.append(drawn(h, w, next_id, ignore=ignore))
        next_id += len(items[-1]["boxes"]) + len(items[-1]["ignore_boxes"])
    return items


def colour_mask(image: np.ndarray, k: int) -> np.ndarray:
    return (image == np.array(colour(k), np.uint8)).all(-1)


def check_on_pixels(out: dict, shrink: float = 0.0, key: str = "boxes") -> None:
    """Every pixel of every output box (rounded inwards; with ``shrink`` its middle part, for
    resized images whose edges blend) has its label's colour, and no pixel of that colour lies
    more than 1 px outside the box."""
    labels = out["labels"] if key == "boxes" else out["ignore_labels"]
    assert len(out[key]) == len(labels)
    for (x1, y1, x2, y2), k in zip(out[key], labels, strict=True):
        mx, my = shrink * (x2 - x1), shrink * (y2 - y1)
        xa, ya, xb, yb = int(np.ceil(x1 + mx)), int(np.ceil(y1 + my)), int(x2 - mx), int(y2 - my)
        if xb > xa and yb > ya:
            assert colour_mask(out["image"][ya:yb, xa:xb], int(k)).all(), f"box {k} is not on its pixels"
    for k in set(labels.tolist()):  # (a mosaic may hold one image twice: the union of the boxes labelled k)
        ys, xs = np.nonzero(colour_mask(out["image"], k))
        inside = np.zeros(len(xs), bool)
        for x1, y1, x2, y2 in out[key][labels == k]:
            inside |= (xs >= x1 - 1) & (xs + 1 <= x2 + 1) & (ys >= y1 - 1) & (ys + 1 <= y2 + 1)
        assert inside.all(), f"pixels of box {k} outside it"


@pytest.mark.parametrize("centre", [(48, 48), (24, 70), (72, 24), (30.7, 55.2)])
def test_mosaic_boxes_keep_their_pixels_and_dropped_boxes_their_labels(centre):
    items = four_items()
    out = mosaic4(items, 96, centre, min_visibility=0.4)
    assert out["image"].shape == (96, 96, 3)
    check_on_pixels(out)
    kept = set(out["labels"].tolist())
    for item in items:
        for (x1, y1, x2, y2), k in zip(item["boxes"], item["labels"], strict=True):
            visible = colour_mask(out["image"], int(k)).sum() / ((x2 - x1) * (y2 - y1))
            assert (int(k) in kept) == (visible >= 0.4), f"box {k}: {visible:.2f} visible"
            if int(k) in kept:  # clipped to exactly its visible pixels
                b = out["boxes"][out["labels"] == k][0]
                assert (b[2] - b[0]) * (b[3] - b[1]) == pytest.approx(colour_mask(out["image"], int(k)).sum())
    np.testing.assert_allclose(out["areas"], (out["boxes"][:, 2:] - out["boxes"][:, :2]).prod(1), rtol=1e-6)


def test_mosaic_ignore_regions_follow_their_pixels():
    out = mosaic4(four_items(ignore=True), 96, (40, 50), min_visibility=0.9)
    assert len(out["ignore_boxes"]) > 0
    check_on_pixels(out, key="ignore_boxes")
    check_on_pixels(out)
    for (x1, y1, x2, y2), k in zip(out["ignore_boxes"], out["ignore_labels"], strict=True):
        assert colour_mask(out["image"], int(k)).sum() == pytest.approx((x2 - x1) * (y2 - y1))


def test_mosaic_resizes_each_image_to_the_size():
    items = four_items()
    big = {**items[0], "image": np.repeat(np.repeat(items[0]["image"], 2, 0), 2, 1), "boxes": items[0]["boxes"] * 2}
    out = mosaic4([big, *items[1:]], 96, (60, 60), min_visibility=0.3)
    check_on_pixels(out, shrink=0.25)


class MemoryDataset(DetectionDataset):
    """Items from arrays (no files)."""

    def __init__(self, items: list[dict], transform=None) -> None:
        self.items = items
        records = [Record(path=it["path"], image_id=it["image_id"], width=it["image"].shape[1],
                          height=it["image"].shape[0], boxes=it["boxes"], labels=it["labels"],
                          ignore_boxes=it["ignore_boxes"], ignore_labels=it["ignore_labels"]) for it in items]
        super().__init__(records, [str(i) for i in range(40)], transform=transform)

    def load(self, index: int) -> dict:
        return self.records[index].item(self.items[index]["image"].copy())


def dataset(transform=None, p: float = 1.0, until_epoch: int | None = None) -> MemoryDataset:
    ds = MemoryDataset(four_items(), transform)
    ds.mosaic = Mosaic(size=96, p=p, min_visibility=0.3, until_epoch=until_epoch)
    ds.aug_seed = 5
    return ds


def test_mosaic_in_the_dataset_is_deterministic_per_seed_epoch_and_index():
    t = TrainTransform(96, color_jitter=0.0, min_visibility=0.3, seed=0)
    a, b = dataset(t), dataset(TrainTransform(96, color_jitter=0.0, min_visibility=0.3, seed=0))
    for epoch, index in ((0, 1), (3, 2), (0, 1)):
        x, y = a[(epoch, index)], b[(epoch, index)]
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["boxes"], y["boxes"])
        np.testing.assert_array_equal(x["labels"], y["labels"])
        assert x["mosaic"] == y["mosaic"]
        check_on_pixels(x, shrink=0.25)
    assert not np.array_equal(a[(0, 1)]["image"], a[(1, 1)]["image"])  # another epoch, another mosaic
    b.aug_seed = 6
    assert not np.array_equal(a[(0, 1)]["image"], b[(0, 1)]["image"])


def test_mosaic_stops_at_until_epoch_and_follows_p():
    ds = dataset(until_epoch=2)
    assert "mosaic" in ds[(1, 0)] and "mosaic" not in ds[(2, 0)]
    ds = dataset(p=0.0)
    assert "mosaic" not in ds[(0, 0)]
    with pytest.raises(ValueError, match="probability"):
        Mosaic(size=96, p=1.5)


def test_strong_augment_crops_keep_boxes_on_their_pixels():
    item = drawn(120, 160, 0, side=16)
    t = TrainTransform(128, color_jitter=0.0, min_visibility=0.3, strong=True, seed=0)
    kept_all = 0
    for seed in range(30):
        t.reseed(seed)
        out = t(item)
        assert out["image"].shape == (128, 128, 3)
        check_on_pixels(out, shrink=0.25)
        kept_all += len(out["labels"]) == len(item["labels"])
    assert kept_all >= 10  # the box-safe half of the crops keeps every box
