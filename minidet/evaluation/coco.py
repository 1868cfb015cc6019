"""COCO bbox evaluation written in numpy, with pycocotools' COCOeval semantics: the same 12
numbers ``COCOeval.summarize()`` prints (AP@[.5:.95], AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l).

Evaluation is per (image, category): a crowd gt (``iscrowd: 1``) only affects detections of its
own category; a gt is ignored when it is a crowd or its ``area`` field (the annotation's own
area, e.g. the segmentation area in real COCO) lies outside the area range; a detection's area
is w * h of its bbox. A gt without an ``area`` field gets w * h of its bbox here (pycocotools
needs the field).

Entry points:
- ``coco_evaluate(gt, results)``: a COCO gt dict or JSON path and a results list or JSON path
  (``backend="pycocotools"`` / ``"faster-coco-eval"`` validates them the same way, then hands
  them to those tools);
- ``load_coco_boxes`` + ``evaluate_boxes``: the same, returning COCOeval's precision / recall
  arrays too (what ``minidet.evaluation.detector_eval`` uses to evaluate a model on a dataset);
- ``COCOEvaluator``: in-memory predictions and targets, ``update()`` batch by batch, then
  ``compute()``.

Results are validated before evaluation: a result whose image id or category id is not in the
gt is a ``ResultsError`` naming the entry (pycocotools asserts on the first and silently skips
the second).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .matching import Boxes, match

__all__ = ["COCOEvaluator", "coco_evaluate", "STAT_NAMES", "evaluate_boxes", "format_table", "load_coco_boxes",
           "ResultsError"]

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RNGS = np.array([[0, 1e5**2], [0, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)


class ResultsError(ValueError):
    """Invalid detection results or ground truth: the message names the entry."""


def accumulate(dts: Boxes, gts: Boxes, n_categories: int, m) -> tuple[np.ndarray, np.ndarray]:
    """precision [T, R, K, A, M] and recall [T, K, A, M] as COCOeval.accumulate (-1: no gts)."""
    n_t, n_a, n_m, n_r = len(IOU_THRS), len(AREA_RNGS), len(MAX_DETS), len(REC_THRS)
    precision = -np.ones((n_t, n_r, n_categories, n_a, n_m))
    recall = -np.ones((n_t, n_categories, n_a, n_m))
    # detections in the order pycocotools concatenates them (category, image, rank), then a
    # stable sort by decreasing score; a max-detections filter keeps that order
    base = np.lexsort((m.dt_rank, dts.image, dts.category))
    starts = np.searchsorted(dts.category[base], np.arange(n_categories + 1))
    npig_all = np.stack([np.bincount(gts.category[~m.gt_ignore[a]], minlength=n_categories) for a in range(n_a)])
    for k in range(n_categories):
        if not npig_all[:, k].any():
            continue
        idx_k = base[starts[k] : starts[k + 1]]
        idx_k = idx_k[np.argsort(-dts.score[idx_k], kind="mergesort")]
        rank_k = m.dt_rank[idx_k]
        for a in range(n_a):
            npig = npig_all[a, k]
            if npig == 0:
                continue
            matched = m.dt_matched[a][:, idx_k] >= 0  # [T, n]
            ignored = m.dt_ignore[a][:, idx_k]
            for mi, max_det in enumerate(MAX_DETS):
                keep = rank_k < max_det
                dtm, dt_ig = matched[:, keep], ignored[:, keep]
                nd = dtm.shape[1]
                if nd == 0:
                    recall[:, k, a, mi] = 0
                    precision[:, :, k, a, mi] = 0
                    continue
                tp = np.cumsum(dtm & ~dt_ig, axis=1).astype(float)
                fp = np.cumsum(~dtm & ~dt_ig, axis=1).astype(float)
                rc = tp / npig
                pr = tp / (fp + tp + np.spacing(1))
                recall[:, k, a, mi] = rc[:, -1]
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                q = np.zeros((n_t, n_r))
                for t in range(n_t):
                    inds = np.searchsorted(rc[t], REC_THRS, side="left")
                    valid = inds < nd
                    q[t, valid] = pr[t, inds[valid]]
                precision[:, :, k, a, mi] = q
    return precision, recall


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """The 12 COCOeval.summarize() numbers from accumulate()'s arrays."""

    def mean(x: np.ndarray) -> float:
        x = x[x > -1]
        return float(np.mean(x)) if x.size else -1.0

    def ap(iou: float | None = None, area: int = 0, m: int = 2) -> float:
        p = precision if iou is None else precision[np.where(iou == IOU_THRS)[0]]
        return mean(p[:, :, :, area, m])

    def ar(area: int = 0, m: int = 2) -> float:
        return mean(recall[:, :, area, m])

    values = [ap(), ap(0.5), ap(0.75), ap(area=1), ap(area=2), ap(area=3),
              ar(m=0), ar(m=1), ar(), ar(1), ar(2), ar(3)]
    return dict(zip(STAT_NAMES, values, strict=True))


