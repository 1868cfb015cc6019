"""A small split keeps its decoded images in memory: its items equal those of the same COCO
folder read from the files every time (the uncached path: OpenCV decoding each JPEG), through
the training augmentation and mosaic, and the transforms never reach the kept images."""

import numpy as np
import pytest
from test_per_class import write_coco_folder

import minidet.data.dataset as dataset_module
from minidet.data import TrainTransform, build_dataset
from minidet.data.image_io import read_rgb
from minidet.data.mosaic import Mosaic


def _training_set(root, cache_bytes: int):
    read = build_dataset(str(root), "train", strict=True, fmt="coco")
    ds = dataset_module.DetectionDataset(read.records, read.class_names, read.report, cache_bytes=cache_bytes)
    ds.transform = TrainTransform(160, seed=0)
    ds.aug_seed = 7
    ds.mosaic = Mosaic(size=160, p=0.5, until_epoch=3, seed=0)
    return ds


def test_cached_items_equal_the_files_and_each_image_is_decoded_once(tmp_path, monkeypatch):
    root = write_coco_folder(tmp_path / "cells", n_train=6, n_val=2)
    decodes = []
    monkeypatch.setattr(dataset_module, "read_rgb", lambda path: decodes.append(path) or read_rgb(path))
    cached, files = _training_set(root, dataset_module.CACHE_BYTES), _training_set(root, 0)
    assert cached._decoded is not None and files._decoded is None  # 6 images of 640 x 480 fit, 0 bytes do not
    indices = [(epoch, i) for epoch in range(4) for i in range(len(files))]  # mosaic in epochs 0-2, not 3
    items = [cached[index] for index in indices]
    assert sorted(decodes) == sorted(r.path for r in cached.records)  # each file decoded once
    decodes.clear()
    for index, a in zip(indices, items, strict=True):
        b = files[index]
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), (index, key)
    assert len(decodes) > 2 * len(indices)  # the uncached path decoded again (mosaic: up to 4 per item)
    kept = cached._decoded
    assert len(kept) == 6 and not any(image.flags.writeable for image in kept.values())
    for i, image in kept.items():  # unchanged by the transforms: still the file's pixels
        assert np.array_equal(image, read_rgb(cached.records[i].path))


def test_each_item_gets_its_own_copy(tmp_path):
    root = write_coco_folder(tmp_path / "cells", n_train=2, n_val=1)
    ds = build_dataset(str(root), "train", strict=True, fmt="coco")
    first = ds.load(0)["image"]
    first[:] = 0  # a transform writing into its input
    assert ds.load(0)["image"].any()
    with pytest.raises(ValueError):
        ds._decoded[0][0, 0, 0] = 1
