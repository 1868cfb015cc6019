"""Models: shapes on several input sizes, loss forward/backward, an oracle head output that
decodes back to known boxes, deterministic predict, fine-tuning with a new class count,
torch.compile friendliness, channels_last and autocast."""

import urllib.error

import pytest
import torch

from minidet.engine.checkpoint import load_matching_state
from minidet.models import build_backbone, build_model
from minidet.structures import HeadOutput

SIZES = [(128, 128), (96, 160), (101, 157)]  # square, non-square, not a multiple of 32
TARGETS = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 90.0, 40.0]]), "labels": torch.tensor([0, 2])},
           {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


def _expected_priors(name, h, w):
    if name == "retinanet":
        return sum(-(-h // s) * -(-w // s) for s in (8, 16, 32, 64, 128)) * 9
    if name == "yolo":
        return -(-h // 32) * -(-w // 32) * 2
    return None


@pytest.mark.parametrize("name", ["retinanet", "ssd", "yolo"])
@pytest.mark.parametrize("size", SIZES)
def test_output_shapes(name, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3)
    out = model(torch.rand(2, 3, *size))
    a = out.priors.shape[0]
    assert sum(out.num_per_level) == a
    assert out.cls_logits.shape == (2, a, 4 if name == "ssd" else 3)
    assert out.box_regression.shape == (2, a, 4)
    assert out.cls_logits.dtype == torch.float32
    if _expected_priors(name, *size) is not None:
        assert a == _expected_priors(name, *size)
    if name == "yolo":
        assert out.objectness.shape == (2, a)
    if name == "ssd":
        assert len(out.num_per_level) == 6


@pytest.mark.parametrize("name, backbone", [("retinanet", "tiny"), ("ssd", "tiny"), ("yolo", "tiny"),
                                            ("retinanet", "resnet18"), ("ssd", "vgg16")])
def test_loss_forward_backward(name, backbone):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, backbone=backbone)
    size = 300 if backbone == "vgg16" else 128  # VGG-16 SSD is SSD300: its last extras need >= 3x3 maps
    losses = model.loss(torch.rand(2, 3, size, size), TARGETS)
    assert torch.isfinite(losses["loss"]) and losses["num_pos"] > 0
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def _oracle(model, images, boxes, labels):
    """A HeadOutput whose best priors predict exactly ``boxes`` with high scores."""
    out = model(images)
    a = out.priors.shape[0]
    c = out.cls_logits.shape[-1]
    cls = torch.full((1, a, c), -20.0)
    if model.family == "ssd":
        cls[..., -1] = 20.0  # softmax head: background wins everywhere but at the chosen priors
    reg = torch.zeros(1, a, 4)
    obj = torch.full((1, a), -20.0) if out.objectness is not None else None
    for k, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        ctr = (box[:2] + box[2:]) / 2
        inside = ((out.priors[:, :2] <= ctr) & (out.priors[:, 2:] >= ctr)).all(1)
        idx = int(torch.nonzero(inside)[k % int(inside.sum())])  # a prior whose area holds the centre
        if model.family == "yolo":
            reg[0, idx] = model.coder.encode(out.priors[idx : idx + 1], box[None], out.image_size)[0]
            obj[0, idx] = 20.0
            cls[0, idx, label] = 20.0
        else:
            reg[0, idx] = model.coder.encode(out.priors[idx : idx + 1], box[None])[0]
            if model.family == "ssd":
                cls[0, idx, -1] = -20.0
            cls[0, idx, label] = 20.0
    oracle = HeadOutput(cls, reg, out.priors, out.num_per_level, out.image_size, obj)
    return model.postprocess(oracle, model.decode(oracle), [out.image_size])[0]


@pytest.mark.parametrize("name, options", [("retinanet", {}), ("ssd", {}), ("yolo", {}), ("yolo", {"sqrt_wh": False}),
                                           ("retinanet", {"assigner": "atss"})])
def test_predict_decodes_an_oracle_output_back_to_its_boxes(name, options):
    model = build_model(name, num_classes=3, **options).eval()
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 90.0, 44.0], [5.0, 90.0, 120.0, 125.0]])
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        det = _oracle(model, torch.rand(1, 3, 128, 128), boxes, labels)
    assert len(det["boxes"]) == 3
    order = torch.argsort(det["labels"])
    torch.testing.assert_close(det["boxes"][order], boxes[torch.argsort(labels)], atol=1e-3, rtol=0)
    assert det["labels"][order].tolist() == [0, 1, 2] and (det["scores"] > 0.9).all()


