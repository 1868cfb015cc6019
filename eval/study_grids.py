"""The loss studies as grids of ``python -m minidet.train`` flag sets, and the budgets they run at.

A study is a list of cells; every cell is trained once per seed with the budget's flags followed
by the cell's own flags, so all cells of a study share one schedule. Nothing is tuned per cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Cell:
    """One row of a study table: a label, its group (table section / plot series) and its flags."""

    name: str
    flags: tuple[str, ...]
    group: str = ""
    ref: str = ""  # the cell this one is compared with, seed by seed (ΔAP column)


@dataclass(frozen=True)
class Budget:
    """Flags shared by every run of a study at this budget, and the seeds of each cell."""

    name: str
    flags: tuple[str, ...]
    seeds: tuple[int, ...]
    note: str
    alwa_intervals: tuple[int, ...] = (20, 100, 200, 500)
    extra: dict = field(default_factory=dict)


# Every run: evaluation only after the last epoch (so best.pt holds the final EMA weights), the
# diagnostics on (grad ratio, score/IoU correlation), one log record per iteration (window plots).
COMMON = ("--quiet", "--diagnostics", "--log-interval", "1")

CPU_FLAGS = ("--shapes-images", "1000", "--img-size", "128", "--epochs", "5", "--batch-size", "16",
             "--warmup-iters", "50", "--workers", "1")

BUDGETS = {
    "quick": Budget("quick", ("--shapes-images", "48", "--img-size", "64", "--epochs", "2", "--batch-size", "8",
                              "--warmup-iters", "4", "--workers", "0"), seeds=(0, 1),
                    note="smoke check: 48 shapes images at 64 px, 2 epochs (12 iterations); the numbers mean nothing",
                    alwa_intervals=(2, 4, 6, 8)),
    "cpu": Budget("cpu", CPU_FLAGS, seeds=(0, 1),
                  note="1000 shapes images at 128 px, 5 epochs (315 iterations of 16 images), tiny backbone, "
                       "AdamW (lr 0.003, weight decay 0.05, the train defaults), 2 seeds"),
    # the papers' optimizer: SGD scales each branch's step with its loss weight, AdamW does not
    "cpu-sgd": Budget("cpu-sgd", (*CPU_FLAGS, "--optimizer", "sgd", "--lr", "0.06", "--weight-decay", "0.0001"),
                      seeds=(0, 1),
                      note="as `cpu` but SGD (momentum 0.9, lr 0.06, weight decay 1e-4; lr the best of 0.01 / 0.03 / "
                           "0.06 for the focal + SmoothL1 baseline, seed 0), 2 seeds"),
    "gpu": Budget("gpu", ("--backbone", "resnet50", "--shapes-images", "20000", "--img-size", "512", "--epochs", "12",
                          "--batch-size", "16", "--warmup-iters", "500", "--workers", "8", "--amp"), seeds=(0, 1, 2),
                  note="20000 shapes images at 512 px, 12 epochs, ResNet-50 + FPN, AMP, 3 seeds"),
}

REG_LOSSES = {"L1": "l1", "SmoothL1": "smooth_l1", "CIoU": "ciou"}
# the ALWA paper's Table 1 protocol: (cls, reg) weights
WEIGHT_PAIRS = ((1, 1), (0.25, 0.25), (0.25, 0.5), (0.5, 0.5), (0.5, 0.75), (0.75, 0.75), (1.5, 1.5), (2, 2))
# RetinaNet as in the papers: focal loss, MaxIoU (0.5 / 0.4) with 9 anchors per location
RETINANET = ("--model", "retinanet", "--assigner", "maxiou")
FOCAL_SL1 = (*RETINANET, "--reg-loss", "smooth_l1", "--loss-weights", "1", "1")  # shared by several studies


def _w(x: float) -> str:
    return f"{x:g}"


def _compared_with(ref: str, cells: list[Cell]) -> list[Cell]:
    return [replace(c, ref=c.ref or ref) for c in cells]


def weights_study(budget: Budget) -> list[Cell]:
    return [Cell(f"{label} {_w(c)}:{_w(r)}", (*RETINANET, "--reg-loss", reg, "--loss-weights", _w(c), _w(r)), label,
                 f"{label} 1:1") for label, reg in REG_LOSSES.items() for c, r in WEIGHT_PAIRS]


def alwa_study(budget: Budget) -> list[Cell]:
    c_main = str(budget.alwa_intervals[1])  # the paper's C = 100 (smaller for the quick budget)
    cells = []
    for label, reg in REG_LOSSES.items():
        base = (*RETINANET, "--reg-loss", reg)
        ref = f"{label} fixed 1:1"
        cells.append(Cell(ref, (*base, "--loss-weights", "1", "1"), "Table 2: scheme", ref))
        cells += [Cell(f"{label} ALWA_{v}", (*base, "--weighting", f"alwa{v}", "--alwa-interval", c_main),
                       "Table 2: scheme", ref) for v in (1, 2)]
    base = (*RETINANET, "--reg-loss", "smooth_l1", "--weighting", "alwa2")
    cells += [Cell(f"SmoothL1 ALWA_2 C={c}", (*base, "--alwa-interval", str(c)), "Table 7: window C",
                   "SmoothL1 fixed 1:1") for c in budget.alwa_intervals]
    cells += [Cell(f"SmoothL1 ALWA_2 init {_w(w)}:{_w(w)}",
                   (*base, "--alwa-interval", c_main, *(("--loss-weights", _w(w), _w(w)) if w != 1 else ())),
                   "Table 8: initial weight", "SmoothL1 fixed 1:1") for w in (0.5, 1, 2)]
    return cells


def ranking_study(budget: Budget) -> list[Cell]:
    alrp = ("--model", "retinanet", "--cls-loss", "alrp")
    return _compared_with("focal + SmoothL1", [
        Cell("focal + SmoothL1", FOCAL_SL1, "MaxIoU"),
        Cell("AP Loss + SmoothL1", (*RETINANET, "--cls-loss", "ap", "--reg-loss", "smooth_l1"), "MaxIoU"),
        Cell("aLRP (IoU), no SB", (*alrp, "--assigner", "maxiou", "--alrp-iou", "iou", "--weighting", "fixed"), "MaxIoU"),
        Cell("aLRP (IoU) + SB", (*alrp, "--assigner", "maxiou", "--alrp-iou", "iou"), "MaxIoU"),
        Cell("aLRP (GIoU), no SB", (*alrp, "--assigner", "maxiou", "--weighting", "fixed"), "MaxIoU"),
        Cell("aLRP (GIoU) + SB", (*alrp, "--assigner", "maxiou"), "MaxIoU"),
        Cell("focal + SmoothL1, ATSS", ("--model", "retinanet", "--assigner", "atss", "--reg-loss", "smooth_l1"), "ATSS"),
        Cell("aLRP (GIoU) + SB, ATSS", (*alrp, "--assigner", "atss"), "ATSS"),
    ])


def families_study(budget: Budget) -> list[Cell]:
    return _compared_with("RetinaNet (focal, MaxIoU)", [
        Cell("YOLO v1 loss (lambda_noobj 0.5)", ("--model", "yolo"), "own loss"),
        Cell("SSD (hard negative mining 3:1)", ("--model", "ssd"), "own loss"),
        Cell("RetinaNet (focal, MaxIoU)", FOCAL_SL1, "own loss"),
        Cell("YOLO head, focal + GIoU", ("--model", "yolo", "--cls-loss", "focal", "--reg-loss", "giou"),
             "focal + GIoU"),
        # separates the two changes of the row above: focal class term, YOLO's own L2 box loss
        Cell("YOLO head, focal + L2 (own box loss)", ("--model", "yolo", "--cls-loss", "focal"), "focal + GIoU"),
        Cell("SSD head, softmax focal + GIoU", ("--model", "ssd", "--cls-loss", "softmax_focal", "--reg-loss", "giou",
                                               "--neg-pos-ratio", "all"), "focal + GIoU"),
        Cell("RetinaNet, focal + GIoU", (*RETINANET, "--reg-loss", "giou"), "focal + GIoU"),
    ])


def balance_study(budget: Budget) -> list[Cell]:
    base = (*RETINANET, "--reg-loss", "smooth_l1")
    c_main = str(budget.alwa_intervals[1])
    return _compared_with("focal", [
        Cell("CE (BCE)", (*base, "--cls-loss", "bce"), "gradient ratio"),
        Cell("focal", FOCAL_SL1, "gradient ratio"),
        Cell("aLRP (GIoU) + SB", ("--model", "retinanet", "--cls-loss", "alrp", "--assigner", "maxiou"),
             "gradient ratio"),
        Cell("focal + ALWA_1", (*base, "--weighting", "alwa1", "--alwa-interval", c_main), "ALWA windows"),
        Cell("focal + ALWA_2", (*base, "--weighting", "alwa2", "--alwa-interval", c_main), "ALWA windows"),
    ])


STUDIES = {"weights": weights_study, "alwa": alwa_study, "ranking": ranking_study, "families": families_study,
           "balance": balance_study}

TITLES = {
    "weights": "Fixed loss weights x regression loss (ALWA paper, Table 1 protocol)",
    "alwa": "Fixed weights vs ALWA_1 / ALWA_2, window C and initial weight (ALWA paper, Tables 2, 7, 8)",
    "ranking": "Focal, AP Loss and aLRP Loss ablation (aLRP paper, Table 2)",
    "families": "Three imbalance strategies: YOLO v1 loss, SSD hard negative mining, RetinaNet focal loss",
    "balance": "Negative/positive gradient ratio (aLRP Fig. 4) and per-window loss statistics (ALWA Figs. 3, 6)",
}
