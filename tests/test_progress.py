"""minidet.progress: tqdm on a terminal, plain lines (no carriage returns) otherwise."""

import io
import sys

from tqdm import tqdm

from minidet.progress import LineProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_progress_prints_every_n_steps_and_at_the_end():
    out = io.StringIO()
    bar = LineProgress(total=10, desc="epoch 1/3", every=3, file=out)
    for i in range(10):
        if i == 8:
            bar.set_postfix({"loss": "0.5"})
        bar.update(1)
    bar.close()
    bar.close()  # a second close prints nothing
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"epoch 1/3: {n}/10 ({100 * n // 10}%) it" for n in (3, 6, 9, 10)]
    assert lines[-1].endswith("loss=0.5") and "\r" not in out.getvalue()


def test_line_progress_resumes_from_initial_and_wraps_iterables():
    out = io.StringIO()
    bar = LineProgress(total=10, initial=4, every=5, desc="epoch 2/2", file=out)
    bar.update(6)
    bar.close()
    assert out.getvalue().splitlines()[0].startswith("epoch 2/2: 10/10 (100%) it")  # one line: 4 -> 10 passes 5
    out = io.StringIO()
    items = list(LineProgress(range(4), desc="val", unit="batch", file=out))
    assert items == [0, 1, 2, 3]
    assert out.getvalue().splitlines()[-1].startswith("val: 4/4 (100%) batch")
    quiet = io.StringIO()
    assert list(LineProgress(range(3), disable=True, file=quiet)) == [0, 1, 2] and quiet.getvalue() == ""


def test_factory_follows_whether_stdout_is_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    bar = progress_bar(total=5, desc="x")
    assert isinstance(bar, LineProgress) and bar.every == 1
    bar.close()
    monkeypatch.setattr(sys, "stdout", _Terminal())
    bar = progress_bar(total=5, desc="x")
    assert isinstance(bar, tqdm)
    bar.close()
