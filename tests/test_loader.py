"""collate padding and targets; reproducible loading with workers."""

import numpy as np
import torch

from minidet.data import ShapesDataset, TrainTransform, build_loader, collate


def test_collate_pads_to_a_multiple_of_32():
    items = [{"image": np.full((50, 70, 3), 255, np.uint8), "boxes": np.array([[1, 2, 3, 4]], np.float32),
              "labels": np.array([2]), "image_id": 5, "path": "a"},
             {"image": np.zeros((65, 40, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
              "labels": np.zeros(0, np.int64), "image_id": 6, "path": "b"}]
    images, targets = collate(items)
    assert images.shape == (2, 3, 96, 96) and images.dtype == torch.float32
    assert images[0, :, :50, :70].min() == 1.0 and images[0, :, 50:].abs().sum() == 0
    assert targets[0]["boxes"].tolist() == [[1, 2, 3, 4]] and targets[0]["labels"].dtype == torch.int64
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["image_size"] == (65, 40)


def _first_batches(workers, seed, n=2):
    ds = ShapesDataset(16, 96, transform=TrainTransform(96, seed=seed))
    loader = build_loader(ds, batch_size=4, train=True, workers=workers, seed=seed, pin_memory=False)
    out = []
    for i, (images, targets) in enumerate(loader):
        out.append((images, [t["boxes"] for t in targets]))
        if i + 1 == n:
            break
    return out


def test_loading_is_reproducible_for_a_seed():
    for workers in (0, 2):
        a, b = _first_batches(workers, 0), _first_batches(workers, 0)
        for (ia, ba), (ib, bb) in zip(a, b, strict=True):
            assert torch.equal(ia, ib)
            assert all(torch.equal(x, y) for x, y in zip(ba, bb, strict=True))
    c = _first_batches(0, 1)
    assert not torch.equal(c[0][0], _first_batches(0, 0)[0][0])
