"""Ignore regions (COCO crowd, VOC difficult) in training: mmdetection's ``ignore_iof_thr``
semantics worked out by hand (IoF = intersection / prior area, ignored when it exceeds the
threshold, positives keep priority), every assigner and criterion, the COCO / VOC readers ->
transforms -> loader -> criterion path, and labels out of range as clear errors."""

import json

import numpy as np
import pytest
import torch
from assign_one import assign_one

from minidet.anchors import GridCellGenerator
from minidet.assigners import ATSSAssigner, MaxIoUAssigner, SSDMatcher, YOLOGridAssigner
from minidet.criterion import DenseCriterion, RankingCriterion, SSDCriterion, YOLOCriterion
from minidet.data import TrainTransform, build_loader
from minidet.data.coco import read_coco
from minidet.data.image_io import write_rgb
from minidet.data.voc import read_voc
from minidet.structures import HeadOutput


def T(rows):
    return torch.tensor(rows, dtype=torch.float32)


PRIORS = T([
    [0, 0, 10, 10],       # P0: the gt itself -> positive
    [60, 60, 70, 70],     # P1: fully inside the crowd region -> IoF 1
    [75, 60, 85, 70],     # P2: 5 of 10 px inside (x 75..80) -> IoF 0.5, not > 0.5 -> background
    [74, 60, 84, 70],     # P3: 6 of 10 px inside -> IoF 0.6 -> ignored
    [200, 200, 210, 210],  # P4: far from everything -> background
    [50, 50, 80, 80],     # P5: == the crowd region, IoF 1 -> ignored
])
GT = T([[0, 0, 10, 10]])
CROWD = T([[50, 50, 80, 80]])


@pytest.mark.parametrize("assigner", [MaxIoUAssigner(), ATSSAssigner(topk=3), SSDMatcher()],
                         ids=["maxiou", "atss", "ssd"])
def test_priors_inside_a_crowd_region_are_ignored_not_background(assigner):
    without = assign_one(assigner, PRIORS, [6], GT, torch.tensor([1]))
    assert without.gt_inds.tolist() == [1, 0, 0, 0, 0, 0]
    r = assign_one(assigner, PRIORS, [6], GT, torch.tensor([1]), ignore_boxes=CROWD)
    assert r.gt_inds.tolist() == [1, -1, 0, -1, 0, -1]
    assert r.labels.tolist() == [1, -1, -1, -1, -1, -1]


def test_ignore_can_be_turned_off_like_torchvision():
    r = assign_one(MaxIoUAssigner(ignore_iof_thr=None), PRIORS, [6], GT, torch.tensor([1]), ignore_boxes=CROWD)
    assert r.gt_inds.tolist() == [1, 0, 0, 0, 0, 0]


def test_positives_keep_priority_over_ignore_regions():
    # the gt lies inside a crowd region of another class: its positive prior stays positive
    crowd = T([[-5, -5, 100, 100]])
    r = assign_one(MaxIoUAssigner(), PRIORS, [6], GT, torch.tensor([0]), ignore_boxes=crowd)
    assert r.gt_inds.tolist() == [1, -1, -1, -1, 0, -1]


def test_yolo_cells_inside_a_region_are_ignored():
    priors, npl = GridCellGenerator(2)((4, 4), (64, 64), torch.device("cpu"))  # 16 px cells
    gt = T([[2, 2, 14, 14]])  # centre in cell 0
    crowd = T([[32, 32, 64, 64]])  # cells (2,2) (2,3) (3,2) (3,3)
    r = assign_one(YOLOGridAssigner(2), priors, npl, gt, torch.tensor([0]), ignore_boxes=crowd)
    cells = r.gt_inds.view(16, 2)
    assert cells[0].tolist() == [1, 0]
    ignored_cells = sorted(set(torch.nonzero(cells < 0)[:, 0].tolist()))
    assert ignored_cells == [10, 11, 14, 15]


# ----------------------------------------------------------------------------- criteria

def _outputs(num_logits, objectness=False, priors=PRIORS, batch=1):
    g = torch.Generator().manual_seed(0)
    a = priors.shape[0]
    return HeadOutput(
        torch.randn(batch, a, num_logits, generator=g, requires_grad=True),
        (0.1 * torch.randn(batch, a, 4, generator=g)).requires_grad_(),
        priors, [a], (256, 256),
        torch.randn(batch, a, generator=g, requires_grad=True) if objectness else None)


@pytest.mark.parametrize("make", [
    lambda: (DenseCriterion(MaxIoUAssigner(), reg_loss="giou"), 3),
    lambda: (SSDCriterion(MaxIoUAssigner(), neg_pos_ratio=None), 4),
    lambda: (RankingCriterion(MaxIoUAssigner(), loss="alrp"), 3),
], ids=["dense", "ssd", "alrp"])
def test_criteria_give_ignored_priors_no_gradient(make):
    criterion, n_logits = make()
    target = {"boxes": GT, "labels": torch.tensor([1])}
    out = _outputs(n_logits)
    criterion(out, [{**target, "ignore_boxes": CROWD}])["loss"].backward()
    grad = out.cls_logits.grad[0].abs().sum(-1)
    assert grad[[1, 3, 5]].tolist() == [0, 0, 0]  # ignored
    assert (grad[[0, 2, 4]] > 0).all()  # positive and background train
    out2 = _outputs(n_logits)
    criterion(out2, [target])["loss"].backward()
    assert (out2.cls_logits.grad[0].abs().sum(-1) > 0).all()  # without the region: background


