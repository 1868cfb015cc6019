"""The precision of study runs and of the pairs the tables compare.

The budgets leave ``--amp`` at the preset's ``auto``: bfloat16 autocast where the CPU computes it
natively, float32 elsewhere. So one run key trains at either precision, depending on the machine,
and a paired difference may mix the two. The tables name such pairs (``mixed_precision_pairs``).
A study run on one machine trains the runs that pair cleanly first. A run waits to the end when
one of its compared runs (its reference or the cell its paper row is judged against, or a cell
compared with it, same seed) was trained at another precision than this machine's
(``crosses_precision``): another machine may still train it into a clean pair.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from .grids import Cell

__all__ = ["record_precision", "precision_text", "precision_here", "compared_cells", "mixed_precision_pairs", "crosses_precision"]


def record_precision(run: dict) -> str:
    """A record's precision ("float32", "bf16 autocast", ...), without "(inferred from the machine)"."""
    return run.get("precision", "not recorded").split(" (")[0]


def precision_text(amp: str | None) -> str:
    """A resolved ``--amp`` ("bf16", "fp16", "off") as a record states it."""
    return "float32" if amp in (None, "off") else f"{amp} autocast"


def precision_here(flags: list[str], run_dir: Path | None = None) -> str:
    """The precision a run of ``flags`` trains at on this machine, as its record will say it: the
    run folder's saved configuration once it has started, else the resolved ``--amp``."""
    saved = run_dir / "config.yaml" if run_dir is not None else None
    if saved is not None and saved.is_file():
        return precision_text((yaml.safe_load(saved.read_text()) or {}).get("amp"))
    from ..configuration import resolve
    from ..engine.precision import resolve_amp
    from ..train import build_parser

    cfg = resolve({k: v for k, v in vars(build_parser().parse_args(flags)).items() if k != "config"})
    device = cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")  # as the trainer picks it
    return precision_text(resolve_amp(cfg["amp"], torch.device(device)))


def compared_cells(cell: Cell, cells: list[Cell]) -> set[str]:
    """The cells a table compares ``cell`` with: its reference, the cell its paper row is judged
    against, and the cells that name ``cell`` as one of those."""
    def partners(c: Cell) -> set[str]:
        return {c.ref, *([c.paper.versus] if c.paper and c.paper.versus else [])} - {"", c.name}

    return partners(cell) | {c.name for c in cells if cell.name in partners(c)}


def mixed_precision_pairs(cells: list[Cell], records: dict[tuple[str, int], dict]) -> list[str]:
    """The compared pairs (a cell and its reference or the cell its paper row is judged against,
    same seed) whose two runs trained at different precisions: their ΔAP holds the precision's
    effect too. As "cell vs other, seed S"."""
    pairs = []
    for cell in cells:
        for other in dict.fromkeys((cell.ref, cell.paper.versus if cell.paper else None)):
            if not other or other == cell.name:
                continue
            pairs += [f"{cell.name} vs {other}, seed {seed}" for (name, seed), run in sorted(records.items())
                      if name == cell.name and (other, seed) in records
                      and record_precision(run) != record_precision(records[(other, seed)])]
    return pairs


def crosses_precision(cell: Cell, seed: int, cells: list[Cell], records: dict[tuple[str, int], dict],
                      here: str) -> bool:
    """Whether a run of ``cell`` at ``seed`` trained ``here`` would pair with a recorded run of
    another precision."""
    return any(record_precision(records[(name, seed)]) != here
               for name in compared_cells(cell, cells) if (name, seed) in records)
