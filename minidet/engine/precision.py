"""The training precision: ``--amp fp16 | bf16 | off | auto``.

``auto`` (the small preset's choice) is bfloat16 autocast where the device computes bfloat16
natively, else float32:

- CPU: the x86 ``avx512_bf16`` or ``amx_bf16`` instructions, read from ``/proc/cpuinfo``
  (Linux; other systems and Arm CPUs: float32). Without them oneDNN emulates bfloat16 around
  float32 arithmetic, so ``auto`` stays in float32 there (not measured on such a CPU). Measured
  on a 2-core AMD EPYC with avx512_bf16: forward + backward of the small preset's model on 16
  images at 128 px 1.4x faster than float32 (eval/README.md).
- CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (Ampere and later).

The choice is made once when a run starts and saved with its configuration as ``bf16`` or
``off``: a resumed run keeps the precision it started with on any machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["AMP_CHOICES", "amp_dtype", "native_bf16", "resolve_amp"]

AMP_CHOICES = ("fp16", "bf16", "off", "auto")
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags the kernel reports (x86 ``flags``); empty elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def native_bf16(device: torch.device, cpu_flags: set[str] | None = None) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (see the module docstring)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(_CPU_BF16_FLAGS & (_cpu_flags() if cpu_flags is None else cpu_flags))
    return False


def resolve_amp(amp: str | None, device: torch.device) -> str:
    """``--amp`` as a run saves it: "fp16", "bf16" or "off" (``auto``: "bf16" where native)."""
    if amp in (None, "off"):
        return "off"
    if amp == "auto":
        return "bf16" if native_bf16(device) else "off"
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp {amp!r}: choose one of {', '.join(AMP_CHOICES)}")
    return amp


def amp_dtype(amp: str | None) -> torch.dtype | None:
    """The autocast dtype of a resolved ``--amp`` (None: float32, no autocast)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
