"""Weighting schemes: weight trajectories worked out by hand, state_dict round trips."""

import math

import pytest
import torch

from minidet.weighting import ALWA, FixedWeights, SelfBalance, UncertaintyWeighting


def _feed(scheme, cls_values, reg_values):
    """Run a scheme over scripted raw losses; returns the weights applied at every step."""
    applied = []
    for c, r in zip(cls_values, reg_values, strict=True):
        scheme({"cls": torch.tensor(c), "reg": torch.tensor(r)})
        applied.append(scheme.weights["cls"])
    return applied


def test_fixed_weights():
    w = FixedWeights(cls=0.25, reg=0.5)
    out = w({"cls": torch.tensor(4.0), "reg": torch.tensor(2.0), "extra": torch.tensor(3.0)})
    assert [out[k].item() for k in ("cls", "reg", "extra")] == [1.0, 1.0, 3.0]
    assert w.weights == {"cls": 0.25, "reg": 0.5, "extra": 1.0}


def test_alwa2_trajectory_by_hand():
    # window 1: weighted cls = raw (lambda 1) = 4, 6, 4, 6 -> sample std sqrt(4/3) = 1.1547;
    #           reg 1, 2, 1, 2 -> std sqrt(1/3) = 0.57735; cls > reg:
    #           lambda_cls = 1 - (1.1547 - 0.57735) / 1.1547 = 0.5 (from step 5 on)
    # window 2: raw cls 8, 12, 8, 12 weighted by 0.5 -> 4, 6, 4, 6 -> again 0.5
    # window 3: raw cls 2, 2.5, 2, 2.5 weighted -> 1, 1.25, ... std 0.1443 < reg std: unchanged
    cls = [4, 6, 4, 6, 8, 12, 8, 12, 2, 2.5, 2, 2.5, 1]
    reg = [1, 2, 1, 2] * 3 + [1]
    applied = _feed(ALWA(variant=2, interval=4), cls, reg)
    assert applied == pytest.approx([1.0] * 4 + [0.5] * 9)


def test_alwa1_trajectory_by_hand():
    # window 1: cls mean 5 + std 1.1547 = 6.1547; reg 1.5 + 0.57735 = 2.07735
    #           lambda_cls = 1 - (6.1547 - 2.07735) / 6.1547 = 0.337523
    # window 2: raw 10, 20, 10, 20 weighted by 0.337523: mean 5.06284, std 1.94869 -> 7.01153
    #           lambda_cls = 1 - (7.01153 - 2.07735) / 7.01153 = 0.296276
    cls = [4, 6, 4, 6, 10, 20, 10, 20, 1]
    reg = [1, 2, 1, 2, 1, 2, 1, 2, 1]
    lam1 = 1 - (5 + math.sqrt(4 / 3) - (1.5 + math.sqrt(1 / 3))) / (5 + math.sqrt(4 / 3))
    w = [x * lam1 for x in (10, 20, 10, 20)]
    m = sum(w) / 4
    s = math.sqrt(sum((x - m) ** 2 for x in w) / 3)
    lam2 = 1 - ((m + s) - (1.5 + math.sqrt(1 / 3))) / (m + s)
    assert lam1 == pytest.approx(0.337523, abs=1e-6) and lam2 == pytest.approx(0.296276, abs=1e-6)
    applied = _feed(ALWA(variant=1, interval=4), cls, reg)
    assert applied == pytest.approx([1.0] * 4 + [lam1] * 4 + [lam2])


def test_alwa_reg_weight_stays_and_init_weights():
    scheme = ALWA(variant=2, interval=2, init=(0.5, 0.75))
    _feed(scheme, [10, 30], [1, 2])
    assert scheme.weights["reg"] == 0.75
    out = scheme({"cls": torch.tensor(1.0), "reg": torch.tensor(1.0)})
    # weighted cls 5, 15 -> std 7.0711; reg 0.75, 1.5 -> std 0.53033 -> lambda = 0.075
    assert out["cls"].item() == pytest.approx(0.53033 / 7.0711, rel=1e-4)


