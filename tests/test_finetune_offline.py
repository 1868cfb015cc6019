"""The fine-tuning paths a user takes, without network: --pretrained through torchvision's own
weights API and cache (a weights file written into a temporary TORCH_HOME under torchvision's own
file name), and a minidet run on one dataset fine-tuned into another with different classes."""

import json

import torch
import torchvision

from minidet.eval import main as eval_main
from minidet.models import build_model
from minidet.train import main as train_main

SMALL = ["--iters", "2", "--batch-size", "4", "--workers", "0", "--quiet", "--amp", "off"]


def _imagenet_file(torch_home) -> tuple[dict, str]:
    """A ResNet-18 state dict (seeded, not the real weights) where torchvision's cache looks for
    ResNet18_Weights.DEFAULT; -> (state, path)."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    torch.manual_seed(123)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # BN statistics away from their defaults, so a missed load shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    state = net.state_dict()
    path = torch_home / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state, str(path)


def _as_torchvision(name: str) -> str:
    for ours, theirs in (("stem.0.", "conv1."), ("stem.1.", "bn1.")):
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


def test_pretrained_backbone_loads_from_the_torchvision_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state, _ = _imagenet_file(tmp_path / "torch")
    model = build_model("retinanet", 4, backbone="resnet18", pretrained=True, frozen_bn=True, frozen_stages=2)
    loaded = model.backbone.state_dict()
    assert loaded  # every backbone tensor equals the file's
    for name, value in loaded.items():
        assert torch.equal(value, state[_as_torchvision(name)]), name

    run = tmp_path / "run"
    assert train_main(["--backbone", "resnet18", "--pretrained", "--shapes-images", "8", "--img-size", "64",
                       "--out", str(run), *SMALL]) == 0
    assert json.loads((run / "summary.json").read_text())["iterations"] == 2
    trained = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]
    # the stem and stage 1 stay frozen for a pretrained ResNet (torchvision's rule): still the file's
    frozen = {k: v for k, v in trained.items() if k.startswith(("backbone.stem.", "backbone.layer1."))}
    assert frozen and all(torch.equal(v, state[_as_torchvision(k[len("backbone."):])]) for k, v in frozen.items()
                          if not k.endswith("num_batches_tracked"))
    assert any(not torch.equal(v, state[_as_torchvision(k[len("backbone."):])]) for k, v in trained.items()
               if k.startswith("backbone.layer4.") and v.is_floating_point())  # later stages did train


def test_a_run_fine_tunes_into_a_dataset_with_other_classes(tmp_path, capsys):
    from test_per_class import write_coco_folder

    source = tmp_path / "shapes_run"
    assert train_main(["--shapes-images", "8", "--img-size", "128", "--out", str(source), *SMALL]) == 0
    data = write_coco_folder(tmp_path / "cells", n_train=6, n_val=3)
    capsys.readouterr()
    target = tmp_path / "cells_run"
    assert train_main(["--data", str(data), "--weights", str(source / "last.pt"), "--img-size", "128",
                       "--anchors", "default", "--out", str(target), *SMALL]) == 0
    out = capsys.readouterr().out
    reinit = [line.strip() for line in out.split("re-initialised", 1)[1].splitlines()[1:] if "shape differs" in line]
    # 4 shapes classes -> 3 cell classes: only the class logits change shape
    assert reinit and all(line.startswith("head.cls") for line in reinit), reinit
    summary = json.loads((target / "summary.json").read_text())
    assert list(summary["per_class"]) == ["cell", "nucleus", "platelet"] and "final" in summary
    assert eval_main(["--weights", str(target / "last.pt"), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"cell", "nucleus", "platelet"}