def evaluate_boxes(dts: Boxes, gts: Boxes, n_categories: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Match, accumulate and summarise -> (12 stats, precision, recall)."""
    m = match(dts, gts, n_categories, IOU_THRS, AREA_RNGS, MAX_DETS[-1])
    precision, recall = accumulate(dts, gts, n_categories, m)
    return summarize(precision, recall), precision, recall


def ap_per_iou(precision: np.ndarray) -> dict[str, float]:
    """AP at each single IoU threshold ("0.50" ... "0.95"; all areas, 100 detections), the way
    COCOeval's AP50 / AP75 are computed; -1 where no category has gts."""
    out = {}
    for t, thr in enumerate(IOU_THRS):
        v = precision[t, :, :, 0, 2]
        v = v[v > -1]
        out[f"{thr:.2f}"] = float(v.mean()) if v.size else -1.0
    return out


def per_class_ap(precision: np.ndarray, iou: float | None = None) -> np.ndarray:
    """AP@[.5:.95] (or AP at the single IoU threshold ``iou``) per category (all areas, 100
    detections), as COCOeval.summarize averages its precision array; nan where a category has no gts."""
    p = precision[:, :, :, 0, 2]
    if iou is not None:
        p = p[np.isclose(IOU_THRS, iou)]
    out = np.full(p.shape[2], np.nan)
    for k in range(p.shape[2]):
        v = p[:, :, k]
        v = v[v > -1]
        if v.size:
            out[k] = v.mean()
    return out


# --------------------------------------------------------------------------- file inputs


def _load(obj, what: str):
    if isinstance(obj, str | Path):
        path = Path(obj)
        if not path.is_file():
            raise ResultsError(f"{what} file not found: {path}")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ResultsError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    return obj


def _gt_boxes(gt: dict, img_index: dict, cat_index: dict) -> Boxes:
    anns = gt.get("annotations", [])
    if not isinstance(anns, list):
        raise ResultsError("ground truth 'annotations' must be a list")
    try:
        imgs = np.array([img_index[a["image_id"]] for a in anns], np.int64)
        cats = np.array([cat_index[a["category_id"]] for a in anns], np.int64)
        boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(len(anns), 4)
    except (KeyError, TypeError, ValueError) as err:
        for a in anns:
            if not isinstance(a, dict) or a.get("image_id") not in img_index or a.get("category_id") not in cat_index:
                raise ResultsError(f"ground truth annotation {a.get('id') if isinstance(a, dict) else a!r}: unknown "
                                   f"image_id or category_id, or not an object") from None
        raise ResultsError(f"ground truth annotations: every 'bbox' must be [x, y, width, height] ({err})") from None
    areas = np.array([a.get("area", np.nan) for a in anns], np.float64)
    areas = np.where(np.isnan(areas), boxes[:, 2] * boxes[:, 3], areas)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
    return Boxes(imgs, cats, boxes, areas, crowd=crowd)


def _check_result(i: int, r, img_index: dict, cat_index: dict) -> None:
    """Raise a ResultsError naming entry i if it is malformed (the slow, per-entry check)."""
    if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= r.keys():
        raise ResultsError(f"result entry {i}: expected an object with image_id, category_id, bbox and score, got {r!r}")
    if r["image_id"] not in img_index:
        raise ResultsError(f"result entry {i}: image_id {r['image_id']!r} is not in the ground truth")
    if r["category_id"] not in cat_index:
        raise ResultsError(f"result entry {i}: category_id {r['category_id']!r} is not in the ground truth "
                           f"categories {sorted(cat_index)}")
    bbox, score = r["bbox"], r["score"]
    if not (isinstance(bbox, list | tuple) and len(bbox) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)):
        raise ResultsError(f"result entry {i}: bbox must be [x, y, width, height], got {bbox!r}")
    if not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
        raise ResultsError(f"result entry {i}: bbox {bbox} needs finite values and width, height >= 0")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise ResultsError(f"result entry {i}: score must be a finite number, got {score!r}")


