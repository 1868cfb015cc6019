"""--anchors auto: k-means (1 - IoU) recovers known box shapes, the RetinaNet mapping recovers
known aspect ratios and covers the sizes, ATSS keeps its single square anchor, the pooled
image-size rule (tests/pooled_img_size.py) follows its definition, and the configuration / training wiring stores the fit so that the run
rebuilds the same model."""

from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from pooled_img_size import suggest_img_size

from minidet.anchor_fit import (
    anchor_shapes,
    box_sizes,
    fit_anchors,
    fit_for_config,
    kmeans_iou,
    mean_best_iou,
)
from minidet.configuration import resolve
from minidet.engine.checkpoint import load_checkpoint
from minidet.train import main

TRUE_WH = np.array([[20.0, 20.0], [80.0, 40.0], [40.0, 160.0]])  # ratios h/w 1, 0.5, 4


def clustered(n: int = 200, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([wh * rng.uniform(1 - noise, 1 + noise, (n, 2)) for wh in TRUE_WH])


def record(w: int, h: int, boxes) -> SimpleNamespace:
    return SimpleNamespace(width=w, height=h, boxes=np.asarray(boxes, np.float32).reshape(-1, 4))


def test_kmeans_recovers_known_clusters():
    centres, counts = kmeans_iou(clustered(), 3)
    np.testing.assert_allclose(centres, TRUE_WH, rtol=0.03)  # sorted by area, as TRUE_WH
    assert counts.tolist() == [200, 200, 200]
    assert mean_best_iou(clustered(), centres) > 0.9


def test_retinanet_fit_recovers_ratios_and_beats_the_default_anchors():
    fit = fit_anchors(clustered(), family="retinanet", assigner="maxiou", img_size=512)
    assert fit.anchor_ratios == (0.5, 1.0, 4.0)
    sizes = np.array(fit.anchor_sizes)
    np.testing.assert_array_equal(sizes / sizes[0], [1, 2, 4, 8, 16])  # one doubling per FPN level
    assert 16 <= sizes[0] <= 64
    assert fit.fitted_iou > 0.8 > fit.default_iou  # the default anchors have no ratio 4
    line = fit.summary()
    assert "fitted to 600 boxes" in line and "ratios h/w 0.5 1 4" in line and "default anchors" in line


def test_square_boxes_merge_into_one_ratio_and_given_values_stay():
    wh = np.repeat(np.geomspace(12, 200, 50)[:, None], 2, 1) * np.random.default_rng(1).uniform(0.97, 1.03, (50, 2))
    fit = fit_anchors(wh, assigner="maxiou", img_size=512)
    assert fit.anchor_ratios == (1.0,)
    fit = fit_anchors(wh, assigner="maxiou", img_size=512, sizes=(32, 64, 128, 256, 512), ratios=(1.0,))
    assert fit.anchor_sizes is None and fit.anchor_ratios is None  # nothing left to fit


def test_atss_keeps_one_square_anchor_and_fits_the_size():
    wh = clustered()
    fit = fit_anchors(wh, assigner="atss", img_size=512, default=((64, 128, 256, 512, 1024), (1.0,), (1.0,)))
    assert fit.anchor_ratios is None  # ATSS: one square anchor per location
    b = fit.anchor_sizes[0]
    best = max(range(16, 65), key=lambda s: (mean_best_iou(wh, anchor_shapes([s * 2**i for i in range(5)],
                                                                             [1.0], [1.0])), -s))
    assert b == best and fit.fitted_iou > fit.default_iou


def test_ssd_and_yolo_keep_their_priors():
    assert fit_anchors(clustered(), family="yolo").note.startswith("YOLO v1 has no anchors")
    fit = fit_anchors(clustered(), family="ssd", img_size=300)
    assert fit.anchor_sizes is None and "SSD keeps its default boxes" in fit.summary()


def test_box_sizes_follow_the_longer_side_resize():
    wh = box_sizes([record(1000, 500, [[0, 0, 100, 50]]), record(200, 400, [[10, 10, 30, 50]])], 500)
    np.testing.assert_allclose(wh, [[50, 25], [25, 50]])


def test_suggest_img_size_on_known_sizes():
    # objects 2% of the longer side: 16 px (2 x stride 8) needs 800 px; the 1000 px images allow it
    recs = [record(1000, 600, [[0, 0, 20, 20]] * 5) for _ in range(4)]
    assert suggest_img_size(recs) == 800
    # tiny objects: capped by the images' own size (640), not upsampled beyond it
    assert suggest_img_size([record(640, 480, [[0, 0, 3, 3]])]) == 640
    # large objects: the floor of 128
    assert suggest_img_size([record(640, 480, [[0, 0, 300, 300]])]) == 128
    # YOLO v1's stride 32 wants 64 px objects; the result is always a multiple of 32
    assert suggest_img_size([record(2000, 2000, [[0, 0, 190, 190]])], stride=32) == 704  # 673.7 -> 704
    assert suggest_img_size([record(3000, 3000, [[0, 0, 20, 20]])]) == 1024  # max_size


def test_fit_for_config_fills_only_unset_anchor_options():
    recs = [record(512, 512, [[0, 0, w, h]]) for w, h in clustered(50)]
    cfg = {"model": "retinanet", "img_size": 512, "preset": "small", "assigner": "maxiou", "seed": 0,
           "anchor_sizes": [16, 32, 64, 128, 256], "anchor_ratios": None, "anchor_scales": None}
    text = fit_for_config(cfg, recs)
    assert cfg["anchor_sizes"] == [16, 32, 64, 128, 256] and cfg["anchor_ratios"] == pytest.approx([0.5, 1, 4], rel=0.03)
    assert text.startswith("anchors auto (retinanet)")
    cfg = {"model": "yolo", "img_size": 448, "preset": "small", "seed": 0}
    assert "no anchors" in fit_for_config(cfg, recs)


def test_the_fit_hints_the_size_img_size_auto_would_pick():
    """A rare small class (10% of the boxes, 20 px sides in 640 px images) and a common large one
    (200 px): the pooled 10th percentile (182 px) needs no more than 128 px, the small class's
    median needs 16 / (20 / 640) = 512 px to reach 2 x the stride 8. Trained at 256 the hint
    names 512, the size --img-size auto picks."""
    recs = [SimpleNamespace(width=640, height=640, boxes=np.array([[0, 0, s, s]], np.float32), labels=np.array([c]))
            for c, s, n in ((0, 200, 90), (1, 20, 10)) for _ in range(n)]
    cfg = {"model": "retinanet", "img_size": 256, "preset": "small", "assigner": "atss", "seed": 0,
           "anchor_sizes": None, "anchor_ratios": None, "anchor_scales": None}
    assert "consider --img-size 512 (what --img-size auto picks" in fit_for_config(cfg, recs, None, ["big", "small"])
    cfg["img_size"] = 512
    assert "consider --img-size" not in fit_for_config(cfg, recs, None, ["big", "small"])


def test_configuration_defaults_auto_for_custom_data_only():
    shapes = resolve({})
    assert shapes["anchors"] == "default" and shapes["mosaic"] == 0.0
    assert shapes["anchor_sizes"] == [16, 32, 64, 128, 256]  # the tuned no-flag run is unchanged
    custom = resolve({"data": "my/data.yaml"})
    assert custom["anchors"] == "auto" and custom["mosaic"] == 0.5 and custom["anchor_sizes"] is None
    assert resolve({"data": "my/data.yaml", "anchors": "default"})["anchor_sizes"] == [16, 32, 64, 128, 256]
    assert resolve({"data": "my/data.yaml", "anchor_sizes": [8, 16, 32, 64, 128]})["anchor_sizes"] == [8, 16, 32, 64, 128]
    # a run saved before --anchors / --mosaic existed resumes as it ran
    old = {k: v for k, v in custom.items() if k not in ("anchors", "mosaic")} | {"anchor_sizes": [16, 32, 64, 128, 256]}
    again = resolve({}, saved=old)
    assert again["anchors"] == "default" and again["mosaic"] == 0.0


def test_training_with_auto_anchors_stores_the_fit(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--shapes-images", "16", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--quiet",
            "--warmup-iters", "1", "--val-split", "none", "--epochs", "2", "--anchors", "auto", "--mosaic", "1",
            "--augment", "strong", "--out", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "anchors auto (retinanet): fitted to" in out and "mosaic: p 1 in epochs 1-1" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["anchors"] == "auto" and len(saved["anchor_sizes"]) == 5
    ckpt = load_checkpoint(run / "last.pt")
    assert list(ckpt["config"]["anchor_sizes"]) == saved["anchor_sizes"]  # evaluation rebuilds this model
    assert main(["--resume", str(run / "last.pt"), "--epochs", "3"]) == 0
    assert "anchors auto" not in capsys.readouterr().out  # resume keeps the saved fit


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_mosaic_flag_is_a_probability(value, capsys):
    assert main(["--mosaic", value, "--epochs", "0"]) == 2
    assert "--mosaic is a probability" in capsys.readouterr().err
