"""Behaviour kept through refactors: the losses (every component, three calls so stateful weighting
updates), the network's squared gradient norm and the top detections of every family on fixed
inputs equal those recorded by tests/fixtures/record_losses.py from an earlier commit (stated in
tests/fixtures/losses.json; a case added later names its own commit in ``case_commits``) — to 1e-6
relative for losses and gradients. This is a refactoring guard: it compares minidet with its own
earlier output on purpose, and says nothing about correctness (the reference tests do)."""

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


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recording's reduction order
    yield
    torch.set_num_threads(threads)


def test_the_fixture_names_its_commit_and_covers_every_family():
    assert len(RECORDED["commit"]) >= 40 and "uncommitted" not in RECORDED["commit"]
    for commit in RECORDED.get("case_commits", {}).values():
        assert len(commit.split()[0]) == 40 and "uncommitted" not in commit
    assert {family for family, _ in record_losses.CASES.values()} == {"retinanet", "ssd", "yolo"}
    assert set(RECORDED["cases"]) == set(record_losses.CASES)


@pytest.mark.parametrize("name", sorted(record_losses.CASES))
def test_losses_gradients_and_predictions_equal_the_recorded(name, one_thread):
    family, options = record_losses.CASES[name]
    now, then = record_losses.record_case(family, options), RECORDED["cases"][name]
    for step_now, step_then in zip(now["steps"], then["steps"], strict=True):
        assert set(step_now) == set(step_then)
        for key, value in step_then.items():
            assert step_now[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)
    for pred_now, pred_then in zip(now["predictions"], then["predictions"], strict=True):
        assert pred_now["count"] == pred_then["count"]
        assert pred_now["labels"] == pred_then["labels"]
        assert torch.allclose(torch.tensor(pred_now["scores"]), torch.tensor(pred_then["scores"]), rtol=1e-5, atol=1e-7)
        assert torch.allclose(torch.tensor(pred_now["boxes"]).reshape(-1, 4), torch.tensor(pred_then["boxes"]).reshape(-1, 4),
                              rtol=1e-5, atol=1e-4)