def _result_boxes(results, img_index: dict, cat_index: dict) -> Boxes:
    """Results list -> Boxes, validated in bulk; the first bad entry is reported by index."""
    if not isinstance(results, list):
        raise ResultsError("results must be a JSON list of {image_id, category_id, bbox, score} objects, "
                           f"got {type(results).__name__}")
    try:
        imgs = np.array([img_index[r["image_id"]] for r in results], np.int64)
        cats = np.array([cat_index[r["category_id"]] for r in results], np.int64)
        boxes = np.array([r["bbox"] for r in results], np.float64).reshape(len(results), 4)
        scores = np.array([r["score"] for r in results], np.float64).reshape(len(results))
        ok = (np.isfinite(boxes).all(1) & (boxes[:, 2] >= 0) & (boxes[:, 3] >= 0) & np.isfinite(scores))
        bad = None if ok.all() else int(np.argmin(ok))
    except (KeyError, TypeError, ValueError, IndexError):
        bad = 0
    if bad is not None:
        for i in range(bad, len(results)):
            _check_result(i, results[i], img_index, cat_index)
        raise ResultsError("results could not be read as numbers (image_id, category_id, bbox, score)")
    return Boxes(imgs, cats, boxes, boxes[:, 2] * boxes[:, 3], score=scores)


def load_coco_boxes(gt: dict | str | Path, results: list | str | Path) -> tuple[Boxes, Boxes, int]:
    """Read and validate a COCO gt and a results list -> (detections, gts, number of categories)."""
    gt = _load(gt, "ground truth")
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list) or not isinstance(gt.get("categories"), list):
        raise ResultsError("ground truth must be a COCO dict with 'images', 'annotations' and 'categories'")
    img_ids = sorted({im["id"] for im in gt["images"]})
    cat_ids = sorted({c["id"] for c in gt["categories"]})
    img_index = {v: i for i, v in enumerate(img_ids)}
    cat_index = {v: i for i, v in enumerate(cat_ids)}
    gts = _gt_boxes(gt, img_index, cat_index)
    dts = _result_boxes(_load(results, "results"), img_index, cat_index)
    return dts, gts, len(cat_ids)


def coco_evaluate(gt: dict | str | Path, results: list | str | Path, backend: str = "minidet") -> dict[str, float]:
    """The 12 COCO bbox stats of ``results`` against ``gt`` (dicts / lists or JSON paths).
    Every backend first validates the inputs (``load_coco_boxes``: a clear ``ResultsError`` for
    an unknown image or category id or a malformed entry)."""
    if backend != "minidet":
        return _external(gt, results, backend)
    dts, gts, n_categories = load_coco_boxes(gt, results)
    return evaluate_boxes(dts, gts, n_categories)[0]


def _external(gt, results, backend: str) -> dict[str, float]:
    """Validate the inputs as minidet does, then run pycocotools or faster-coco-eval on them."""
    import contextlib
    import io
    import tempfile

    try:
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        elif backend == "faster-coco-eval":
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval
        else:
            raise ResultsError(f"unknown backend {backend!r}; choose minidet, pycocotools or faster-coco-eval")
    except ImportError:
        raise ResultsError(f"the {backend} backend is not installed: pip install {backend}") from None
    gt = _load(gt, "ground truth")
    results = _load(results, "results")
    load_coco_boxes(gt, results)  # a ResultsError naming the entry instead of the tool's assertion
    results = [dict(r) for r in results]  # loadRes writes into the entries
    with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gt.json"
        path.write_text(json.dumps(gt))
        coco_gt = COCO(str(path))
        coco_dt = coco_gt.loadRes(results) if results else COCO()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(STAT_NAMES, (float(s) for s in ev.stats[:12]), strict=True))


# ------------------------------------------------------------------------- in-memory use


