"""Run keys and the per-study record files (one JSON line per finished cell x seed run)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["option_groups", "run_key", "load_records", "append_record", "record_once"]


def option_groups(flags: Sequence[str]) -> list[str]:
    """["--a", "1", "--b"] -> ["--a 1", "--b"]: each option with its values."""
    groups: list[list[str]] = []
    for tok in flags:
        if tok.startswith("--") or not groups:
            groups.append([tok])
        else:
            groups[-1].append(tok)
    return [" ".join(g) for g in groups]


def run_key(flags: Sequence[str]) -> str:
    """Same options in any order -> same key: identical runs are trained once, for every study.
    An option given twice counts with its last value, as argparse reads it (a 2x check's
    ``--epochs 36 ... --epochs 72`` is the same run as ``--epochs 72``)."""
    last = {group.split(" ", 1)[0]: group for group in option_groups(flags)}
    return hashlib.sha1(" ".join(sorted(last.values())).encode()).hexdigest()[:12]


def load_records(path: Path) -> dict[tuple[str, int], dict]:
    """(cell, seed) -> record; a later line wins; a torn last line (a kill during the append) is
    skipped, its run is collected again from its run folder."""
    out: dict[tuple[str, int], dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[(r["cell"], r["seed"])] = r
    return out


def append_record(path: Path, record: dict) -> None:
    """Append one record as a line, on disk before returning (a torn earlier line is closed first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record) + "\n"
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        text = "\n" + text
    with path.open("a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def record_once(path: Path, cell: str, seed: int, rec: dict) -> None:
    """Append the record unless the file holds this cell x seed's identical run already: a second
    study command on the same study may have appended it after this one read the file."""
    own = load_records(path).get((cell, seed))
    if own is None or run_key(own["flags"]) != run_key(rec["flags"]):
        append_record(path, {"cell": cell, "seed": seed, **rec})
