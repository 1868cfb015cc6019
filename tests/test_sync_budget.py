"""Host syncs of a training step's loss path, and the accelerator forms of the hot paths.

Budget: the loss / criterion / weighting path of one training step (``model.loss(images,
targets)`` and its backward) may hold at most ONE host sync per step, and that one is the
trainer's finiteness check of the loss — so none here. Diagnostics may sync.

How syncs are counted:

- with CUDA, the step runs on the GPU under ``torch.cuda.set_sync_debug_mode("warn")`` and every
  "synchronizing CUDA operation" warning is attributed to the source line that issued it;
- without CUDA (the CPU test machine), the step runs on the CPU with the accelerator forms of the
  hot paths forced (``minidet.boxes.device_paths(True)``), and ``SyncCounter`` counts the
  Python-level operations that sync when the tensor is on a GPU: ``item``, ``bool`` / ``float`` /
  ``int`` / ``index`` of a tensor, ``tolist`` / ``cpu`` / ``numpy``, ``nonzero`` / ``argwhere`` /
  ``masked_select`` / ``unique`` / ``bincount`` / one-argument ``where``, boolean-mask indexing
  (and boolean-mask assignment of a tensor value), ``repeat_interleave`` without
  ``output_size``, ``one_hot`` without ``num_classes``, ``torch.equal`` / ``allclose``, tensors
  created from Python data with a ``device`` (a blocking host-to-device copy) and blocking
  ``.to(device)`` of the CPU inputs (the targets' labels). The labels are CPU tensors, as the
  trainer gives them: reading them in ``Criterion.check_labels`` costs no device sync and is not
  counted. What the mock cannot see: syncs inside C++ (e.g. the backward of a boolean-mask
  gather, which converts the mask with nonzero again) — the CUDA run does.

Every sync found must be documented in ``KNOWN`` (why it is there), or the test fails; syncs in
boxes.py, nms.py, losses/, weighting.py and Criterion.forward / check_labels fail it outright; and
the total per step of each family must equal its ``EXPECTED`` count — zero for all of them: the
assigners, coders and criterion components compute over all priors with the masks as weights
instead of gathering the positives. ``python tests/test_sync_budget.py`` prints the count per
family and site.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvo
from conftest import random_boxes

import minidet
import minidet.nms as nms_module
from minidet.assigners import ATSSAssigner, MaxIoUAssigner, SSDMatcher, YOLOGridAssigner
from minidet.boxes import box_iou, device_paths, use_device_path
from minidet.coders import SSDCoder
from minidet.losses import sigmoid_focal_loss, sigmoid_focal_loss_from_labels
from minidet.models import build_model
from minidet.nms import batched_nms, nms
from minidet.weighting import ALWA, FixedWeights, SelfBalance, UncertaintyWeighting

ROOT = Path(minidet.__file__).resolve().parent
CUDA = torch.cuda.is_available()

# Sync sites outside the files of this change, each with the reason it is there (and the way out).
# None of them is on the path of a counted family (EXPECTED below): they are what remains elsewhere.
KNOWN = {
    ("criterion.py", "_positive_parts"):
        "one nonzero of the positive mask (P is data-dependent): only for the aLRP loss, whose localisation "
        "errors are one per positive in flat order (alrp_loss itself reads P back as well: a ranking over the "
        "positives has data-dependent sizes), and for the diagnostics, which may sync",
}

# Host syncs per training step of each family (model.loss + backward), all sites together: the
# trainer's finiteness check is the only one a step may hold, and it is outside this path.
EXPECTED = {
    "retinanet-focal-maxiou": 0,
    "retinanet-atss-giou-alwa2": 0,
    "retinanet-focal-self_balance": 0,
    "retinanet-uncertainty": 0,
    "retinanet-crowd-regions": 0,
    "ssd": 0,
    "yolo": 0,
    "yolo-crowd-regions": 0,
}


def _mine(site: tuple[str, str]) -> bool:
    """Sites in the files of this change (their sync budget is zero)."""
    file, qual = site
    return (file in ("boxes.py", "nms.py", "weighting.py") or file.startswith("losses/")
            or (file == "criterion.py" and qual.startswith(("Criterion.forward", "Criterion.check_labels"))))


# ----------------------------------------------------------------------------------- counting


def _is_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


def _names_device(args, kwargs) -> bool:
    """Whether a ``.to(...)`` call names a device (a copy to the GPU there), not only a dtype."""
    return kwargs.get("device") is not None or any(isinstance(a, str | torch.device | torch.Tensor) for a in args)


def _frame_site(frame) -> tuple[str, str, int] | None:
    """(file relative to minidet/, qualified function name, line) of the innermost minidet frame."""
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(ROOT):
            return str(path.relative_to(ROOT)), frame.f_code.co_qualname, frame.f_lineno
        frame = frame.f_back
    return None


class SyncCounter:
    """Counts the Python-level operations that would sync with CUDA tensors (module docstring)."""

    def __init__(self, host_inputs=()) -> None:
        self.hits: collections.Counter = collections.Counter()
        self.host_inputs = {id(t) for t in host_inputs}
        self._saved: list = []

    def _hit(self, what: str) -> None:
        site = _frame_site(sys._getframe(2))
        if site is None:
            site = ("<torch>", "backward", 0)  # no minidet frame: the autograd engine
        if site[:2] == ("criterion.py", "Criterion.check_labels"):
            return  # CPU labels: no device sync
        self.hits[(site[0], site[1], site[2], what)] += 1

    def _patch(self, owner, name: str, when=None) -> None:
        original = getattr(owner, name)
        counter = self

        def wrapper(*args, **kwargs):
            if when is None or when(*args, **kwargs):
                counter._hit(name)
            return original(*args, **kwargs)

        self._saved.append((owner, name, original))
        setattr(owner, name, wrapper)

    def __enter__(self) -> SyncCounter:
        T = torch.Tensor
        for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy", "nonzero",
                     "argwhere", "masked_select", "unique", "unique_consecutive", "bincount"):
            self._patch(T, name)
        for name in ("nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "equal",
                     "allclose"):
            self._patch(torch, name)
        self._patch(torch, "where", lambda *a, **k: len(a) + len(k) == 1)
        self._patch(T, "__getitem__", lambda self_, index: _is_bool_index(index))
        self._patch(T, "__setitem__", lambda self_, index, value: _is_bool_index(index) and isinstance(value, torch.Tensor))
        self._patch(torch, "tensor", lambda *a, **k: k.get("device") is not None)
        self._patch(torch, "as_tensor", lambda *a, **k: k.get("device") is not None)
        self._patch(torch, "repeat_interleave", lambda x, repeats=None, *a, **k:
                    isinstance(repeats, torch.Tensor) and repeats.numel() > 1 and k.get("output_size") is None)
        self._patch(F, "one_hot", lambda x, num_classes=-1: num_classes < 0)
        inputs = self.host_inputs
        self._patch(T, "to", lambda self_, *a, **k: id(self_) in inputs and _names_device(a, k)
                    and not k.get("non_blocking", False) and True not in a[1:])
        self._patch(T, "cuda", lambda self_, *a, **k: id(self_) in inputs and not k.get("non_blocking", False))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def by_site(self) -> dict[tuple[str, str], int]:
        out: collections.Counter = collections.Counter()
        for (file, qual, _line, _what), n in self.hits.items():
            out[(file, qual)] += n
        return dict(out)


@contextlib.contextmanager
def cuda_sync_sites():
    """Collect (file, function) of every synchronizing CUDA operation inside the block: the sync
    debug mode warns, and the warning hook walks the Python stack to the minidet frame that
    issued it (none: the autograd engine, i.e. inside ``backward()``)."""
    sites: collections.Counter = collections.Counter()

    def hook(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            site = _frame_site(sys._getframe(1))
            sites[site[:2] if site is not None else ("<torch>", "backward")] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            torch.cuda.set_sync_debug_mode(0)


# ------------------------------------------------------------------------------- the families

FAMILIES = {
    "retinanet-focal-maxiou": ("retinanet", {}),
    "retinanet-atss-giou-alwa2": ("retinanet", {"assigner": "atss", "reg_loss": "giou", "weighting": "alwa2",
                                                "alwa_interval": 2}),
    "retinanet-focal-self_balance": ("retinanet", {"weighting": "self_balance", "sb_period": 2}),
    "retinanet-uncertainty": ("retinanet", {"weighting": "uncertainty"}),
    "retinanet-crowd-regions": ("retinanet", {}),  # with ignore regions (COCO crowd): ignore_inside_regions
    "ssd": ("ssd", {}),
    "yolo": ("yolo", {}),
    "yolo-crowd-regions": ("yolo", {}),
}
CROWD = ("retinanet-crowd-regions", "yolo-crowd-regions")
STEPS = 3  # counted steps (after one warm-up step): an ALWA window and an SB period close inside


def _batch(device: torch.device, size: int = 96, batch: int = 2, crowd: bool = False):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g).to(device)
    targets = []
    for i in range(batch):
        n = 3 + i
        xy = torch.rand(n, 2, generator=g) * (size - 40)
        wh = torch.rand(n, 2, generator=g) * 30 + 8
        # one crowd region per image (a different count per image: padding) when asked
        ignore = torch.tensor([[50.0, 50.0, 90.0, 90.0], [0.0, 60.0, 30.0, 96.0]][: i + 1]) if crowd else torch.zeros(0, 4)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),  # the trainer moves boxes ...
                        "labels": torch.randint(0, 3, (n,), generator=g),  # ... and leaves labels on the CPU
                        "ignore_boxes": ignore.to(device)})
    return images, targets


def count_step_syncs(family: str, device: torch.device) -> dict[tuple[str, str], int]:
    """Sync sites -> count over STEPS training steps of ``family`` (loss + backward)."""
    name, options = FAMILIES[family]
    torch.manual_seed(0)
    model = build_model(name, 3, **options).to(device).train()
    images, targets = _batch(device, crowd=family in CROWD)

    def step():
        out = model.loss(images, targets)
        out["loss"].backward()
        return out

    if device.type == "cuda":
        step()  # warm-up: allocator, cuDNN
        with cuda_sync_sites() as sites:
            for _ in range(STEPS):
                step()
        return dict(sites)
    with device_paths(True):
        step()
        with SyncCounter(host_inputs=[t["labels"] for t in targets]) as counter:
            for _ in range(STEPS):
                step()
    return counter.by_site()


def _modes():
    return ["cpu-mock", "cuda"] if CUDA else ["cpu-mock"]


@pytest.mark.parametrize("mode", _modes())
@pytest.mark.parametrize("family", list(FAMILIES))
def test_loss_step_sync_budget(family, mode):
    device = torch.device("cuda" if mode == "cuda" else "cpu")
    sites = count_step_syncs(family, device)
    mine = {s: n for s, n in sites.items() if _mine(s)}
    assert not mine, f"{family}: host syncs in the loss / criterion / weighting path: {mine}"
    unknown = {s: n for s, n in sites.items() if s not in KNOWN}
    assert not unknown, f"{family}: undocumented host syncs (add them to KNOWN with the reason): {unknown}"
    assert sum(sites.values()) == EXPECTED[family] * STEPS, f"{family}: {sites}"


def test_every_family_has_a_budget():
    assert set(EXPECTED) == set(FAMILIES)


def _in_this_change(site: tuple[str, str]) -> bool:
    """Sites in the assigners, coders and the criterion's own code (not its shared
    forward / check_labels, which test_loss_step_sync_budget holds to zero)."""
    file, qual = site
    return file in ("assigners.py", "coders.py") or (file == "criterion.py" and not _mine(site))


@pytest.mark.parametrize("loss,expected", [("ap", {}), ("alrp", {("criterion.py", "_positive_parts"): 1})])
def test_ranking_criteria_sync_only_where_documented(loss, expected):
    # AP / aLRP rank the positives, a data-dependent size: minidet/losses/ranking.py syncs (not
    # counted here). The criterion around them: AP's regression is masked (no sync); aLRP needs
    # one localisation error per positive, so it gathers the positives once (KNOWN).
    torch.manual_seed(0)
    model = build_model("retinanet", 3, cls_loss=loss).train()
    images, targets = _batch(torch.device("cpu"))
    model.loss(images, targets)["loss"].backward()  # warm-up
    with device_paths(True), SyncCounter(host_inputs=[t["labels"] for t in targets]) as counter:
        for _ in range(STEPS):
            model.loss(images, targets)["loss"].backward()
    ours = {s: n // STEPS for s, n in counter.by_site().items() if _in_this_change(s)}
    assert ours == expected
    assert all(s in KNOWN for s in ours)


def test_assigners_are_sync_free_with_ignore_regions():
    g = torch.Generator().manual_seed(3)
    priors = random_boxes(400, g, scale=120, max_size=40)
    cells = torch.tensor([[x * 16.0, y * 16.0, x * 16.0 + 16, y * 16.0 + 16] for y in range(6) for x in range(8)
                          for _ in range(2)])
    gts = random_boxes(2 * 5, g, scale=100, max_size=40).view(2, 5, 4)
    gts[0, 1] = gts[0, 0]  # identical gts: claim ties
    gts[1, 2, 2:] = gts[1, 2, :2]  # a zero-area gt
    labels = torch.randint(0, 4, (2, 5), generator=g)
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    ignore = (torch.tensor([[[0.0, 0.0, 50.0, 50.0]], [[60.0, 20.0, 120.0, 90.0]]]), torch.ones(2, 1, dtype=torch.bool))
    cases = [(MaxIoUAssigner(), priors), (MaxIoUAssigner(min_pos_iou=0.3), priors), (SSDMatcher(), priors),
             (ATSSAssigner(topk=5), priors), (YOLOGridAssigner(2), cells)]
    with SyncCounter() as counter:
        results = [assigner.assign_batch(p, [p.shape[0]], gts, labels, valid, ignore=ignore) for assigner, p in cases]
    assert not counter.hits, dict(counter.hits)
    assert all(r.ignored.any() and r.positive.any() for r in results)


@pytest.mark.parametrize("name", ["dense-l1", "dense-smooth_l1-stds", "dense-giou", "dense-ciou", "ssd", "ssd-diou",
                                  "ap-l1"])
def test_masked_regression_equals_gathered_regression(name):
    # The accelerator form computes every prior with the positive mask as weights, the CPU form
    # gathers the positives: equal up to float summation order, same gradients; predictions of
    # the other priors get exact zeros even when they are not finite.
    from minidet.anchors import AnchorGenerator, DefaultBoxGenerator
    from minidet.coders import DeltaXYWHCoder
    from minidet.criterion import DenseCriterion, RankingCriterion, SSDCriterion
    from minidet.structures import HeadOutput

    family, reg = (name.split("-") + ["smooth_l1"])[:2]
    if family == "ssd":
        priors, npl = DefaultBoxGenerator(aspect_ratios=[[2], [2]], min_scale=0.2, max_scale=0.6)([(8, 8), (4, 4)], (64, 64))
        make, logits = lambda: SSDCriterion(reg_loss=reg), 4
    else:
        priors, npl = AnchorGenerator(sizes=(16, 32), strides=(8, 16), ratios=(0.5, 1.0, 2.0), scales=(1.0, 1.5))(
            [(8, 8), (4, 4)])
        coder = DeltaXYWHCoder(means=(0.01, -0.02, 0.0, 0.03), stds=(0.1, 0.1, 0.2, 0.2)) if "stds" in name else None
        make = ((lambda: RankingCriterion(loss="ap", reg_loss=reg)) if family == "ap"
                else (lambda: DenseCriterion(reg_loss=reg, coder=coder)))
        logits = 3
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 22.0, 26.0], [36.0, 30.0, 60.0, 58.0]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[10.0, 34.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(3, priors.shape[0], logits, generator=g)
    box = torch.randn(3, priors.shape[0], 4, generator=g) * 0.3
    results = {}
    for form in (False, True):
        for empty in (False, True):
            b = box.clone()
            if form and not empty:  # non-finite predictions of non-positive priors (prior 0 of the empty image)
                b[2, 0] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30])
            b.requires_grad_()
            with device_paths(form):
                d = make()(HeadOutput(cls, b, priors, npl, (64, 64)), [targets[2]] * 3 if empty else targets)
            d["loss"].backward()  # the classification part does not reach the box branch
            results[form, empty] = (d["reg"].detach(), b.grad)
    for empty in (False, True):
        (v0, g0), (v1, g1) = results[False, empty], results[True, empty]
        torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-7)
        assert g0 is not None and g1 is not None and torch.isfinite(g1).all()
        torch.testing.assert_close(g1, g0, rtol=1e-6, atol=1e-9)
    assert results[False, False][0] > 0 and results[False, True][0] == 0


def test_coder_stats_are_cached_per_device_and_dtype():
    coder = SSDCoder()
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[1.0, 2.0, 12.0, 9.0]])
    coder.encode(priors, boxes)  # builds the float32 statistics once
    with SyncCounter() as counter:
        deltas = coder.encode(priors, boxes)
        decoded = coder.decode(priors, deltas)
    assert not counter.hits, dict(counter.hits)
    torch.testing.assert_close(decoded, boxes)
    twin = copy.deepcopy(coder)  # the cache (device tensors) is not copied, rebuilt on use
    assert twin._stats_cache == {} and torch.equal(twin.encode(priors, boxes), deltas)
    torch.testing.assert_close(coder.encode(priors.double(), boxes.double()), deltas.double())
    fresh = SSDCoder()
    with torch.inference_mode():  # statistics first made for a prediction ...
        fresh.decode(priors, deltas)
    pred = deltas.clone().requires_grad_()
    fresh.decode(priors, pred).sum().backward()  # ... still serve training
    assert pred.grad is not None


def test_counter_sees_the_syncs_it_claims():
    x = torch.arange(6.0)
    with SyncCounter() as c:
        float(x.sum()), bool(x.any()), x.nonzero(), x[x > 2], torch.tensor([1.0], device="cpu")
        x[x > 4] = 0.0  # a Python scalar: masked_fill, no sync
    assert sum(c.hits.values()) == 5


def test_cuda_sync_sites_attribution(monkeypatch):
    # The CUDA counter's machinery without a GPU: a warning issued below a minidet frame is
    # attributed to it, one outside minidet to backward, and other warnings are ignored.
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    namespace = {"warnings": warnings}
    code = "class Fake:\n    def step(self):\n        warnings.warn('called a synchronizing CUDA operation')\n"
    exec(compile(code, str(ROOT / "fake_module.py"), "exec"), namespace)
    with cuda_sync_sites() as sites:
        namespace["Fake"]().step()
        namespace["Fake"]().step()
        warnings.warn("called a synchronizing CUDA operation", stacklevel=1)
        warnings.warn("something else", stacklevel=1)
    assert sites == {("fake_module.py", "Fake.step"): 2, ("<torch>", "backward"): 1}


def test_weighting_and_focal_forms_are_sync_free():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g).requires_grad_()
    labels = torch.randint(-1, 7, (500,), generator=g)
    weight = (torch.rand(500, generator=g) > 0.1).float()
    schemes = [ALWA(variant=1, interval=3), SelfBalance(period=2), UncertaintyWeighting(), FixedWeights()]
    with device_paths(True), SyncCounter() as c:
        sigmoid_focal_loss_from_labels(logits, labels, weight=weight).backward()
        box_iou(torch.rand(600, 4) * 10, torch.rand(600, 4) * 10 + 10)
        for scheme in schemes:
            for k in range(5):
                out = scheme({"cls": torch.tensor(1.0 + k), "reg": torch.tensor(0.5)}, record=torch.tensor(k != 2))
                scheme.weight_tensors()
                sum(out.values())
    assert not c.hits, dict(c.hits)


def test_nms_device_form_needs_few_syncs():
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(30, 2, generator=g) * 500
    k = torch.randint(0, 30, (3000,), generator=g)
    c = centres[k] + torch.randn(3000, 2, generator=g) * 10
    boxes = torch.cat([c - 20, c + 20], 1)
    scores = torch.rand(3000, generator=g)
    counts = {}
    for form in (False, True):
        with device_paths(form), SyncCounter() as counter:
            kept = nms(boxes, scores, 0.5)
        counts[form] = sum(counter.hits.values())
        assert torch.equal(kept, tvo.nms(boxes, scores, 0.5))
    # window width, edge count, convergence checks after rounds 1, 2, 4, ..., kept count
    assert counts[True] <= 9 and counts[True] < counts[False], counts


# ------------------------------------------------------------------ equal forms: box_iou / NMS


def test_device_path_switch():
    assert not use_device_path("cpu") and use_device_path("cuda")
    with device_paths(True):
        assert use_device_path("cpu")
        with device_paths(False):
            assert not use_device_path("cuda")
        assert use_device_path("cpu")
    assert not use_device_path("cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_box_iou_unblocked_equals_blocked(dtype):
    g = torch.Generator().manual_seed(0)
    a = random_boxes(120, g, scale=200, max_size=80, dtype=dtype)
    b = random_boxes(5000, g, scale=250, max_size=60, dtype=dtype)
    b[::97, 2:] = b[::97, :2]  # zero-area boxes: IoU 0, not NaN
    assert a.shape[0] * b.shape[0] > 1 << 18  # the CPU form takes blocks here
    with device_paths(False):
        blocked = box_iou(a, b)
    with device_paths(True):
        whole = box_iou(a, b)
    assert whole.dtype == dtype and torch.equal(blocked, whole)
    if dtype == torch.float16:  # computed in float32, rounded to float16
        torch.testing.assert_close(whole.float(), tvo.box_iou(a.float(), b.float()), rtol=1e-3, atol=1e-3)
    else:
        torch.testing.assert_close(whole, tvo.box_iou(a, b))


def _nms_case(i: int, g: torch.Generator):
    n = int(torch.randint(1, 2500, (1,), generator=g))
    if i % 3 == 0:  # integer grid: exact ties and IoUs exactly on the threshold
        xy = torch.randint(0, 12, (n, 2), generator=g).float()
        boxes = torch.cat([xy, xy + torch.randint(0, 6, (n, 2), generator=g).float()], 1)
    elif i % 3 == 1:  # dense clusters
        centres = torch.rand(15, 2, generator=g) * 400
        c = centres[torch.randint(0, 15, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 8
        wh = 40 * (1 + 0.2 * torch.randn(n, 2, generator=g)).clamp(min=0.2)
        boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
    else:
        xy = torch.rand(n, 2, generator=g) * 1000
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60], 1)
    scores = torch.randint(0, 8, (n,), generator=g).float() if i % 2 else torch.rand(n, generator=g)
    return boxes, scores


def test_nms_device_form_equals_cpu_form_and_torchvision():
    g = torch.Generator().manual_seed(5)
    for i, thr in enumerate([0.5, 0.0, 1 / 3, 0.6, 0.7, 1.0, 0.05, 0.45, 0.5, 0.3, 0.65, 0.55]):
        boxes, scores = _nms_case(i, g)
        idxs = torch.randint(0, [1, 3, 80][i % 3], (len(boxes),), generator=g)
        ref = tvo.nms(boxes, scores, thr)
        with device_paths(False):
            cpu_form, cpu_batched = nms(boxes, scores, thr), batched_nms(boxes, scores, idxs, thr)
        with device_paths(True):
            dev_form, dev_batched = nms(boxes, scores, thr), batched_nms(boxes, scores, idxs, thr)
        assert torch.equal(dev_form, ref) and torch.equal(cpu_form, ref), f"case {i}"
        assert torch.equal(dev_batched, cpu_batched), f"case {i}"
        assert set(dev_batched.tolist()) == set(tvo.batched_nms(boxes, scores, idxs, thr).tolist())


def test_nms_device_form_chunks_when_the_band_is_large(monkeypatch):
    monkeypatch.setattr(nms_module, "_DEVICE_CHUNK_ELEMENTS", 1000)  # many chunks
    g = torch.Generator().manual_seed(6)
    boxes, scores = _nms_case(1, g)
    with device_paths(True):
        assert torch.equal(nms(boxes, scores, 0.5), tvo.nms(boxes, scores, 0.5))


# --------------------------------------------------------------------------- equal forms: focal


def _focal_both(x, labels, weight, alpha, gamma):
    out = {}
    for form in (False, True):
        xx = x.clone().requires_grad_()
        with device_paths(form):
            loss = sigmoid_focal_loss_from_labels(xx, labels, alpha, gamma, weight)
        loss.backward(torch.tensor(1.5))
        out[form] = (loss.detach(), xx.grad)
    return out[False], out[True]


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5), (0.25, 1.0)])
@pytest.mark.parametrize("weights", ["none", "binary", "soft"])
def test_focal_unchunked_form_equals_chunked_form(alpha, gamma, weights):
    g = torch.Generator().manual_seed(1)
    n, c = 3000, 20
    x = torch.randn(n, c, generator=g) * 3
    x[:5] = torch.tensor([-80.0, 80.0, 0.0, 1e-3, -1e-3])[:, None]  # saturated and tiny logits
    labels = torch.randint(-1, c + 1, (n,), generator=g)  # -1 and c: all-negative rows
    weight = {"none": None, "binary": (torch.rand(n, generator=g) > 0.2).float(),
              "soft": torch.rand(n, generator=g)}[weights]
    (l_cpu, g_cpu), (l_dev, g_dev) = _focal_both(x, labels, weight, alpha, gamma)
    # Gradients: the same float operations per element (CPU SIMD vs scalar loops of sigmoid /
    # softplus may differ in the last bit, so a tolerance of a few ulp).
    torch.testing.assert_close(g_dev, g_cpu, rtol=2e-6, atol=1e-12)
    assert (g_dev == g_cpu).float().mean() > 0.99
    torch.testing.assert_close(l_dev, l_cpu, rtol=1e-5, atol=0)
    onehot = F.one_hot(labels.clamp(0, c - 1), c).double() * ((labels >= 0) & (labels < c))[:, None]
    ref = sigmoid_focal_loss(x.double(), onehot, alpha, gamma, weight=None if weight is None else weight.double()[:, None])
    torch.testing.assert_close(l_dev.double(), ref, rtol=1e-6, atol=0)


def test_focal_unchunked_form_over_several_cpu_chunks():
    g = torch.Generator().manual_seed(2)
    n, c = 60000, 20  # 1.2M entries: two chunks of the CPU form
    x = torch.randn(n, c, generator=g) * 2 - 3
    labels = torch.where(torch.rand(n, generator=g) < 0.02, torch.randint(0, c, (n,), generator=g), -1)
    weight = (torch.rand(n, generator=g) > 0.05).float()
    (l_cpu, g_cpu), (l_dev, g_dev) = _focal_both(x, labels, weight, 0.25, 2.0)
    torch.testing.assert_close(g_dev, g_cpu, rtol=2e-6, atol=1e-12)
    # the CPU form's float32 chunk dots lose ~1e-5 at this size; the unchunked form sums in float64
    torch.testing.assert_close(l_dev, l_cpu, rtol=1e-4, atol=0)
    onehot = F.one_hot(labels.clamp(0), c).double() * (labels >= 0)[:, None]
    ref = sigmoid_focal_loss(x.double(), onehot, 0.25, 2.0, weight=weight.double()[:, None])
    torch.testing.assert_close(l_dev.double(), ref, rtol=1e-6, atol=0)


def test_focal_unchunked_form_no_classes_and_second_backward():
    with device_paths(True):
        x = torch.zeros(4, 0, requires_grad=True)
        loss = sigmoid_focal_loss_from_labels(x, torch.tensor([0, -1, 2, 1]))
        loss.backward()
        assert loss.item() == 0 and x.grad.shape == (4, 0)
        y = torch.randn(4, 3, requires_grad=True)
        loss = sigmoid_focal_loss_from_labels(y, torch.tensor([0, -1, 2, 1]))
        loss.backward(retain_graph=True)
        with pytest.raises(RuntimeError, match="one backward"):
            loss.backward()


# ------------------------------------------------------ weighting: device state, same numbers


class _ReferenceALWA:
    """The Python-float ALWA of earlier versions (the numbers the device state must reproduce)."""

    def __init__(self, variant, interval):
        self.variant, self.interval, self.lam, self.cls, self.reg = variant, interval, 1.0, [], []

    def _stat(self, v):
        mean = sum(v) / len(v)
        std = math.sqrt(sum((x - mean) * (x - mean) for x in v) / (len(v) - 1))
        return mean + std if self.variant == 1 else std

    def step(self, c, r, record):
        applied = self.lam
        wc = float(torch.tensor(c, dtype=torch.float32) * applied)
        if record:
            self.cls.append(wc)
            self.reg.append(float(torch.tensor(r, dtype=torch.float32) * 1.0))
            if len(self.cls) >= self.interval:
                sc, sr = self._stat(self.cls), self._stat(self.reg)
                if sc > sr:
                    self.lam = 1.0 - (sc - sr) / sc
                self.cls.clear()
                self.reg.clear()
        return applied


class _ReferenceSB:
    def __init__(self, period):
        self.period, self.sb, self.steps, self.cls, self.reg = period, 50.0, 0, [], []

    def step(self, c, r, record):
        if record:
            self.cls.append(float(torch.tensor(c, dtype=torch.float32)))
            self.reg.append(float(torch.tensor(r, dtype=torch.float32)))
        self.steps += 1
        if self.steps % self.period == 0:
            if self.reg:
                mr, mc = sum(self.reg) / len(self.reg), sum(self.cls) / len(self.cls)
                if mr > 0:
                    self.sb = (mr + mc) / mr
            self.cls.clear()
            self.reg.clear()
        return self.sb


def test_alwa2_hand_trajectory_with_device_records():
    # test_weighting's hand-worked ALWA_2 trajectory, recorded through device booleans and with
    # unrecorded steps (no positives) between: those change nothing and enter no window.
    cls = [4, 6, 4, 6, 8, 12, 8, 12, 2, 2.5, 2, 2.5, 1]
    reg = [1, 2, 1, 2] * 3 + [1]
    scheme = ALWA(variant=2, interval=4)
    applied = []
    for c, r in zip(cls, reg, strict=True):
        scheme({"cls": torch.tensor(99.0), "reg": torch.tensor(99.0)}, record=torch.tensor(False))
        out = scheme({"cls": torch.tensor(float(c)), "reg": torch.tensor(float(r))}, record=torch.tensor(True))
        applied.append(scheme.weight_tensors()["cls"])
        assert isinstance(applied[-1], torch.Tensor) and out["cls"].item() == pytest.approx(c * float(applied[-1]))
    assert [float(a) for a in applied] == pytest.approx([1.0] * 4 + [0.5] * 9)


@pytest.mark.parametrize("variant", [1, 2])
def test_alwa_device_state_reproduces_python_floats(variant):
    g = torch.Generator().manual_seed(variant)
    for interval in (2, 3, 7):
        ref, scheme = _ReferenceALWA(variant, interval), ALWA(variant=variant, interval=interval)
        for _ in range(40):
            c = float(torch.rand((), generator=g) * 10 ** (torch.rand((), generator=g) * 3 - 1))
            r = float(torch.rand((), generator=g) * 2)
            record = bool(torch.rand((), generator=g) > 0.25)
            expected = ref.step(c, r, record)
            scheme({"cls": torch.tensor(c), "reg": torch.tensor(r)}, record=torch.tensor(record))
            assert scheme.weights["cls"] == pytest.approx(expected, rel=1e-13, abs=0)
            assert scheme.cls_history == ref.cls and scheme.reg_history == ref.reg


def test_self_balance_device_state_reproduces_python_floats():
    g = torch.Generator().manual_seed(3)
    for period in (1, 3, 5):
        ref, scheme = _ReferenceSB(period), SelfBalance(period=period)
        for _ in range(40):
            c, r = float(torch.rand((), generator=g) * 3), float(torch.rand((), generator=g))
            record = bool(torch.rand((), generator=g) > 0.3)
            expected = ref.step(c, r, record)
            scheme({"cls": torch.tensor(c), "reg": torch.tensor(r)}, record=torch.tensor(record))
            assert scheme.weights["reg"] == pytest.approx(expected, rel=1e-13, abs=0)
            assert scheme.cls_history == ref.cls and int(scheme.steps) == ref.steps


def test_weighting_state_round_trip_mid_window_and_mid_period():
    cls = [4.0, 6.0, 4.0, 6.0, 8.0, 12.0, 8.0, 12.0, 3.0, 5.0, 1.0]
    reg = [1.0, 2.0] * 5 + [1.0]
    rec = [True, True, False, True, True, True, True, False, True, True, True]
    for make in (lambda: ALWA(variant=1, interval=3), lambda: SelfBalance(period=4)):
        full, first = make(), make()
        weights = []
        for c, r, k in zip(cls, reg, rec, strict=True):
            full({"cls": torch.tensor(c), "reg": torch.tensor(r)}, record=torch.tensor(k))
            weights.append(full.weights)
        for c, r, k in zip(cls[:6], reg[:6], rec[:6], strict=True):
            first({"cls": torch.tensor(c), "reg": torch.tensor(r)}, record=torch.tensor(k))
        state = first.state_dict()
        assert isinstance(state["_extra_state"]["cls_history"], list)  # the format of earlier versions
        resumed = make()
        resumed.load_state_dict(state)
        assert resumed.cls_history == first.cls_history and resumed.reg_history == first.reg_history
        for i in range(6, len(cls)):
            resumed({"cls": torch.tensor(cls[i]), "reg": torch.tensor(reg[i])}, record=torch.tensor(rec[i]))
            assert resumed.weights == weights[i]


def test_criterion_logs_weights_as_device_tensors():
    model = build_model("retinanet", 3, weighting="alwa2", alwa_interval=2).train()
    images, targets = _batch(torch.device("cpu"))
    out = model.loss(images, targets)
    for key in ("weight_cls", "weight_reg"):
        assert isinstance(out[key], torch.Tensor) and out[key].dtype == torch.float32
        assert out[key].device == out["loss"].device and float(out[key]) == 1.0
    fixed = build_model("retinanet", 3, loss_weights=(0.5, 2.0)).train().loss(images, targets)
    assert float(fixed["weight_cls"]) == 0.5 and float(fixed["weight_reg"]) == 2.0


if __name__ == "__main__":  # the sync count per family and site
    device = torch.device("cuda" if CUDA else "cpu")
    print(f"host syncs per training step ({'CUDA sync debug mode' if CUDA else 'CPU mock, accelerator forms'})")
    for fam in FAMILIES:
        found = count_step_syncs(fam, device)
        print(f"{fam}: {sum(found.values()) / STEPS:g} per step")
        for (file, qual), n in sorted(found.items()):
            tag = "MINE" if _mine((file, qual)) else ("known" if (file, qual) in KNOWN else "UNKNOWN")
            print(f"    {n / STEPS:g}  {file}:{qual}  [{tag}]")