def test_yolo_noobj_skips_ignored_predictors():
    priors, npl = GridCellGenerator(2)((4, 4), (64, 64), torch.device("cpu"))
    crit = YOLOCriterion(2)
    target = {"boxes": T([[2, 2, 14, 14]]), "labels": torch.tensor([0])}
    g = torch.Generator().manual_seed(0)
    out = HeadOutput(torch.randn(1, 32, 2, generator=g, requires_grad=True), torch.rand(1, 32, 4, generator=g),
                     priors, npl, (64, 64), torch.randn(1, 32, generator=g, requires_grad=True))
    crit(out, [{**target, "ignore_boxes": T([[32, 32, 64, 64]])}])["loss"].backward()
    grad = out.objectness.grad[0].view(16, 2).abs()
    assert grad[[10, 11, 14, 15]].sum() == 0 and grad[[1, 2, 3]].sum() > 0


@pytest.mark.parametrize("make", [lambda: (DenseCriterion(), 3), lambda: (SSDCriterion(), 4),
                                  lambda: (YOLOCriterion(1), 3)], ids=["dense", "ssd", "yolo"])
def test_label_out_of_range_is_a_clear_error(make):
    criterion, n_logits = make()
    ok = {"boxes": GT, "labels": torch.tensor([0])}
    bad = {"boxes": GT, "labels": torch.tensor([3]), "path": "img_7.jpg"}  # 3 classes: 3 is 1-based
    with pytest.raises(ValueError, match=r"image 1 of the batch \(path img_7.jpg\) has label 3 outside 0\.\.2"):
        criterion(_outputs(n_logits, objectness=True, batch=2), [ok, bad])
    with pytest.raises(ValueError, match="has label -1 outside"):
        criterion(_outputs(n_logits, objectness=True), [{"boxes": GT, "labels": torch.tensor([-1])}])


# -------------------------------------------------------------- reader -> loader -> targets

def _coco_folder(tmp_path):
    img = np.full((100, 120, 3), 90, np.uint8)
    write_rgb(tmp_path / "images" / "a.png", img)
    gt = {"images": [{"id": 7, "file_name": "a.png", "width": 120, "height": 100}],
          "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
          "annotations": [
              {"id": 1, "image_id": 7, "category_id": 1, "bbox": [5, 5, 30, 40], "area": 900.0, "iscrowd": 0},
              {"id": 2, "image_id": 7, "category_id": 3, "bbox": [60, 40, 50, 50], "area": 1800.0, "iscrowd": 1}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return tmp_path / "gt.json", tmp_path / "images"


def test_coco_crowd_keeps_its_class_and_area_through_the_loader(tmp_path):
    ds = read_coco(*_coco_folder(tmp_path))
    r = ds.records[0]
    assert r.labels.tolist() == [0] and r.areas.tolist() == [900.0]  # the annotation's area, not 30*40
    assert r.ignore_boxes.tolist() == [[60, 40, 110, 90]] and r.ignore_labels.tolist() == [1]  # "car"
    ds.transform = TrainTransform(size=120, scale=(1.0, 1.0), hflip=0.0, color_jitter=0.0)
    _, targets = next(iter(build_loader(ds, 1, train=True)))
    assert targets[0]["ignore_labels"].tolist() == [1]
    np.testing.assert_allclose(targets[0]["ignore_boxes"].numpy(), [[60, 40, 110, 90]], atol=1e-3)


def test_voc_difficult_is_an_ignore_region_of_its_class_or_trains_with_use_difficult(tmp_path):
    write_rgb(tmp_path / "a.jpg", np.full((80, 100, 3), 120, np.uint8))
    (tmp_path / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>100</width><height>80</height><depth>3</depth></size>"
        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>11</ymin><xmax>40</xmax>"
        "<ymax>40</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>51</xmin><ymin>21</ymin><xmax>90</xmax>"
        "<ymax>70</ymax></bndbox></object></annotation>")
    ds = read_voc(tmp_path, None, ["cat", "dog"])
    item = ds[0]
    assert item["labels"].tolist() == [1] and item["ignore_labels"].tolist() == [0]
    assert item["ignore_boxes"].tolist() == [[50, 20, 90, 70]]
    hard = read_voc(tmp_path, None, ["cat", "dog"], use_difficult=True)
    item = hard[0]
    assert item["labels"].tolist() == [1, 0] and len(item["ignore_boxes"]) == 0
    assert hard.records[0].ignore_labels.tolist() == [0]  # evaluation still sees a difficult object


def test_trainer_hands_ignore_regions_to_the_criterion(tmp_path, monkeypatch):
    from minidet.criterion import Criterion
    from minidet.train import main

    ann, images = _coco_folder(tmp_path)
    (tmp_path / "data.yaml").write_text(
        f"format: coco\nroot: {tmp_path}\ntrain: {{images: images, annotations: gt.json}}\n")
    seen = []
    original = Criterion.forward

    def spy(self, outputs, targets):
        seen.append([t.get("ignore_boxes") for t in targets])
        return original(self, outputs, targets)

    monkeypatch.setattr(Criterion, "forward", spy)
    rc = main(["--data", str(tmp_path / "data.yaml"), "--epochs", "1", "--batch-size", "1", "--img-size", "64",
               "--workers", "0", "--val-split", "none", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0 and seen and len(seen[0][0]) == 1


def test_ignore_threshold_flag_reaches_the_assigner():
    from minidet.models import build_model
    from minidet.train import model_options, parse_args

    assert build_model("retinanet", 3).criterion.assigner.ignore_iof_thr == 0.5
    for family in ("retinanet", "ssd", "yolo"):
        args = parse_args(["--model", family, "--ignore-iof-thr", "-1"])
        assert build_model(family, 3, **model_options(args)).criterion.assigner.ignore_iof_thr is None
    args = parse_args(["--model", "ssd", "--ignore-iof-thr", "0.7"])
    assert build_model("ssd", 3, **model_options(args)).criterion.assigner.ignore_iof_thr == 0.7
