"""Export a trained detector's network for deployment: ``python -m minidet.export --weights CKPT``.

    python -m minidet.export --weights weights/retinanet_shapes.pt --format torchscript
    python -m minidet.export --weights CKPT --format onnx          # needs: pip install onnx onnxruntime

The exported graph takes images float [B, 3, S, S] in [0, 1] (S = the checkpoint's input size;
letterbox other sizes first, as ``minidet.data.EvalTransform``) and returns decoded boxes
[B, A, 4] (xyxy input pixels) and class scores [B, A, C]; thresholding and NMS stay outside
(``minidet.nms.batched_nms``), since their output size depends on the data. After writing the
file, the exported model runs on a sample and its outputs are compared with PyTorch's.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from .cli import HelpFormatter
from .engine.checkpoint import CheckpointError, model_from_checkpoint


class ExportWrapper(nn.Module):
    """images -> (boxes [B, A, 4], scores [B, A, C]) of a Detector."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return self.model.decode(out), self.model.postprocess.scores(out)  # predict()'s decoding and scoring


def export(weights: str | Path, fmt: str, out: str | Path | None = None, atol: float = 1e-4) -> tuple[Path, float]:
    """Write the exported model and check it on a sample -> (path, max abs difference)."""
    model, ckpt = model_from_checkpoint(weights)
    model.eval()
    size = int(ckpt.get("img_size") or 512)
    wrapper = ExportWrapper(model).eval()
    sample = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    path = Path(out) if out else Path(weights).with_suffix(".ts" if fmt == "torchscript" else ".onnx")
    with torch.no_grad(), warnings.catch_warnings():
        # the coders' mean / std tensors are meant to become constants of the graph, and the
        # TorchScript-based ONNX exporter is chosen on purpose (the new one needs onnxscript)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export but works
        ref = wrapper(sample)
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapper, sample, check_trace=False)
            traced.save(str(path))
            got = torch.jit.load(str(path))(sample)
        else:
            try:
                import onnxruntime
            except ImportError:
                raise RuntimeError("ONNX export needs the onnx and onnxruntime packages: pip install onnx onnxruntime") from None
            torch.onnx.export(wrapper, (sample,), str(path), input_names=["images"], output_names=["boxes", "scores"],
                              dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}},
                              dynamo=False)
            sess = onnxruntime.InferenceSession(str(path))
            got = [torch.from_numpy(v) for v in sess.run(None, {"images": sample.numpy()})]
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got, strict=True))
    if diff > atol * max(1.0, float(ref[0].abs().max())):
        raise RuntimeError(f"the exported model's outputs differ from PyTorch's by {diff:.3g}; do not use {path}")
    return path, diff


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minidet.export", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--weights", required=True, help="minidet checkpoint")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript", help="export format")
    p.add_argument("--out", default=None, help="output file (default: beside the checkpoint)")
    args = p.parse_args(argv)
    try:
        path, diff = export(args.weights, args.format, args.out)
    except (CheckpointError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}; outputs match PyTorch on a sample (max abs difference {diff:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
