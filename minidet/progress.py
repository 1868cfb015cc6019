"""Progress display: tqdm's bar on a terminal; one plain line every N steps (and one at the
end) when stdout is a file or a pipe (a log, a batch job, a notebook's captured output), where
tqdm's carriage-return refreshes would pile up as one long unreadable line."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["LineProgress", "progress_bar"]


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # a closed or detached stream
        return False


class LineProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` (and iteration) as plain lines:
    ``desc: n/total (pct%) elapsed, rate[, key=value ...]`` after every ``every`` steps and once
    when closed (unless the last line already said the same)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 initial: int = 0, disable: bool = False, unit: str = "it", every: int | None = None,
                 file: TextIO | None = None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.n, self.unit, self.disable = total, desc, initial, unit, disable
        # default: about 10 lines for a known total, else one per 100 steps
        self.every = every or (max(1, math.ceil(total / 10)) if total else 100)
        self.file = file if file is not None else sys.stdout
        self.postfix: dict[str, Any] = {}
        self._start_n, self._t0 = initial, time.perf_counter()
        self._printed_n: int | None = None
        self._closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        before = self.n
        self.n += n
        if self.n // self.every > before // self.every:
            self._print()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._printed_n != self.n:
            self._print()

    def line(self) -> str:
        """The current progress as one line (no newline)."""
        elapsed = time.perf_counter() - self._t0
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {done} {self.unit}", f"{elapsed:.1f} s", f"{rate:.3g} {self.unit}/s"]
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def _print(self) -> None:
        self._printed_n = self.n
        if not self.disable:
            print(self.line(), file=self.file, flush=True)


def progress_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", initial: int = 0,
                 disable: bool = False, unit: str = "it", leave: bool = True, every: int | None = None
                 ) -> tqdm | LineProgress:
    """A tqdm bar on sys.stdout when it is a terminal, else a ``LineProgress`` printing one line
    per ``every`` steps (default: a tenth of ``total``) and one at the end. Both wrap
    ``iterable`` when given and have ``update``, ``set_postfix`` and ``close``."""
    stream = sys.stdout
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, initial=initial, disable=disable, unit=unit, leave=leave,
                    file=stream, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, initial=initial, disable=disable, unit=unit, every=every,
                        file=stream)
