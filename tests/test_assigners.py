"""Assigners on hand-built priors and gts whose correct assignment is worked out by hand,
and ATSS against a straightforward per-gt reference written here."""

import torch
from assign_one import assign_one

from minidet.anchors import AnchorGenerator
from minidet.assigners import ATSSAssigner, MaxIoUAssigner, SSDMatcher, YOLOGridAssigner, pad_gts
from minidet.boxes import box_iou


def T(rows):
    return torch.tensor(rows, dtype=torch.float32)


PRIORS = T([
    [0, 0, 10, 10],     # A0
    [5, 0, 15, 10],     # A1
    [20, 20, 30, 30],   # A2
    [100, 100, 110, 110],  # A3
    [0, 54, 10, 64],    # A4
    [0, 50, 10, 60],    # A5
])


def test_maxiou_thresholds_ignore_and_background():
    gts = T([[0, 0, 10, 10], [21, 21, 31, 31], [0, 50, 10, 60]])
    r = assign_one(MaxIoUAssigner(), PRIORS, [6], gts, torch.tensor([3, 1, 2]))
    # A0: IoU 1 with gt0; A1: 1/3 -> background; A2: 81/119 with gt1; A3: nothing;
    # A4: 60/140 = 0.43 with gt2 -> ignored; A5: IoU 1 with gt2
    assert r.gt_inds.tolist() == [1, 0, 2, 0, -1, 3]
    assert r.labels.tolist() == [3, -1, 1, -1, -1, 2]
    torch.testing.assert_close(r.max_iou[:3], torch.tensor([1.0, 1 / 3, 81 / 119]))


def test_maxiou_low_quality_match_claims_best_prior():
    gts = T([[14, 0, 16, 4]])  # overlaps only A1, IoU 4 / 104
    r = assign_one(MaxIoUAssigner(), PRIORS, [6], gts, torch.tensor([0]))
    assert r.gt_inds.tolist() == [0, 1, 0, 0, 0, 0]
    r = assign_one(MaxIoUAssigner(allow_low_quality=False), PRIORS, [6], gts, torch.tensor([0]))
    assert r.gt_inds.tolist() == [0, 0, 0, 0, 0, 0]
    # min_pos_iou above the best IoU: no claim
    r = assign_one(MaxIoUAssigner(min_pos_iou=0.1), PRIORS, [6], gts, torch.tensor([0]))
    assert r.gt_inds.tolist() == [0] * 6


def test_maxiou_identical_gts_zero_area_and_uncovered_gts():
    gts = T([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 50, 50], [500, 500, 510, 510]])
    r = assign_one(MaxIoUAssigner(), PRIORS, [6], gts, torch.tensor([0, 1, 2, 3]))
    # identical gts: the lower index wins; the zero-area and the uncovered gt claim nothing
    assert r.gt_inds.tolist() == [1, 0, 0, 0, 0, 0]


def test_maxiou_tie_between_claimers_goes_to_higher_iou():
    priors = T([[0, 0, 10, 10], [50, 50, 60, 60]])
    gts = T([[0, 0, 10, 10], [0, 0, 2, 2]])  # both have prior 0 as their best
    r = assign_one(MaxIoUAssigner(), priors, [2], gts, torch.tensor([0, 1]))
    assert r.gt_inds.tolist() == [1, 0]


