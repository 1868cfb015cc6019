"""Transforms keep boxes on the image content; the letterbox maps back exactly."""

import numpy as np
import pytest

from minidet.data import EvalTransform, TrainTransform, unletterbox
from minidet.data.transforms import ssd_expand, ssd_iou_crop


def _item(h=120, w=160, boxes=((30, 20, 90, 70), (100, 80, 150, 115))):
    """Grey image with pure red filled rectangles at ``boxes``."""
    img = np.full((h, w, 3), 128, np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = (255, 0, 0)
    return {"image": img, "boxes": np.array(boxes, np.float32), "labels": np.arange(len(boxes), dtype=np.int64),
            "ignore_boxes": np.zeros((0, 4), np.float32), "image_id": 0, "path": "x"}


def _red_pixels_inside(out, tol=1.5):
    img = out["image"].astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    ys, xs = np.nonzero(red)
    inside = np.zeros(len(xs), bool)
    for x1, y1, x2, y2 in out["boxes"]:
        inside |= (xs >= x1 - tol) & (xs < x2 + tol) & (ys >= y1 - tol) & (ys < y2 + tol)
    return red.sum(), inside.all()


@pytest.mark.parametrize("ssd", [False, True])
def test_train_transform_keeps_boxes_on_the_drawn_content(ssd):
    t = TrainTransform(size=128, color_jitter=0.0, min_visibility=0.0, ssd=ssd, seed=0)
    # SSD's crop drops objects whose centre leaves the crop (their pixels may stay), so the
    # SSD variant is checked on one object at a time
    items = [_item(boxes=((30, 20, 90, 70),)), _item(boxes=((100, 80, 150, 115),))] if ssd else [_item()]
    for seed in range(25):
        t.reseed(seed)
        out = t(items[seed % len(items)])
        assert out["image"].shape == (128, 128, 3)
        assert len(out["boxes"]) == len(out["labels"])
        n_red, ok = _red_pixels_inside(out)
        assert ok, f"seed {seed}: red pixels outside the returned boxes"
        # every returned box still covers red pixels (no box without its content)
        img = out["image"].astype(int)
        for x1, y1, x2, y2 in out["boxes"]:
            patch = img[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]
            assert ((patch[..., 0] > 200) & (patch[..., 1] < 60)).any()


def test_train_transform_flip_and_boxes_leaving_the_image():
    item = _item()
    t = TrainTransform(size=160, scale=(1.0, 1.0), hflip=1.0, color_jitter=0.0, seed=0)
    out = t(item)  # longest side 160 = the image: no scaling, only the flip
    assert out["image"].shape == (160, 160, 3)
    np.testing.assert_allclose(out["boxes"], [[70, 20, 130, 70], [10, 80, 60, 115]], atol=1e-3)
    # a strong zoom pushes boxes out: they are clipped or dropped together with their labels
    t = TrainTransform(size=64, scale=(2.0, 2.0), hflip=0.0, color_jitter=0.0, min_visibility=0.5, seed=3)
    for seed in range(10):
        t.reseed(seed)
        out = t(_item())
        assert len(out["boxes"]) == len(out["labels"]) and (out["boxes"] >= 0).all() and (out["boxes"] <= 64).all()


def test_ignore_boxes_follow_the_image():
    item = _item()
    item["ignore_boxes"] = item["boxes"][1:].copy()
    item["boxes"], item["labels"] = item["boxes"][:1], item["labels"][:1]
    out = TrainTransform(size=160, scale=(1.0, 1.0), hflip=1.0, color_jitter=0.0)(item)
    np.testing.assert_allclose(out["ignore_boxes"], [[10, 80, 60, 115]], atol=1e-3)
    assert out["labels"].tolist() == [0]


def test_letterbox_round_trip_is_exact():
    item = _item(h=97, w=203, boxes=((30, 20, 90, 70), (100, 50, 203, 97)))
    out = EvalTransform(size=128)(item)
    assert out["image"].shape == (128, 128, 3) and out["orig_size"] == (97, 203)
    back = unletterbox(out["boxes"], out["scale"], out["orig_size"])
    np.testing.assert_allclose(back, item["boxes"], rtol=0, atol=1e-4)
    n_red, ok = _red_pixels_inside(out)
    assert n_red > 0 and ok
    import torch
    torch.testing.assert_close(unletterbox(torch.as_tensor(out["boxes"]), out["scale"], out["orig_size"]),
                               torch.as_tensor(item["boxes"]), atol=1e-4, rtol=0)


def test_ssd_expand_and_iou_crop():
    rng = np.random.default_rng(0)
    item = _item(boxes=((30, 20, 90, 70),))
    for _ in range(20):
        img, boxes = ssd_expand(item["image"], item["boxes"], rng, p=1.0)
        assert img.shape[0] >= 120 and img.shape[1] >= 160
        crop, cboxes, labels = ssd_iou_crop(img, boxes, item["labels"], rng)
        assert len(cboxes) == len(labels) >= 1
        out = {"image": crop, "boxes": cboxes}
        assert _red_pixels_inside(out)[1]


def test_scale_pad_crop_is_albumentations_geometry():
    """The standard augmentation's numpy geometry against albumentations' own transforms on the
    same parameters: Resize, PadIfNeeded(top_left, mean fill), Crop, HorizontalFlip with
    BboxParams(min_visibility 0.3, clip, filter_invalid_bboxes) — same pixels, same surviving
    boxes (with their labels), same coordinates."""
    import albumentations as A
    import cv2

    from minidet.data.transforms import MEAN_RGB, scale_crop_params, scale_pad_crop

    rng = np.random.default_rng(0)
    size, kept_total, dropped_total = 64, 0, 0
    for trial in range(150):
        h, w = int(rng.integers(20, 120)), int(rng.integers(20, 120))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        xy = rng.uniform(0, [w - 2, h - 2], (8, 2))
        wh = rng.uniform(1, [w, h], (8, 2)) * rng.uniform(0.05, 0.6)
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1).astype(np.float32)
        boxes = boxes[(boxes[:, 2] > boxes[:, 0] + 0.5) & (boxes[:, 3] > boxes[:, 1] + 0.5)]
        labels = np.arange(len(boxes))
        params = scale_crop_params(rng, h, w, size, (0.5, 1.6), 0.5)
        nh, nw, top, left, flip = params
        ours, ours_boxes, keep = scale_pad_crop(image, boxes, params, size, 0.3)
        ref = A.Compose(
            [A.Resize(nh, nw, interpolation=cv2.INTER_LINEAR),
             A.PadIfNeeded(size, size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=MEAN_RGB),
             A.Crop(left, top, left + size, top + size), A.HorizontalFlip(p=1.0 if flip else 0.0)],
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3, clip=True,
                                     filter_invalid_bboxes=True))(image=image, bboxes=boxes, labels=labels)
        np.testing.assert_array_equal(ours, ref["image"], err_msg=f"trial {trial}")
        assert labels[keep].tolist() == list(ref["labels"]), f"trial {trial}"
        np.testing.assert_allclose(ours_boxes, np.asarray(ref["bboxes"], np.float32).reshape(-1, 4), atol=1e-3,
                                   err_msg=f"trial {trial}")
        kept_total, dropped_total = kept_total + keep.sum(), dropped_total + (~keep).sum()
    assert kept_total > 300 and dropped_total > 50  # both outcomes were exercised