def test_alwa_state_dict_resume_continues_identically():
    cls = [4, 6, 4, 6, 8, 12, 8, 12, 3]
    reg = [1, 2, 1, 2, 1, 2, 1, 2, 1]
    full = _feed(ALWA(variant=2, interval=4), cls, reg)
    first = ALWA(variant=2, interval=4)
    _feed(first, cls[:6], reg[:6])
    resumed = ALWA(variant=2, interval=4)
    resumed.load_state_dict(first.state_dict())
    assert resumed.cls_history == first.cls_history
    assert _feed(resumed, cls[6:], reg[6:]) == full[6:]


def test_self_balance_by_hand():
    sb = SelfBalance(init=50, period=3)
    out = sb({"cls": torch.tensor(0.9), "reg": torch.tensor(0.3)})
    assert out["reg"].item() == pytest.approx(15.0) and out["cls"].item() == pytest.approx(0.9)
    sb({"cls": torch.tensor(0.5), "reg": torch.tensor(0.0)}, record=False)  # no positives
    # third step closes the period: SB = (mean reg 0.2 + mean cls 0.8) / 0.2 = 5, applied now
    out = sb({"cls": torch.tensor(0.7), "reg": torch.tensor(0.1)})
    assert sb.weights["reg"] == pytest.approx(5.0)
    assert out["reg"].item() == pytest.approx(0.5)
    state = sb.state_dict()
    other = SelfBalance()
    other.load_state_dict(state)
    assert float(other.sb) == pytest.approx(5.0) and int(other.steps) == 3


def test_self_balance_end_period_by_the_trainer_and_eval_mode():
    sb = SelfBalance(init=50)
    for c, r in [(1.0, 0.5), (0.6, 0.3)]:
        sb({"cls": torch.tensor(c), "reg": torch.tensor(r)})
    sb.end_period()
    assert float(sb.sb) == pytest.approx((0.4 + 0.8) / 0.4)
    sb.eval()
    sb({"cls": torch.tensor(1.0), "reg": torch.tensor(1.0)})
    assert sb.cls_history == []  # evaluation steps record nothing


def test_uncertainty_weighting_values_and_gradients():
    uw = UncertaintyWeighting()
    with torch.no_grad():
        uw.log_vars["cls"].fill_(math.log(4.0))  # sigma^2 = 4
    out = uw({"cls": torch.tensor(2.0), "reg": torch.tensor(2.0)})
    assert out["cls"].item() == pytest.approx(2.0 / 4 + 0.5 * math.log(4.0))
    assert out["reg"].item() == pytest.approx(0.5 * 2.0)
    assert uw.weights == pytest.approx({"cls": 0.25, "reg": 0.5})
    sum(out.values()).backward()
    # d/ds (0.5 e^-s L + s/2) at s = 0, L = 2 is -0.5
    assert uw.log_vars["reg"].grad.item() == pytest.approx(-0.5)
    assert len(list(uw.parameters())) == 2



@pytest.mark.parametrize(("flags", "left"), [([], 0), (["--weighting", "self_balance"], 0),
                                             (["--weighting-option", "period=2"], 1)])
def test_alrp_self_balance_closes_its_period_after_one_epoch_of_training(tmp_path, flags, left):
    """aLRP's SB, its default or named, is built with one epoch's steps as its period (40 images
    at batch 8: 5 steps, the period closed at step 5, no records left); a period given by name
    wins (2: closed at steps 2 and 4, step 5's record left)."""
    from minidet.engine.checkpoint import load_checkpoint
    from minidet.train import main

    run = tmp_path / "run"
    argv = ["--shapes-images", "40", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--quiet",
            "--device", "cpu", "--val-split", "none", "--epochs", "1", "--cls-loss", "alrp", "--out", str(run)]
    assert main([*argv, *flags]) == 0
    state = load_checkpoint(run / "last.pt")["criterion"]
    assert int(state["weighting.steps"]) == 5 and float(state["weighting.sb"]) != 50.0
    assert len(state["weighting._extra_state"]["cls_history"]) == left
