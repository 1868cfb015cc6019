"""Behaviour kept through refactors: the losses (every component, three calls so stateful weighting
updates), the network's squared gradient norm and the top detections of every family on fixed
inputs equal those recorded by tests/fixtures/record_losses.py from an earlier commit (stated in
tests/fixtures/losses.json; a case added later names its own commit in ``case_commits``) — to 1e-6
relative for losses and gradients. Both sides run in the recorder's CPU-independent mode (scalar ATen
kernels, MKL's compatible path, one thread), so the comparison holds on any x86-64 CPU. This is a
refactoring guard: it compares minidet with its own earlier output on purpose, and says nothing about
correctness (the reference tests do)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = json.loads((FIXTURES / "losses.json").read_text())
_spec = importlib.util.spec_from_file_location("record_losses", FIXTURES / "record_losses.py")
record_losses = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record_losses)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recorded_now() -> dict[str, dict]:
    """Every case, recorded from this checkout's minidet in the recorder's child process."""
    return record_losses.record_in_child(list(record_losses.CASES), source=REPO)


def _same_detections(now: dict, then: dict) -> bool:
    """The recorded top detections, each matched to one of the current ones with the same label and a
    score and box within tolerance (near-tied scores may come out in either order)."""
    unused = list(range(len(now["scores"])))
    for box, score, label in zip(then["boxes"], then["scores"], then["labels"], strict=True):
        hit = next((j for j in unused if now["labels"][j] == label
                    and torch.allclose(torch.tensor(now["scores"][j]), torch.tensor(score), rtol=1e-5, atol=1e-7)
                    and torch.allclose(torch.tensor(now["boxes"][j]), torch.tensor(box), rtol=1e-5, atol=1e-4)), None)
        if hit is None:
            return False
        unused.remove(hit)
    return True


def test_the_fixture_names_its_commit_and_covers_every_family():
    assert len(RECORDED["commit"]) >= 40 and "uncommitted" not in RECORDED["commit"]
    for commit in RECORDED.get("case_commits", {}).values():
        assert len(commit.split()[0]) == 40 and "uncommitted" not in commit
    assert {family for family, _ in record_losses.CASES.values()} == {"retinanet", "ssd", "yolo"}
    assert set(RECORDED["cases"]) == set(record_losses.CASES)


@pytest.mark.parametrize("name", sorted(record_losses.CASES))
def test_losses_gradients_and_predictions_equal_the_recorded(name, recorded_now):
    now, then = recorded_now[name], RECORDED["cases"][name]
    for step_now, step_then in zip(now["steps"], then["steps"], strict=True):
        assert set(step_now) == set(step_then)
        for key, value in step_then.items():
            assert step_now[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)
    for pred_now, pred_then in zip(now["predictions"], then["predictions"], strict=True):
        assert pred_now["count"] == pred_then["count"]
        assert torch.allclose(torch.tensor(pred_now["scores"]), torch.tensor(pred_then["scores"]), rtol=1e-5, atol=1e-7)
        assert _same_detections(pred_now, pred_then), (name, pred_now, pred_then)


def test_the_recording_mode_is_stated_and_took_effect():
    assert "ATEN_CPU_CAPABILITY=default" in RECORDED["mode"] and "MKL_CBWR=COMPATIBLE" in RECORDED["mode"]
    with pytest.raises(SystemExit, match="REPRODUCIBLE_ENV was not applied"):
        record_losses._record_here(["yolo"])  # this process runs the vectorised kernels
