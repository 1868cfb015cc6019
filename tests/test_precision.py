"""Training precision: ``--amp auto`` resolution, bfloat16 gradients of strided convolutions on
tiny maps on the CPU, and the step that non-finite gradients (from a finite loss) must not apply."""

from __future__ import annotations

import pytest
import torch

from minidet.configuration import resolve
from minidet.engine.checkpoint import load_checkpoint
from minidet.engine.precision import amp_dtype, native_bf16, resolve_amp
from minidet.engine.trainer import Trainer
from minidet.train import main

TINY = ["--img-size", "64", "--workers", "0", "--quiet", "--warmup-iters", "2", "--log-interval", "1",
        "--val-split", "none", "--shapes-images", "32", "--batch-size", "8"]


def test_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    cpu = torch.device("cpu")
    assert native_bf16(cpu, {"avx512f", "avx512_bf16"}) and native_bf16(cpu, {"amx_bf16"})
    assert not native_bf16(cpu, {"avx512f", "avx512bw", "avx2"})  # bf16 would be emulated: slower than fp32
    import minidet.engine.precision as precision
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2"})
    assert resolve_amp("auto", cpu) == "off"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512_bf16"})
    assert resolve_amp("auto", cpu) == "bf16"
    assert [resolve_amp(a, cpu) for a in (None, "off", "fp16", "bf16")] == ["off", "off", "fp16", "bf16"]
    assert amp_dtype("bf16") is torch.bfloat16 and amp_dtype("off") is None and amp_dtype(None) is None


def test_cpuinfo_flags_are_read(tmp_path):
    from minidet.engine.precision import _cpu_flags
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f avx512_bf16 sse\n\n")
    assert _cpu_flags(info) == {"fpu", "avx512f", "avx512_bf16", "sse"}
    assert _cpu_flags(tmp_path / "missing") == set()


def test_preset_small_uses_auto_and_old_runs_resume_as_they_ran():
    assert resolve({})["amp"] == "auto"
    assert resolve({}, recipe={"model": "retinanet"})["amp"] is None  # no preset: float32
    # a run saved before the preset chose a precision (amp None, no head_convs / scale_jitter)
    old = {"model": "retinanet", "backbone": "tiny", "amp": None, "epochs": 12, "anchors": "default"}
    cfg = resolve({}, saved=old)
    assert cfg["amp"] is None and cfg["head_convs"] == 2 and cfg["scale_jitter"] is None
    new = resolve({}, saved={**old, "amp": "bf16", "head_convs": 1, "scale_jitter": [0.8, 1.25]})
    assert (new["amp"], new["head_convs"], new["scale_jitter"]) == ("bf16", 1, [0.8, 1.25])


@pytest.mark.parametrize("family", [["--model", "retinanet", "--assigner", "maxiou", "--reg-loss", "ciou",
                                     "--head-norm", "none"],
                                    ["--model", "ssd", "--reg-loss", "giou", "--assigner", "maxiou"]],
                         ids=["retinanet", "ssd"])
def test_strided_convs_on_1x1_maps_give_finite_bf16_gradients(tmp_path, capsys, family):
    """At 64 px the FPN's P6 and SSD's last extra maps are 1 x 1: oneDNN's bfloat16 backward of
    the stride-2 conv on them returned NaN weight gradients in about a third to a half of these
    32 steps (torch 2.14, AVX512-BF16 CPU; skipped as bad steps); those layers compute maps
    smaller than 3 x 3 in float32 under CPU autocast (minidet/models/tiny_maps.py)."""
    flags = [*TINY, "--shapes-images", "64", "--epochs", "4", "--amp", "bf16", "--max-bad-steps", "100", *family]
    assert main([*flags, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "non-finite" not in out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["iteration"] == 32


def test_non_finite_gradients_from_a_finite_loss_are_not_applied(tmp_path, monkeypatch, capsys):
    """Without fp16's GradScaler nothing else looks at the gradients: a NaN gradient at the third
    step (finite loss) must skip it — clipping would otherwise spread the NaN into every weight —
    leaving weights, schedule, EMA and iteration count as they were."""
    seen = {"call": -1}
    original_init, original_step = Trainer.__init__, Trainer.step

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        seen["trainer"] = self
        weight = next(p for p in self.model.parameters() if p.ndim == 4)
        weight.register_hook(lambda g: g * float("nan") if seen["call"] == 2 else g)

    log = []

    def step(self, images, targets):
        seen["call"] += 1
        weights = [p.detach().clone() for p in self.model.parameters()]
        before = (self.state.iteration, self.scheduler.last_epoch, self.ema.updates)
        out = original_step(self, images, targets)
        same = all(torch.equal(a, p) for a, p in zip(weights, self.model.parameters(), strict=True))
        log.append((before, (self.state.iteration, self.scheduler.last_epoch, self.ema.updates), out is None, same))
        return out

    monkeypatch.setattr(Trainer, "__init__", init)
    monkeypatch.setattr(Trainer, "step", step)
    run = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--ema", "--clip-grad", "10", "--amp", "off", "--out", str(run)]) == 0
    assert [skipped for _, _, skipped, _ in log] == [False, False, True, False]
    before, after, _, unchanged = log[2]
    assert before == after and unchanged
    assert all(torch.isfinite(p).all() for p in seen["trainer"].model.parameters())
    assert "non-finite gradients (finite loss) at iteration 2; step skipped (1 in a row)" in capsys.readouterr().out
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["iteration"] == 3 and ckpt["train_state"]["bad_steps"] == 0


def test_eval_uses_the_precision_the_run_trained_with(tmp_path, capsys):
    from minidet.eval import main as eval_main
    run = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--amp", "bf16", "--out", str(run)]) == 0
    capsys.readouterr()
    assert eval_main(["--weights", str(run / "last.pt"), "--out", str(tmp_path / "e1")]) == 0
    assert "precision: bf16 autocast (as the run trained" in capsys.readouterr().out
    assert eval_main(["--weights", str(run / "last.pt"), "--out", str(tmp_path / "e2"), "--amp", "off"]) == 0
    assert "precision:" not in capsys.readouterr().out


@pytest.mark.parametrize("flags, text", [(["--scale-jitter", "1.2", "0.8"], "--scale-jitter MIN MAX"),
                                         (["--head-convs", "-1"], "--head-convs must be >= 0")])
def test_bad_new_flags(flags, text, capsys):
    assert main([*TINY, *flags]) == 2
    assert text in capsys.readouterr().err
