"""Extending minidet as minidet/README.md shows it. The worked example: a new regression loss is a
function plus its name in ``REGRESSION_LOSSES``, a new weighting scheme a class plus its name in
``WEIGHTINGS``. The walkthrough: a classification loss, an assigner with a threshold option, a
weighting scheme with an option and a head family. Each is then chosen by name, by
``build_model`` and by ``python -m minidet.train``'s flags alike (two iterations each). The
README's code blocks are run here as written (the tables are restored afterwards)."""

import json
import re
from pathlib import Path

import pytest
import torch

from minidet.losses import REGRESSION_LOSSES
from minidet.train import parse_args
from minidet.weighting import WEIGHTINGS

README = Path(__file__).resolve().parents[1] / "minidet" / "README.md"


def worked_example() -> str:
    text = README.read_text()
    section = text[text.index("## Worked example"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_design_page_example_trains_a_new_loss_and_weighting_by_name(capsys):
    assert "log_cosh" not in REGRESSION_LOSSES and "half_reg" not in WEIGHTINGS
    scope: dict = {}
    try:
        exec(compile(worked_example(), str(README), "exec"), scope)
        args = parse_args(["--reg-loss", "log_cosh", "--weighting", "half_reg"])  # the flags accept the new names
    finally:
        REGRESSION_LOSSES.pop("log_cosh", None)
        WEIGHTINGS.pop("half_reg", None)
    assert (args.reg_loss, args.weighting) == ("log_cosh", "half_reg")
    losses = scope["losses"]
    assert losses["reg"] > 0 and losses["weight_reg"] == 0.5
    assert losses["reg_weighted"] == 0.5 * losses["reg"]
    assert torch.isfinite(losses["loss"])
    assert all(p.grad is not None for p in scope["model"].parameters() if p.requires_grad)
    assert "'weight_reg': 0.5" in capsys.readouterr().out


def walkthrough() -> str:
    text = README.read_text()
    section = text[text.index("## Walkthrough"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


TINY = ["--shapes-images", "32", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--quiet",
        "--warmup-iters", "1", "--log-interval", "1", "--iters", "2", "--shapes-val-images", "40"]


@pytest.fixture
def registered():
    """The worked example and the walkthrough executed; every table restored afterwards."""
    from minidet.assigners import ASSIGNERS
    from minidet.losses import CLASSIFICATION_LOSSES
    from minidet.models import FAMILIES

    saved = [(t, dict(t)) for t in (REGRESSION_LOSSES, WEIGHTINGS, ASSIGNERS, CLASSIFICATION_LOSSES, FAMILIES)]
    scope: dict = {}
    try:
        exec(compile(worked_example(), str(README), "exec"), scope)
        exec(compile(walkthrough(), str(README), "exec"), scope)
        yield scope
    finally:
        for table, before in saved:
            table.clear()
            table.update(before)


def _train(tmp_path: Path, name: str, *flags: str) -> list[dict]:
    from minidet.train import main

    out = tmp_path / name
    assert main([*TINY, *flags, "--out", str(out)]) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_new_classification_loss_trains_as_itself(registered, tmp_path, monkeypatch):
    """--cls-loss poly1: the criterion's cls is the new function on the head's logits and the
    one-hot targets of the non-ignored priors, divided by the positives (not BCE, not focal)."""
    from minidet import losses
    from minidet.criterion import _one_hot_targets, _pad_targets
    from minidet.models import build_model

    calls = []
    entry = losses.CLASSIFICATION_LOSSES["poly1"]

    def spy(logits, targets, weight=None, reduction="mean"):
        value = registered["poly1_loss"](logits, targets, weight, reduction)
        calls.append((logits.detach(), targets, weight, value.detach()))
        return value

    monkeypatch.setitem(losses.CLASSIFICATION_LOSSES, "poly1", entry._replace(fn=spy))
    torch.manual_seed(0)
    model = build_model("retinanet", 3, cls_loss="poly1").train()
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 4.0, 60.0, 30.0]]), "labels": torch.tensor([2])}]
    images = torch.rand(2, 3, 64, 64)
    out = model(images)
    d = model.criterion(out, targets)
    (logits, onehot, weight, value), = calls
    assert torch.equal(logits, out.cls_logits.detach().float())  # the head's logits, not probabilities
    assigned = model.criterion.assign(out, *_pad_targets(targets, torch.device("cpu")))
    assert torch.equal(onehot, _one_hot_targets(assigned, 3))
    assert torch.equal(weight[..., 0], (~assigned.ignored).float())
    expected = registered["poly1_loss"](out.cls_logits.float(), onehot, weight, "sum") / d["num_pos"].clamp(min=1)
    assert torch.allclose(d["cls"], expected.detach(), rtol=1e-6, atol=0)
    focal = build_model("retinanet", 3, cls_loss="focal").criterion(out, targets)["cls"]
    bce = build_model("retinanet", 3, cls_loss="bce").criterion(out, targets)["cls"]
    assert not torch.allclose(d["cls"], focal) and not torch.allclose(d["cls"], bce)
    calls.clear()
    rows = _train(tmp_path, "poly1", "--cls-loss", "poly1")
    assert calls and sum(r["kind"] == "train" for r in rows) == 2  # trained through the flag with the new function


def test_each_kind_of_extension_trains_through_the_command_line(registered, tmp_path):
    from minidet.models import build_model

    _train(tmp_path, "log_cosh", "--reg-loss", "log_cosh")
    crit = build_model("retinanet", 3, assigner="centre_iou", assigner_options={"pos_iou_thr": 0.45}).criterion
    assert type(crit.assigner).__name__ == "CentreIoUAssigner" and crit.assigner.pos_iou_thr == 0.45
    rows = _train(tmp_path, "assigner", "--assigner", "centre_iou", "--assigner-option",
                  "pos_iou_thr=0.45")
    assert any(r["kind"] == "train" for r in rows)
    saved = torch.load(tmp_path / "assigner" / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert saved["assigner"] == "centre_iou" and saved["assigner_options"] == {"pos_iou_thr": 0.45}
    rows = _train(tmp_path, "weighting", "--weighting", "capped_reg", "--weighting-option", "cap=0.5")
    train = [r for r in rows if r["kind"] == "train"]
    assert all(r["reg_weighted"] <= 0.5 * r["cls"] * (1 + 1e-5) for r in train)  # the option reached the scheme
    rows = _train(tmp_path, "family", "--model", "c5")
    assert any(r["kind"] == "eval" for r in rows)
    model = torch.load(tmp_path / "family" / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert model["name"] == "c5" and model["assigner"] == "centre_iou"


def test_a_wrong_option_or_combination_is_one_line(registered, tmp_path, capsys):
    from minidet.train import main

    assert main([*TINY, "--assigner-option", "pos_iou_thr=0.3", "--out", str(tmp_path / "a")]) == 2  # ATSS
    err = capsys.readouterr().err
    assert "'atss' has no option pos_iou_thr" in err and "topk" in err and "Traceback" not in err
    assert main([*TINY, "--model", "ssd", "--cls-loss", "poly1", "--out", str(tmp_path / "b")]) == 2
    assert "'poly1' cannot train a softmax head" in capsys.readouterr().err