def test_predict_is_deterministic_and_capped_and_maps_back():
    torch.manual_seed(0)
    model = build_model("ssd", num_classes=3, max_det=7)
    x = torch.rand(2, 3, 128, 128)
    a, b = model.predict(x), model.predict(x)
    for da, db in zip(a, b, strict=True):
        assert len(da["boxes"]) <= 7
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(da[k], db[k])
        assert (da["scores"][1:] <= da["scores"][:-1]).all()
    scaled = model.predict(x, scales=[(2.0, 2.0)] * 2, orig_sizes=[(64, 64)] * 2)
    torch.testing.assert_close(scaled[0]["boxes"], (a[0]["boxes"] / 2).clamp(0, 64))
    assert model.training  # predict restores the mode


def test_fine_tuning_reinitialises_only_class_layers(capsys):
    src = build_model("retinanet", num_classes=3)
    dst = build_model("retinanet", num_classes=5)
    kept, reinit = load_matching_state(dst, src.state_dict())
    assert reinit == ["head.cls_logits.weight", "head.cls_logits.bias"]
    assert torch.equal(dst.state_dict()["head.bbox_pred.weight"], src.state_dict()["head.bbox_pred.weight"])
    assert "re-initialised 2" in capsys.readouterr().out
    dst_ssd = build_model("ssd", num_classes=5)
    _, reinit = load_matching_state(dst_ssd, build_model("ssd", num_classes=3).state_dict(), verbose=False)
    assert reinit and all(k.startswith("head.cls.") for k in reinit)


def test_no_graph_breaks_for_torch_compile():
    import torch._dynamo

    for name in ("retinanet", "ssd", "yolo"):
        torch._dynamo.reset()
        model = build_model(name, num_classes=3).eval()
        explanation = torch._dynamo.explain(model)(torch.rand(1, 3, 96, 96))
        assert explanation.graph_break_count == 0, explanation.break_reasons


def test_channels_last_and_autocast():
    torch.manual_seed(0)
    ref = build_model("retinanet", num_classes=3).eval()
    cl = build_model("retinanet", num_classes=3, channels_last=True).eval()
    cl.load_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(cl(x).cls_logits, ref(x).cls_logits, atol=1e-4, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ref(x)
    assert out.cls_logits.dtype == torch.float32 and out.box_regression.dtype == torch.float32


def test_bad_choices_and_pretrained_without_network(monkeypatch):
    with pytest.raises(ValueError, match="unknown model 'detr'"):
        build_model("detr", 3)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("retinanet", 3, backbone="resnet101x")
    with pytest.raises(ValueError, match="cannot train a RetinaNet"):
        build_model("retinanet", 3, cls_loss="ce")
    with pytest.raises(ValueError, match="cannot train a softmax head"):
        build_model("ssd", 3, cls_loss="focal")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="could not load torchvision's ImageNet weights for resnet18.*pretrained=False"):
        build_backbone("resnet18", pretrained=True)


def test_backbone_options():
    bb = build_backbone("resnet18", frozen_stages=2, frozen_bn=True)
    assert not any(p.requires_grad for p in bb.stem.parameters())
    assert not any(p.requires_grad for p in bb.layer1.parameters())
    assert all(p.requires_grad for p in bb.layer2.parameters())
    assert bb.out_channels == [128, 256, 512]
    assert sum(p.numel() for p in build_backbone("tiny").parameters()) < 2_000_000


def test_loss_weight_and_alrp_options_reach_the_criterion():
    from minidet.weighting import ALWA, FixedWeights, SelfBalance

    w = build_model("retinanet", 3, loss_weights=(0.25, 0.5)).criterion.weighting
    assert isinstance(w, FixedWeights) and w.fixed == {"cls": 0.25, "reg": 0.5}
    alwa = build_model("retinanet", 3, weighting="alwa1", loss_weights=(2.0, 1.5), alwa_interval=20).criterion.weighting
    assert isinstance(alwa, ALWA) and alwa.variant == 1 and alwa.interval == 20
    assert (float(alwa.lambda_cls), float(alwa.lambda_reg)) == (2.0, 1.5)
    alrp = build_model("retinanet", 3, cls_loss="alrp", alrp_iou="iou").criterion
    assert alrp.alrp_iou == "iou" and isinstance(alrp.weighting, SelfBalance)
    no_sb = build_model("retinanet", 3, cls_loss="alrp", weighting="fixed").criterion.weighting
    assert isinstance(no_sb, FixedWeights) and no_sb.fixed == {"cls": 1.0, "reg": 1.0}
    with pytest.raises(ValueError, match="self_balance weighting sets its own"):
        build_model("retinanet", 3, cls_loss="alrp", weighting="self_balance", loss_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="two non-negative numbers"):
        build_model("retinanet", 3, loss_weights=(1.0, -2.0))
    with pytest.raises(ValueError, match="alrp_iou must be"):
        build_model("retinanet", 3, cls_loss="alrp", alrp_iou="diou")
