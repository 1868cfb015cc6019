"""Budgets: the flags every run of a study shares (data size, image size, schedule), its seeds.

Built in: ``quick`` (the plumbing check: a whole study in seconds, numbers meaningless) and
``default`` (the trainer's own defaults for the data, three seeds: what a user asks of their own
data). Any other budget is a YAML file::

    name: converged
    note: the no-flag preset, 2000 shapes images at 128 px, 12 epochs
    flags: [--shapes-images, "2000", --img-size, "128", --epochs, "12", --batch-size, "16"]
    seeds: [0, 1, 2]
    eval_interval: 2        # epochs between evaluations (the AP-vs-iteration curves)
    data: shapes            # optional; --data replaces it
    results: ../results     # optional: where the tables go, relative to the file

A run's flags are the study's own (the SGD studies' optimizer and learning rate), then the
budget's, then the cell's: a budget may set the learning rate its schedule needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["Budget", "BUILTIN", "BudgetError", "load_budget"]

LENGTH_FLAGS = ("--epochs", "--iters")


class BudgetError(ValueError):
    """A budget that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Budget:
    name: str
    flags: tuple[str, ...]
    seeds: tuple[int, ...]
    note: str
    eval_interval: int | None = None  # epochs between evaluations; None: only at the end
    alwa_intervals: tuple[int, ...] = (20, 100, 200, 500)
    data: str = "shapes"
    results: Path | None = None

    def length(self) -> tuple[str, int] | None:
        """("--epochs", E) or ("--iters", N) when the budget fixes the schedule (the last one
        given wins, as on the command line), else None."""
        found = None
        for i, tok in enumerate(self.flags[:-1]):
            if tok in LENGTH_FLAGS:
                found = (tok, int(self.flags[i + 1]))
        return found

    def schedule_flags(self, multiple: int, reference_iterations: int | None = None) -> list[str]:
        """Flags that follow the cell's flags: the evaluation interval and, for ``multiple`` > 1,
        the schedule times ``multiple`` (from the budget's --epochs / --iters, or from the
        iterations the 1x reference run trained when the budget leaves the schedule to the
        trainer). None of the latter known yet: []."""
        length = self.length()
        out: list[str] = []
        if self.eval_interval is not None:
            out += ["--eval-interval", str(self.eval_interval)]
        elif length is not None and length[0] == "--epochs":
            out += ["--eval-interval", str(length[1])]  # one evaluation, at the end
        if multiple == 1:
            return out
        if length is not None:
            out += [length[0], str(length[1] * multiple)]
        elif reference_iterations:
            out += ["--iters", str(reference_iterations * multiple)]
        else:
            return []
        if self.eval_interval is not None or (length is not None and length[0] == "--epochs"):
            every = self.eval_interval if self.eval_interval is not None else length[1]
            out += ["--eval-interval", str(every * multiple)]
        return out


BUILTIN = {
    "quick": Budget("quick", ("--shapes-images", "32", "--shapes-val-images", "32", "--img-size", "64", "--epochs",
                              "2", "--batch-size", "8", "--warmup-iters", "2", "--workers", "0"), seeds=(0, 1),
                    note="plumbing check: 32 shapes images (32 to validate) at 64 px, 2 epochs (8 iterations); the "
                    "numbers mean nothing",
                    alwa_intervals=(2, 4, 6, 8)),
    "default": Budget("default", (), seeds=(0, 1, 2),
                      note="the trainer's defaults for the data (python -m minidet.train --data X), 3 seeds"),
}


def _fail(path: Path, what: str) -> BudgetError:
    return BudgetError(f"{path}: {what}; a budget file holds name, note, flags (a list), seeds (a list) and "
                       "optionally eval_interval, data, results (see python -m minidet.study --help)")


def load_budget(spec: str) -> Budget:
    """A built-in budget by name, or a budget YAML file by path."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.is_file():
        raise BudgetError(f"--budget {spec!r} is neither a built-in budget ({', '.join(BUILTIN)}) nor a file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise _fail(path, f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise _fail(path, "not a mapping")
    unknown = set(raw) - {"name", "note", "flags", "seeds", "eval_interval", "alwa_intervals", "data", "results"}
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(sorted(unknown))}")
    flags, seeds = raw.get("flags", []), raw.get("seeds", [0, 1, 2])
    if not isinstance(flags, list) or not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise _fail(path, "flags and seeds must be lists (seeds of integers)")
    results = raw.get("results")
    budget = Budget(
        name=str(raw.get("name", path.stem)), flags=tuple(str(f) for f in flags), seeds=tuple(seeds),
        note=str(raw.get("note", "")), eval_interval=raw.get("eval_interval"),
        alwa_intervals=tuple(raw.get("alwa_intervals", (20, 100, 200, 500))), data=str(raw.get("data", "shapes")),
        results=(path.parent / results).resolve() if results else None)
    try:
        budget.length()
    except ValueError:
        raise _fail(path, "--epochs / --iters must be followed by an integer") from None
    return budget
