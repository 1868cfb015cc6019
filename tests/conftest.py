"""Shared pytest fixtures and helpers.

The test session runs single-threaded (OMP_NUM_THREADS=1, set before torch is imported, so the
processes the tests start inherit it): many tests start training processes or DataLoader
workers beside the pytest process, and on the 2-core machine intra-op threads competing with
them made the whole suite slower than one thread per process.

A suite started in the background of a non-interactive shell (``pytest &``, a CI script)
inherits SIGINT ignored, and so would every process it starts: CPython then installs no
KeyboardInterrupt handler, and the tests that send a Ctrl-C to a training or a study would see
it ignored. The session handles SIGINT as a terminal's Python does; the processes the tests
start then begin with the default disposition."""

import os
import signal

os.environ.setdefault("OMP_NUM_THREADS", "1")
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
import torch  # noqa: E402


def random_boxes(n: int, generator: torch.Generator, scale: float = 100.0,
                 max_size: float = 50.0, dtype: torch.dtype = torch.float32,
                 min_size: float = 0.01) -> torch.Tensor:
    """n valid xyxy boxes [n, 4] with width and height in [min_size, min_size + max_size)."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * max_size + min_size
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
