"""Bad-data reporting: one clear message per problem, strict (stop) or lenient (skip + count).

A ``DataError`` raised in a DataLoader worker process reaches the main process as the same
one-line message it has with ``--workers 0``: torch re-raises a worker's exception as
``DataError("Caught DataError in DataLoader worker process N.\\nOriginal Traceback ...")``
and ``DataError`` recovers the original message from that text (the worker's traceback stays
in ``err.worker_traceback``).

Images that turn out unreadable only when loaded (lenient mode) are skipped inside
``DetectionDataset.__getitem__``, possibly in a worker process whose copy of the report the
main process never sees; the item carries ``"skipped": [(path, message), ...]``, ``collate``
passes it on in the targets, and the training / evaluation loops call ``record_skipped`` so the
main process's ``dataset.report`` counts each such file once (``CountSkips`` wraps a loader to do
that and print the summary after the pass).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

SKIPPED_WHILE_LOADING = "unreadable image (skipped while loading)"


def _original_message(text: str, cls: type) -> str | None:
    """The message of the ``cls`` exception at the end of a torch worker re-raise text, or None."""
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return None
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    last = text.rfind("Traceback (most recent call last):")  # the block of the exception raised last
    # the exception line is the first unindented line "<name>: message" (or just "<name>") after the frames
    match = re.compile(rf"^{re.escape(name)}(?:: |$)", re.MULTILINE).search(text, last)
    if match is None:
        return None
    return text[match.end():].rstrip("\n")


class DataError(ValueError):
    """A problem in a dataset: the message names the file (and line / annotation) and the fix."""

    def __init__(self, *args) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            original = _original_message(args[0], type(self))
            if original is not None:  # re-raised from a DataLoader worker: keep the user's message only
                self.worker_traceback = args[0]
                args = (original,)
        super().__init__(*args)


class DataReport:
    """Collects data problems while a dataset is indexed (and images skipped while loading).

    strict=True raises a DataError at the first problem; strict=False records it (the caller
    skips the broken annotation or image) so that ``summary()`` can report the counts.
    """

    def __init__(self, strict: bool = True, max_examples: int = 5) -> None:
        self.strict = strict
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.skipped_files: dict[str, str] = {}  # path -> message, for images skipped while loading

    def problem(self, kind: str, message: str) -> None:
        """Report one problem of a kind (e.g. "degenerate box"); raises in strict mode."""
        if self.strict:
            raise DataError(f"{message}\n(use --lenient to skip such entries and count them instead)")
        self._count(kind, message)

    def _count(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < self.max_examples:
            self.examples[kind].append(message)

    def image_skipped(self, path: str, message: str) -> bool:
        """Count an image found unreadable while loading (lenient mode), once per file.
        -> whether the file was new to this report."""
        if path in self.skipped_files:
            return False
        self.skipped_files[path] = message
        self._count(SKIPPED_WHILE_LOADING, message)
        return True

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """Human-readable counts of what was skipped, with a few examples of each kind."""
        if not self.counts:
            return "no data problems found"
        lines = [f"skipped {self.total} problem entr{'y' if self.total == 1 else 'ies'} (lenient mode):"]
        for kind, n in self.counts.most_common():
            lines.append(f"  {n:6d} x {kind}")
            for ex in self.examples.get(kind, []):
                lines.append(f"           e.g. {ex}")
        return "\n".join(lines)


def record_skipped(report: DataReport, targets: Iterable[dict]) -> int:
    """Add the images a batch's items skipped while loading (``target["skipped"]``, filled by
    ``collate``) to the main process's ``report``, each file once; call it for every batch of a
    loop. -> the number of files new to the report."""
    return sum(report.image_skipped(path, message) for t in targets for path, message in t.get("skipped", ()))


class CountSkips:
    """A DataLoader that counts, in ``report``, the images its items skipped while loading
    (``record_skipped`` on every batch) and prints the report's summary after a pass in which
    such images were found. Otherwise it behaves as ``loader`` (len, attributes)."""

    def __init__(self, loader, report: DataReport, label: str = "data") -> None:
        self.loader, self.report, self.label = loader, report, label

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        before = len(self.report.skipped_files)
        for images, targets in self.loader:
            record_skipped(self.report, targets)
            yield images, targets
        if len(self.report.skipped_files) > before:  # (with --workers 0 the dataset counted them itself)
            from tqdm import tqdm

            tqdm.write(f"{self.label}: {self.report.summary()}")
