"""minidet.nms against torchvision.ops.nms / batched_nms (the reference kernels)."""

import pytest
import torch
import torchvision.ops as tvo
from conftest import random_boxes

from minidet.nms import batched_nms, nms


def _random_case(i: int, g: torch.Generator):
    n = int(torch.randint(1, 1500, (1,), generator=g))
    mode = i % 4
    if mode == 0:  # small integer grid: many exact IoU ties, IoU exactly on thresholds
        xy = torch.randint(0, 12, (n, 2), generator=g).float()
        wh = torch.randint(0, 6, (n, 2), generator=g).float()
        boxes = torch.cat([xy, xy + wh], 1)
    elif mode == 1:  # dense clusters, like a detector's raw output
        centres = torch.rand(20, 2, generator=g) * 400
        k = torch.randint(0, 20, (n,), generator=g)
        c = centres[k] + torch.randn(n, 2, generator=g) * 8
        wh = 40 * (1 + 0.2 * torch.randn(n, 2, generator=g)).clamp(min=0.2)
        boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
    else:
        boxes = random_boxes(n, g, scale=[100, 1000][mode - 2], max_size=60)
    scores = torch.randint(0, 8, (n,), generator=g).float() if i % 2 else torch.rand(n, generator=g)
    return boxes, scores


THRESHOLDS = [0.5, 0.0, 1 / 3, 0.6, 0.7, 0.25, 1.0, 0.05]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_torchvision_on_random_cases(dtype):
    g = torch.Generator().manual_seed(1)
    for i in range(80):
        boxes, scores = _random_case(i, g)
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        thr = THRESHOLDS[i % len(THRESHOLDS)]
        ref = tvo.nms(boxes, scores, thr)
        out = nms(boxes, scores, thr)
        assert out.dtype == torch.int64
        assert torch.equal(out, ref), f"case {i}: thr={thr}, n={len(boxes)}"


def test_large_inputs_match():
    g = torch.Generator().manual_seed(2)
    for n in (5000, 20000):
        boxes = random_boxes(n, g, scale=1000, max_size=100)
        scores = torch.rand(n, generator=g)
        assert torch.equal(nms(boxes, scores, 0.5), tvo.nms(boxes, scores, 0.5))


def test_empty_and_single():
    e = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert e.dtype == torch.int64 and e.numel() == 0
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).numel() == 0
    assert nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3]), 0.5).tolist() == [0]


def test_iou_exactly_at_threshold_is_kept():
    # IoU of these two boxes is exactly 2 / 4 = 0.5
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1] == tvo.nms(boxes, scores, 0.5).tolist()
    assert nms(boxes, scores, 0.49).tolist() == [0] == tvo.nms(boxes, scores, 0.49).tolist()


def test_threshold_compared_in_double_like_torchvision():
    # float32(0.6) > 0.6: an IoU equal to float32(0.6) must still count as "> 0.6"
    thr = 0.6
    iou32 = torch.tensor(thr, dtype=torch.float32).item()
    assert iou32 > thr
    # box B inside A with area ratio = iou32 (to float32 precision)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, iou32, 1.0]])
    scores = torch.tensor([1.0, 0.5])
    assert torch.equal(nms(boxes, scores, thr), tvo.nms(boxes, scores, thr))


def test_tied_scores_keep_lower_index_first():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 10, 10]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2] == tvo.nms(boxes, scores, 0.5).tolist()


def test_identical_boxes_and_chain():
    # A chain: 0 suppresses 1, 1 would suppress 2 but is gone, so 2 survives.
    boxes = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2] == tvo.nms(boxes, scores, 0.5).tolist()
    same = torch.tensor([[5.0, 5, 9, 9]] * 6)
    assert nms(same, torch.arange(6.0), 0.5).tolist() == [5]


def test_degenerate_boxes_never_suppress():
    boxes = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 4, 0], [5, 5, 3, 3], [0, 0, 2, 2]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    assert torch.equal(nms(boxes, scores, 0.5), tvo.nms(boxes, scores, 0.5))
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3, 4]


def test_half_precision_input():
    g = torch.Generator().manual_seed(3)
    boxes = random_boxes(300, g, 100, 40)
    scores = torch.rand(300, generator=g)
    out = nms(boxes.half(), scores.half(), 0.5)
    ref = tvo.nms(boxes.half().float(), scores.half().float(), 0.5)
    assert torch.equal(out, ref)


def _per_class_reference(boxes, scores, idxs, thr):
    """Independent reference: torchvision nms per class, merged by (score desc, index asc)."""
    kept = [torch.nonzero(idxs == c).squeeze(1)[tvo.nms(boxes[idxs == c], scores[idxs == c], thr)]
            for c in idxs.unique()]
    kept = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64)
    kept = kept.sort()[0]
    return kept[torch.sort(scores[kept], descending=True, stable=True)[1]]


def test_batched_nms_matches_per_class_torchvision():
    g = torch.Generator().manual_seed(4)
    for i in range(40):
        boxes, scores = _random_case(i, g)
        idxs = torch.randint(0, [1, 3, 20, 80][i % 4], (len(boxes),), generator=g)
        thr = THRESHOLDS[i % len(THRESHOLDS)]
        out = batched_nms(boxes, scores, idxs, thr)
        assert torch.equal(out, _per_class_reference(boxes, scores, idxs, thr)), f"case {i}"
        # torchvision's own batched_nms keeps the same set (its order of tied scores across
        # classes comes from an unstable sort, so only the set is compared)
        assert set(out.tolist()) == set(tvo.batched_nms(boxes, scores, idxs, thr).tolist())


def test_batched_nms_classes_do_not_interact():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, torch.tensor([5, 1000000, 7]), 0.5).tolist() == [0, 1, 2]


def test_input_errors():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2), 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_torchvision():
    g = torch.Generator().manual_seed(5)
    for i in range(20):
        boxes, scores = _random_case(i, g)
        out = nms(boxes.cuda(), scores.cuda(), 0.5)
        assert out.device.type == "cuda"
        assert torch.equal(out.cpu(), tvo.nms(boxes, scores, 0.5))
