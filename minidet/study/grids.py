"""The studies: grids of ``python -m minidet.train`` flag sets, with the papers' directions.

A study is a list of cells; every cell is trained once per seed with the budget's flags, then the
study's own flags (the papers' SGD for ``alwa`` and ``weights``), then the cell's flags, so all
cells of a study share one schedule and nothing is tuned per cell. Each study names a reference
cell; every other cell is compared with it seed by seed. Each study also holds a convergence
check: its reference cell trained with twice the budget's schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = ["Cell", "Study", "STUDIES", "COMMON", "SGD", "PaperRow"]

# Every run: quiet output, the diagnostics on (grad ratio, score / IoU correlation), one log record
# per iteration (the balance study's window plots).
COMMON = ("--quiet", "--diagnostics", "--log-interval", "1")
# The papers' optimizer: SGD scales each branch's step with its loss weight, AdamW does not.
SGD = ("--optimizer", "sgd", "--lr", "0.06", "--weight-decay", "0.0001")


@dataclass(frozen=True)
class PaperRow:
    """What the paper reports for a row: ``sign`` +1 (better), -1 (worse), 0 (no change) or None
    (no direction stated), the words with the source, and the cell the paper compares the row
    with (``versus``; None: the row's reference)."""

    sign: int | None
    text: str
    versus: str | None = None


@dataclass(frozen=True)
class Cell:
    """One row of a study table: a label, its group (table section / plot colour), its flags,
    the cell it is compared with (``ref``), the paper's direction and the schedule multiple."""

    name: str
    flags: tuple[str, ...]
    group: str = ""
    ref: str = ""
    paper: PaperRow | None = None
    schedule: int = 1  # 2: the convergence check (twice the budget's schedule)


@dataclass(frozen=True)
class Study:
    """A named grid: ``make(alwa_intervals)`` -> cells; ``reference`` names the cell of the
    convergence check; ``flags`` go into every run of the study."""

    name: str
    title: str
    make: Callable[[tuple[int, ...]], list[Cell]]
    reference: str
    flags: tuple[str, ...] = ()

    def cells(self, alwa_intervals: tuple[int, ...]) -> list[Cell]:
        """The study's cells, then the convergence check (reference at 2x the schedule)."""
        cells = self.make(alwa_intervals)
        ref = next(c for c in cells if c.name == self.reference)
        check = replace(ref, name=f"{ref.name} (2x schedule)", group="convergence check", ref=ref.name,
                        paper=None, schedule=2)
        return [*cells, check]


REG_LOSSES = {"L1": "l1", "SmoothL1": "smooth_l1", "CIoU": "ciou"}
# ALWA Table 1 protocol, thinned to the pairs that decide its question (does a fixed weight pair
# matter, and does the best pair depend on the regression loss): a common factor below and above
# 1:1, and one unequal pair
WEIGHT_PAIRS = ((1, 1), (0.5, 0.5), (2, 2), (0.5, 0.75))
# RetinaNet as in the papers: focal loss, MaxIoU (0.5 / 0.4) with 9 anchors per location
RETINANET = ("--model", "retinanet", "--assigner", "maxiou")
FOCAL_SL1 = (*RETINANET, "--reg-loss", "smooth_l1", "--loss-weights", "1", "1")

ALWA_GAIN = PaperRow(1, "ALWA Table 2: ALWA above fixed 1:1 (about +1 mAP, VOC)")
ALRP = "aLRP Table 2"
FOCAL_PAPER = "Focal Loss paper Table 1d"


def _w(x: float) -> str:
    return f"{x:g}"


def _compared_with(ref: str, cells: list[Cell]) -> list[Cell]:
    return [replace(c, ref=c.ref or ref) for c in cells]


def weights_cells(alwa_intervals: tuple[int, ...]) -> list[Cell]:
    return [Cell(f"{label} {_w(c)}:{_w(r)}", (*RETINANET, "--reg-loss", reg, "--loss-weights", _w(c), _w(r)), label,
                 f"{label} 1:1", PaperRow(None, "ALWA Table 1: the best pair depends on the regression loss"))
            for label, reg in REG_LOSSES.items() for c, r in WEIGHT_PAIRS]


def alwa_cells(alwa_intervals: tuple[int, ...]) -> list[Cell]:
    c_main = str(alwa_intervals[1])  # the paper's C = 100 (smaller for the quick budget)
    cells = []
    for label, reg in REG_LOSSES.items():
        base = (*RETINANET, "--reg-loss", reg)
        ref = f"{label} fixed 1:1"
        cells.append(Cell(ref, (*base, "--loss-weights", "1", "1"), "Table 2: scheme", ref))
        cells += [Cell(f"{label} ALWA_{v}", (*base, "--weighting", f"alwa{v}", "--alwa-interval", c_main),
                       "Table 2: scheme", ref, ALWA_GAIN) for v in (1, 2)]
    base = (*RETINANET, "--reg-loss", "smooth_l1", "--weighting", "alwa2")
    cells += [Cell(f"SmoothL1 ALWA_2 C={c}", (*base, "--alwa-interval", str(c)), "Table 7: window C",
                   "SmoothL1 fixed 1:1", ALWA_GAIN if str(c) == c_main else None) for c in alwa_intervals]
    cells += [Cell(f"SmoothL1 ALWA_2 init {_w(w)}:{_w(w)}",
                   (*base, "--alwa-interval", c_main, *(("--loss-weights", _w(w), _w(w)) if w != 1 else ())),
                   "Table 8: initial weight", "SmoothL1 fixed 1:1", ALWA_GAIN if w == 1 else None)
              for w in (0.5, 1, 2)]
    return cells


def ranking_cells(alwa_intervals: tuple[int, ...]) -> list[Cell]:
    alrp = ("--model", "retinanet", "--cls-loss", "alrp")
    ranking_gain = PaperRow(1, f"{ALRP}: ranking-based losses above focal loss")
    above_ap_loss = PaperRow(1, f"{ALRP}: aLRP above AP Loss", versus="AP Loss + SmoothL1")
    return _compared_with("focal + SmoothL1", [
        Cell("focal + SmoothL1", FOCAL_SL1, "MaxIoU"),
        Cell("AP Loss + SmoothL1", (*RETINANET, "--cls-loss", "ap", "--reg-loss", "smooth_l1"), "MaxIoU",
             paper=ranking_gain),
        Cell("aLRP (IoU), no SB", (*alrp, "--assigner", "maxiou", "--alrp-iou", "iou", "--weighting", "fixed"),
             "MaxIoU", paper=above_ap_loss),
        Cell("aLRP (IoU) + SB", (*alrp, "--assigner", "maxiou", "--alrp-iou", "iou"), "MaxIoU",
             paper=PaperRow(1, f"{ALRP}: SB adds to aLRP without SB", versus="aLRP (IoU), no SB")),
        Cell("aLRP (GIoU), no SB", (*alrp, "--assigner", "maxiou", "--weighting", "fixed"), "MaxIoU",
             paper=above_ap_loss),
        Cell("aLRP (GIoU) + SB", (*alrp, "--assigner", "maxiou"), "MaxIoU",
             paper=PaperRow(1, f"{ALRP}: SB adds to aLRP without SB", versus="aLRP (GIoU), no SB")),
        Cell("focal + SmoothL1, ATSS", ("--model", "retinanet", "--assigner", "atss", "--reg-loss", "smooth_l1"),
             "ATSS", paper=PaperRow(1, "ATSS paper: ATSS above MaxIoU for RetinaNet")),
        Cell("aLRP (GIoU) + SB, ATSS", (*alrp, "--assigner", "atss"), "ATSS",
             paper=PaperRow(1, f"{ALRP}: ATSS adds to aLRP + SB", versus="aLRP (GIoU) + SB")),
    ])


def families_cells(alwa_intervals: tuple[int, ...]) -> list[Cell]:
    below = PaperRow(-1, "SSD / RetinaNet papers: below RetinaNet on COCO")
    return _compared_with("RetinaNet (focal, MaxIoU)", [
        Cell("YOLO v1 loss (lambda_noobj 0.5)", ("--model", "yolo"), "own loss", paper=below),
        Cell("SSD (hard negative mining 3:1)", ("--model", "ssd"), "own loss",
             paper=PaperRow(-1, f"{FOCAL_PAPER}: best OHEM 3.2 AP below focal loss")),
        Cell("RetinaNet (focal, MaxIoU)", FOCAL_SL1, "own loss"),
        Cell("YOLO head, focal + GIoU", ("--model", "yolo", "--cls-loss", "focal", "--reg-loss", "giou"),
             "focal + GIoU"),
        # separates the two changes of the row above: focal class term, YOLO's own L2 box loss
        Cell("YOLO head, focal + L2 (own box loss)", ("--model", "yolo", "--cls-loss", "focal"), "focal + GIoU"),
        Cell("SSD head, softmax focal + GIoU", ("--model", "ssd", "--cls-loss", "softmax_focal", "--reg-loss", "giou",
                                               "--neg-pos-ratio", "all"), "focal + GIoU"),
        Cell("RetinaNet, focal + GIoU", (*RETINANET, "--reg-loss", "giou"), "focal + GIoU",
             paper=PaperRow(None, "GIoU paper: GIoU loss above SmoothL1 for detectors trained with it")),
    ])


def balance_cells(alwa_intervals: tuple[int, ...]) -> list[Cell]:
    base = (*RETINANET, "--reg-loss", "smooth_l1")
    c_main = str(alwa_intervals[1])
    return _compared_with("focal", [
        Cell("CE (BCE)", (*base, "--cls-loss", "bce"), "gradient ratio",
             paper=PaperRow(-1, f"{FOCAL_PAPER}: CE (alpha-balanced) below focal loss")),
        Cell("focal", FOCAL_SL1, "gradient ratio"),
        Cell("aLRP (GIoU) + SB", ("--model", "retinanet", "--cls-loss", "alrp", "--assigner", "maxiou"),
             "gradient ratio", paper=PaperRow(1, f"{ALRP}: aLRP + SB above focal loss")),
        Cell("focal + ALWA_1", (*base, "--weighting", "alwa1", "--alwa-interval", c_main), "ALWA windows"),
        Cell("focal + ALWA_2", (*base, "--weighting", "alwa2", "--alwa-interval", c_main), "ALWA windows"),
    ])


STUDIES = {s.name: s for s in (
    Study("weights", "Fixed loss weights x regression loss, SGD (ALWA paper, Table 1 protocol, thinned)",
          weights_cells, "SmoothL1 1:1", SGD),
    Study("alwa", "Fixed weights vs ALWA_1 / ALWA_2, window C and initial weight, SGD (ALWA paper, Tables 2, 7, 8)",
          alwa_cells, "SmoothL1 fixed 1:1", SGD),
    Study("ranking", "Focal, AP Loss and aLRP Loss ablation (aLRP paper, Table 2)", ranking_cells,
          "focal + SmoothL1"),
    Study("families", "Three imbalance strategies: YOLO v1 loss, SSD hard negative mining, RetinaNet focal loss",
          families_cells, "RetinaNet (focal, MaxIoU)"),
    Study("balance", "Negative/positive gradient ratio (aLRP Fig. 4) and per-window loss statistics "
          "(ALWA Figs. 3, 6)", balance_cells, "focal"),
)}