def test_no_gts_means_all_background():
    for assigner in (MaxIoUAssigner(), ATSSAssigner(), SSDMatcher(), YOLOGridAssigner(2)):
        r = assign_one(assigner, PRIORS, [6], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
        assert r.gt_inds.tolist() == [0] * 6 and r.labels.tolist() == [-1] * 6


def test_batched_with_padding_matches_single_images():
    gen = AnchorGenerator(sizes=(16, 32), strides=(8, 16), ratios=(1.0,), scales=(1.0,))
    priors, npl = gen([(8, 8), (4, 4)])
    gts = [T([[0, 0, 20, 20], [30, 30, 60, 62]]), T([[5, 40, 25, 60]]), torch.zeros(0, 4)]
    labels = [torch.tensor([0, 1]), torch.tensor([2]), torch.zeros(0, dtype=torch.long)]
    boxes, lab, valid = pad_gts(gts, labels)
    for assigner in (MaxIoUAssigner(), ATSSAssigner(topk=3), SSDMatcher()):
        batch = assigner.assign_batch(priors, npl, boxes, lab, valid)
        for i in range(3):
            single = assign_one(assigner, priors, npl, gts[i], labels[i])
            assert torch.equal(batch.gt_inds[i], single.gt_inds), type(assigner).__name__
            assert torch.equal(batch.labels[i], single.labels)


def test_ssd_matcher_forces_best_prior():
    gts = T([[14, 0, 16, 4], [21, 21, 31, 31]])
    r = assign_one(SSDMatcher(), PRIORS, [6], gts, torch.tensor([5, 6]))
    # gt0's best IoU is 0.038 (A1) but it is forced there; gt1 matches A2 by threshold
    assert r.gt_inds.tolist() == [0, 1, 2, 0, 0, 0]
    assert r.labels.tolist() == [-1, 5, 6, -1, -1, -1]


def test_ssd_matcher_ties_and_conflicts():
    priors = T([[0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 50, 50]])
    # gt0 ties between priors 0 and 1 -> the lowest index (0) is forced; both pass 0.5 anyway
    r = assign_one(SSDMatcher(), priors, [3], T([[0, 0, 10, 10]]), torch.tensor([0]))
    assert r.gt_inds.tolist() == [1, 1, 0]
    # two gts whose best prior is prior 2: the one overlapping it more wins
    gts = T([[40, 40, 44, 44], [40, 40, 48, 48]])
    r = assign_one(SSDMatcher(iou_thr=0.9), priors, [3], gts, torch.tensor([0, 1]))
    assert r.gt_inds.tolist() == [0, 0, 2]


def _atss_reference(priors, num_per_level, gts, topk):
    """ATSS written the plain way: a loop over gts and levels."""
    a = priors.shape[0]
    iou = box_iou(gts, priors)
    pc = (priors[:, :2] + priors[:, 2:]) / 2
    best_iou = torch.full((a,), -1.0)
    gt_inds = torch.zeros(a, dtype=torch.long)
    for g in range(len(gts)):
        gc = (gts[g, :2] + gts[g, 2:]) / 2
        cands = []
        start = 0
        for n in num_per_level:
            d = ((pc[start : start + n] - gc) ** 2).sum(1).sqrt()
            order = sorted(range(n), key=lambda i: (d[i].item(), i))
            cands += [start + i for i in order[: min(topk, n)]]
            start += n
        vals = iou[g, cands]
        thr = vals.mean() + (vals.std() if len(cands) > 1 else 0)
        for c in cands:
            x, y = pc[c]
            inside = min(x - gts[g, 0], y - gts[g, 1], gts[g, 2] - x, gts[g, 3] - y) > 0.01
            if iou[g, c] >= thr and inside and iou[g, c] > best_iou[c]:
                best_iou[c] = iou[g, c]
                gt_inds[c] = g + 1
    return gt_inds


def test_atss_matches_reference_on_three_levels():
    gen = AnchorGenerator(sizes=(32, 64, 128), strides=(8, 16, 32), ratios=(1.0,), scales=(1.0,))
    priors, npl = gen([(16, 16), (8, 8), (4, 4)])  # a 128 x 128 image
    g = torch.Generator().manual_seed(0)
    for trial in range(15):
        n = int(torch.randint(1, 8, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 120
        wh = torch.rand(n, 2, generator=g) * torch.tensor([4.0, 20.0, 90.0])[trial % 3] + 1
        gts = torch.cat([xy, (xy + wh).clamp(max=128)], 1)  # tiny, medium, large; border boxes
        if trial == 3:
            gts = torch.cat([gts, gts[:1]])  # two identical gts
        got = assign_one(ATSSAssigner(topk=9), priors, npl, gts, torch.zeros(len(gts), dtype=torch.long))
        assert torch.equal(got.gt_inds, _atss_reference(priors, npl, gts, 9)), f"trial {trial}"


def test_atss_level_with_fewer_anchors_than_k():
    gen = AnchorGenerator(sizes=(16, 64), strides=(8, 32), ratios=(1.0,), scales=(1.0,))
    priors, npl = gen([(4, 4), (1, 1)])  # second level has a single anchor
    gts = T([[4, 4, 28, 28]])
    got = assign_one(ATSSAssigner(topk=9), priors, npl, gts, torch.tensor([0]))
    assert torch.equal(got.gt_inds, _atss_reference(priors, npl, gts, 9))
    assert got.gt_inds.sum() > 0


def test_atss_tiny_and_zero_area_gts():
    gen = AnchorGenerator(sizes=(16,), strides=(8,), ratios=(1.0,), scales=(1.0,))
    priors, npl = gen([(4, 4)])  # centres at 4, 12, 20, 28
    # a 2 px gt around the centre (12, 12): only that anchor's centre is inside
    r = assign_one(ATSSAssigner(topk=9), priors, npl, T([[11, 11, 13, 13]]), torch.tensor([0]))
    assert r.gt_inds.nonzero().squeeze(1).tolist() == [5]
    r = assign_one(ATSSAssigner(topk=9), priors, npl, T([[12, 12, 12, 12]]), torch.tensor([0]))
    assert r.gt_inds.sum() == 0


def test_yolo_grid_assigner():
    # 2 x 2 grid on a 64 x 64 image, 2 predictors per cell: priors 0,1 cell (0,0); 2,3 (0,1); ...
    cells = T([[0, 0, 32, 32]] * 2 + [[32, 0, 64, 32]] * 2 + [[0, 32, 32, 64]] * 2 + [[32, 32, 64, 64]] * 2)
    gts = T([[2, 40, 20, 60],      # centre (11, 50): cell (1, 0)
             [0, 33, 30, 63],      # centre (15, 48): same cell, larger -> owns it
             [40, 2, 60, 12],      # centre (50, 7): cell (0, 1)
             [10, 10, 10, 10]])    # zero area: ignored
    labels = torch.tensor([0, 1, 2, 3])
    preds = cells.clone()[None].repeat(1, 1, 1)
    preds[0, 5] = T([0, 33, 30, 63])  # predictor 1 of cell (1, 0) matches gt1 exactly
    r = YOLOGridAssigner(2).assign_batch(cells, [8], gts[None], labels[None], torch.ones(1, 4, dtype=torch.bool),
                                         pred_boxes=preds)
    assert r.gt_inds[0].tolist() == [0, 0, 3, 0, 0, 2, 0, 0]
    assert r.labels[0].tolist() == [-1, -1, 2, -1, -1, 1, -1, -1]
    assert r.max_iou[0, 5].item() == 1.0
    # without predictions the first predictor of each cell is responsible
    r = assign_one(YOLOGridAssigner(2), cells, [8], gts, labels)
    assert r.gt_inds.tolist() == [0, 0, 3, 0, 2, 0, 0, 0]