class COCOEvaluator:
    """Accumulate predictions and targets batch by batch, then compute the COCO stats.

    predictions: [{"boxes" [K, 4] xyxy, "scores" [K], "labels" [K]}]; targets: [{"boxes" [N, 4]
    xyxy, "labels" [N], optional "areas" [N] (the gts' areas for the small / medium / large
    ranges; default: the box areas), optional "ignore_boxes" [M, 4] with optional
    "ignore_labels" [M]}], both in the same (original image) pixels; labels are 0..C-1 and
    images are numbered in the order seen.

    Ignore regions are pycocotools crowd gts: IoU = intersection / detection area, never a false
    negative, may absorb many detections. One with label k (``ignore_labels``, as COCO crowd
    annotations and VOC difficult objects have) only affects detections of class k, as in
    pycocotools; one without a label (no "ignore_labels", or a label < 0) applies to every class.
    Per image and class the gts come first, then the ignore regions, each in the given order
    (pycocotools uses the annotation order: the two agree unless ignored gts tie exactly in IoU).

    For a detector on a dataset, ``minidet.evaluation.detector_eval`` evaluates against the
    dataset's own annotation file instead.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self._dt: list[tuple] = []
        self._gt: list[tuple] = []
        self.n_images = 0
        self.precision: np.ndarray | None = None

    def update(self, predictions: Sequence[dict], targets: Sequence[dict]) -> None:
        """Add one batch: predictions[i] and targets[i] belong to the same image."""
        for p, t in zip(predictions, targets, strict=True):
            i = self.n_images
            self.n_images += 1
            pb = _np(p["boxes"]).reshape(-1, 4)
            self._dt.append((np.full(len(pb), i), _np(p["labels"]).astype(np.int64).reshape(-1), _xywh(pb),
                             _np(p["scores"]).reshape(-1)))
            gb = _xywh(_np(t["boxes"]).reshape(-1, 4))
            areas = _np(t["areas"]).reshape(-1) if t.get("areas") is not None else gb[:, 2] * gb[:, 3]
            if len(areas) != len(gb):
                raise ValueError(f"image {i}: {len(gb)} boxes but {len(areas)} areas")
            self._gt.append((np.full(len(gb), i), _np(t["labels"]).astype(np.int64).reshape(-1), gb,
                             np.zeros(len(gb), bool), areas))
            ib = _np(t.get("ignore_boxes", np.zeros((0, 4)))).reshape(-1, 4)
            ilab = t.get("ignore_labels")
            ilab = np.full(len(ib), -1, np.int64) if ilab is None else _np(ilab).astype(np.int64).reshape(-1)
            if len(ilab) != len(ib):
                raise ValueError(f"image {i}: {len(ib)} ignore boxes but {len(ilab)} ignore labels")
            for k in range(self.num_classes) if len(ib) else ():
                sel = (ilab == k) | (ilab < 0)  # unlabelled ignore regions apply to every class
                if sel.any():
                    ixywh = _xywh(ib[sel])
                    self._gt.append((np.full(len(ixywh), i), np.full(len(ixywh), k), ixywh,
                                     np.ones(len(ixywh), bool), ixywh[:, 2] * ixywh[:, 3]))

    def boxes(self) -> tuple[Boxes, Boxes]:
        """Everything seen so far as (detections, gts)."""
        def cat(parts, j, shape, dtype):
            return np.concatenate([p[j] for p in parts]) if parts else np.zeros(shape, dtype)

        dxywh, gxywh = cat(self._dt, 2, (0, 4), float), cat(self._gt, 2, (0, 4), float)
        dts = Boxes(cat(self._dt, 0, 0, np.int64), cat(self._dt, 1, 0, np.int64), dxywh,
                    dxywh[:, 2] * dxywh[:, 3], score=cat(self._dt, 3, 0, float))
        gts = Boxes(cat(self._gt, 0, 0, np.int64), cat(self._gt, 1, 0, np.int64), gxywh,
                    cat(self._gt, 4, 0, float), crowd=cat(self._gt, 3, 0, bool))
        return dts, gts

    def compute(self) -> dict[str, float]:
        """The 12 COCO stats of everything seen so far."""
        stats, self.precision, self.recall = evaluate_boxes(*self.boxes(), self.num_classes)
        return stats

    def ap_per_iou(self) -> dict[str, float]:
        """AP at each IoU threshold 0.50:0.05:0.95 after compute() ({"0.90": AP90, ...})."""
        return ap_per_iou(self.precision)

    def per_class(self) -> dict[str, float]:
        """AP per class name after compute() (nan: no gts of that class)."""
        return dict(zip(self.class_names, per_class_ap(self.precision).tolist(), strict=True))


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64) if hasattr(x, "detach") else np.asarray(x, np.float64)


def _xywh(xyxy: np.ndarray) -> np.ndarray:
    out = xyxy.astype(np.float64).copy()
    out[:, 2:] -= out[:, :2]
    return out


def format_table(stats: dict[str, float]) -> str:
    """The 12 lines COCOeval.summarize() prints."""
    lines = []
    spec = [("Average Precision", "AP", "0.50:0.95", "all", 100), ("Average Precision", "AP", "0.50", "all", 100),
            ("Average Precision", "AP", "0.75", "all", 100), ("Average Precision", "AP", "0.50:0.95", "small", 100),
            ("Average Precision", "AP", "0.50:0.95", "medium", 100), ("Average Precision", "AP", "0.50:0.95", "large", 100),
            ("Average Recall", "AR", "0.50:0.95", "all", 1), ("Average Recall", "AR", "0.50:0.95", "all", 10),
            ("Average Recall", "AR", "0.50:0.95", "all", 100), ("Average Recall", "AR", "0.50:0.95", "small", 100),
            ("Average Recall", "AR", "0.50:0.95", "medium", 100), ("Average Recall", "AR", "0.50:0.95", "large", 100)]
    for (title, short, iou, area, md), key in zip(spec, STAT_NAMES, strict=True):
        lines.append(f" {title:<18} ({short}) @[ IoU={iou:<9} | area={area:>6} | maxDets={md:>3} ] = {stats[key]:.3f}")
    return "\n".join(lines)
