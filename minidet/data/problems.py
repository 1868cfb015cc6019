"""Bad-data reporting: one clear message per problem, strict (stop) or lenient (skip + count)."""

from __future__ import annotations

from collections import Counter


class DataError(ValueError):
    """A problem in a dataset: the message names the file (and line / annotation) and the fix."""


class DataReport:
    """Collects data problems while a dataset is indexed.

    strict=True raises a DataError at the first problem; strict=False records it (the caller
    skips the broken annotation or image) so that ``summary()`` can report the counts.
    """

    def __init__(self, strict: bool = True, max_examples: int = 5) -> None:
        self.strict = strict
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def problem(self, kind: str, message: str) -> None:
        """Report one problem of a kind (e.g. "degenerate box"); raises in strict mode."""
        if self.strict:
            raise DataError(f"{message}\n(use --lenient to skip such entries and count them instead)")
        self.counts[kind] += 1
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < self.max_examples:
            self.examples[kind].append(message)

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
