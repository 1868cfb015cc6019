"""Export: TorchScript (and ONNX when installed) outputs equal PyTorch's; then thresholding + NMS
on the exported outputs gives predict()'s detections."""

import importlib.util
from pathlib import Path

import pytest
import torch

import minidet
from minidet.export import ExportWrapper, export, main
from minidet.nms import batched_nms

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@pytest.mark.parametrize("name", ["retinanet_shapes.pt", "ssd_shapes.pt", "yolo_shapes.pt"])
def test_torchscript_export_matches(name, tmp_path):
    path, diff = export(WEIGHTS / name, "torchscript", tmp_path / "m.ts")
    assert path.is_file() and diff <= 1e-4
    detector = minidet.load(WEIGHTS / name)
    size = detector.img_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    boxes, scores = torch.jit.load(str(path))(images)
    ref_boxes, ref_scores = ExportWrapper(detector.model)(images)
    torch.testing.assert_close(boxes, ref_boxes)
    torch.testing.assert_close(scores, ref_scores)


def test_exported_outputs_give_the_same_detections(tmp_path):
    # RetinaNet: score threshold + per-level top-k + class-aware NMS on the exported outputs
    path, _ = export(WEIGHTS / "retinanet_shapes.pt", "torchscript", tmp_path / "r.ts")
    detector = minidet.load(WEIGHTS / "retinanet_shapes.pt")
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    boxes, scores = torch.jit.load(str(path))(image)
    post = detector.model.postprocess
    flat = scores[0].reshape(-1)
    keep = torch.nonzero(flat > post.score_thresh).squeeze(1)  # the shipped model's levels hold < 1000 candidates
    prior, label = keep // scores.shape[-1], keep % scores.shape[-1]
    b = boxes[0, prior].clamp(0, 128)
    kept = batched_nms(b, flat[keep], label, post.nms_thresh)[: post.max_det]
    ref = detector.model.predict(image)[0]
    assert torch.equal(label[kept], ref["labels"]) and torch.allclose(b[kept], ref["boxes"])


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnx and onnxruntime")
def test_onnx_export(tmp_path):
    path, diff = export(WEIGHTS / "ssd_shapes.pt", "onnx", tmp_path / "m.onnx")
    assert path.is_file() and diff <= 1e-3


def test_export_errors(tmp_path, capsys):
    assert main(["--weights", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
