"""DDP on real machines: skip decisions agreed by every process (a NaN on one rank does not hang
the others), the loss of a 2-process run equal to that of one process with the union batch, each
rank's own RNG stream through a resume, evaluation scored once on rank 0, no collective hidden in
a loss one rank computes alone, fp16 steps the GradScaler skips left uncounted, and persistent
DataLoader workers that follow the epoch.

The multi-process tests start ``torchrun`` (gloo, CPU) on a small wrapper script written into
tmp_path: it patches the Trainer (a NaN loss on one rank, a Ctrl-C flag on one rank, BatchNorm
frozen) and notes per rank what each training step did, then calls ``minidet.train.main``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from minidet.engine.checkpoint import load_checkpoint
from minidet.engine.trainer import Trainer
from minidet.train import main

# float32 (the small preset's --amp auto would be bf16 on an AVX512-BF16 CPU): the equalities below are
# up to float32 reduction order
TINY = ["--img-size", "64", "--workers", "0", "--quiet", "--warmup-iters", "2", "--log-interval", "1",
        "--device", "cpu", "--seed", "0", "--amp", "off"]

WRAPPER = r'''
import json, os, sys
import torch
import torch.distributed as dist
import minidet.evaluation.detector_eval as de
import minidet.train
from minidet.engine import trainer as tr
from minidet.engine.run_state import rng_state

LOG = os.environ["DDP_TEST_LOG"]

def calls(name):  # "RANK:CALL,CALL,..." -> the step calls (0-based, per process) of this rank
    spec = os.environ.get(name)
    if not spec:
        return set()
    rank, _, which = spec.partition(":")
    return {int(c) for c in which.split(",")} if int(rank) == RANK else set()

RANK = int(os.environ.get("RANK", "0"))
NAN, STOP = calls("DDP_TEST_NAN"), calls("DDP_TEST_STOP")
output = os.open(os.path.join(LOG, f"rank{RANK}.out"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(output, 1)  # each rank's stdout and stderr in a file of its own: no interleaved lines
os.dup2(output, 2)
STATE = {"call": -1, "ids": None}

def note(kind, record):
    with open(os.path.join(LOG, f"rank{RANK}.{kind}.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")

if os.environ.get("DDP_TEST_FREEZE_BN") == "1":  # BatchNorm from its (initial) running statistics
    torch.nn.BatchNorm2d.train = lambda self, mode=True: torch.nn.Module.train(self, False)

record_skipped = tr.record_skipped
def noting_record_skipped(report, targets):  # sees the batch's targets before they go to the device
    STATE["ids"] = [int(t["image_id"]) for t in targets]
    return record_skipped(report, targets)
tr.record_skipped = noting_record_skipped

forward = tr._LossStep.forward
def nan_forward(self, images, targets):
    out = forward(self, images, targets)
    if STATE["call"] in NAN:  # a NaN loss on this rank only, still attached to the graph
        out = {**out, "loss": out["loss"] * float("nan"), "cls": out["cls"] * float("nan")}
    return out
tr._LossStep.forward = nan_forward

step = tr.Trainer.step
def noting_step(self, images, targets):
    STATE["call"] += 1
    st = self.state
    record = {"call": STATE["call"], "epoch": st.epoch, "batch": st.batch_in_epoch, "iteration": st.iteration,
              "ids": STATE["ids"]}
    if STATE["call"] in STOP:  # as a Ctrl-C seen by this process only
        self.interrupt.requested = True
    try:
        out = step(self, images, targets)
    except BaseException as err:
        note("steps", {**record, "raised": type(err).__name__})
        raise
    note("steps", {**record, "skipped": out is None, "loss": None if out is None else float(out["loss"]),
                   "sync_after": bool(self.model.criterion.sync_normalizer)})
    return out
tr.Trainer.step = noting_step

last_checkpoint = tr.Trainer._last_checkpoint
def slow_last_checkpoint(self):  # this rank is the last to reach its error message (a loaded machine)
    if os.environ.get("DDP_TEST_SLOW_RAISE") == str(RANK):
        import time
        time.sleep(5)
    return last_checkpoint(self)
tr.Trainer._last_checkpoint = slow_last_checkpoint

save = tr.Trainer.save
def noting_save(self, name, *args, **kwargs):
    torch.save(rng_state(), os.path.join(LOG, f"rank{RANK}.saved_rng.pt"))  # this rank's state when saving
    return save(self, name, *args, **kwargs)
tr.Trainer.save = noting_save

restore = tr.Trainer.restore
def noting_restore(self, ckpt):
    restore(self, ckpt)
    torch.save(rng_state(), os.path.join(LOG, f"rank{RANK}.restored_rng.pt"))
tr.Trainer.restore = noting_restore

evaluate_detections = de.evaluate_detections
def noting_evaluate_detections(*args, **kwargs):
    out = evaluate_detections(*args, **kwargs)
    note("scored", {"images": out.images, "AP": out.stats["AP"]})
    return out
de.evaluate_detections = noting_evaluate_detections

evaluate = tr.Trainer.evaluate
def noting_evaluate(self):
    stats = evaluate(self)
    note("evaluated", stats)
    return stats
tr.Trainer.evaluate = noting_evaluate

sys.exit(minidet.train.main(sys.argv[1:]))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path: Path, args: list[str], nproc: int = 2, timeout: float = 120, **env_extra) -> tuple[int, str, Path]:
    """Run the wrapper (under torchrun when nproc > 1) -> (exit status, output, log folder). A run
    that outlives ``timeout`` (a hang) is killed with its whole process group and fails the test."""
    logs = tmp_path / f"logs{len(list(tmp_path.glob('logs*')))}"
    logs.mkdir()
    script = tmp_path / "ddp_wrapper.py"
    script.write_text(WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDP_TEST_LOG": str(logs), **env_extra}
    cmd = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", str(script)] if nproc > 1 else [sys.executable, str(script)])
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the run did not end within {timeout} s (a rank waiting for the others?):\n{out[-4000:]}")
    return proc.returncode, out + "".join(rank_output(logs, r) for r in range(nproc)), logs


def rank_output(logs: Path, rank: int) -> str:
    path = logs / f"rank{rank}.out"
    return path.read_text() if path.exists() else ""


def read(logs: Path, rank: int, kind: str = "steps") -> list[dict]:
    path = logs / f"rank{rank}.{kind}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def shapes_data(tmp_path: Path, train: int, val: int = 8) -> str:
    data = tmp_path / "shapes.yaml"
    data.write_text(f"format: shapes\ntrain: {{num_images: {train}, image_size: 64}}\n"
                    f"val: {{num_images: {val}, image_size: 64}}\n")
    return str(data)


def same_rng(a: dict, b: dict) -> bool:
    return (a["python"] == b["python"] and torch.equal(a["torch"], b["torch"])
            and a["numpy"][0] == b["numpy"][0] and np.array_equal(a["numpy"][1], b["numpy"][1])
            and tuple(a["numpy"][2:]) == tuple(b["numpy"][2:]))


# ------------------------------------------------------------------------- multi-process runs


def test_a_nan_on_one_rank_is_skipped_by_every_rank(tmp_path):
    """Rank 1 alone gets a NaN loss at its steps 1, 4 and 5 (rank 0's are finite): every rank
    skips the same steps (rank 1 used to skip its backward alone while rank 0 waited for ever in
    DDP's gradient all_reduce), and two in a row stop every rank with the non-finite message."""
    run = tmp_path / "run"
    rc, out, logs = launch(tmp_path, [*TINY, "--shapes-images", "32", "--batch-size", "4", "--epochs", "2",
                                      "--val-split", "none", "--max-bad-steps", "2", "--out", str(run)],
                           DDP_TEST_NAN="1:1,4,5", DDP_TEST_SLOW_RAISE="0")
    assert rc != 0, out[-3000:]  # stopped by the guard (exit status 2 on both ranks)
    steps = [read(logs, r) for r in (0, 1)]
    key = lambda s: (s["call"], s["epoch"], s["batch"], s["iteration"])  # noqa: E731
    assert [key(s) for s in steps[0]] == [key(s) for s in steps[1]]  # the same steps, the same counters
    for rank in (0, 1):
        assert [s["call"] for s in steps[rank] if s.get("skipped")] == [1, 4], rank
        assert steps[rank][-1]["call"] == 5 and steps[rank][-1]["raised"] == "TrainingError", rank
        assert [s["iteration"] for s in steps[rank]] == [0, 1, 1, 2, 3, 3]  # skipped steps are not counted
        assert not any(s.get("sync_after") for s in steps[rank])  # the loss's all_reduce is off after the step
    rank0, rank1 = rank_output(logs, 0), rank_output(logs, 1)
    assert "non-finite loss at iteration 1 on rank 1 (components: loss, cls); step skipped by every process" in rank1
    assert "non-finite loss at iteration 1 on another process; step skipped by every process" in rank0
    assert "2 consecutive non-finite losses (last at iteration 3, components loss, cls)" in rank1
    assert "2 consecutive non-finite losses (last at iteration 3, on another process)" in rank0
    assert load_checkpoint(run / "last.pt")["train_state"]["iteration"] == 3  # epoch 1: 4 batches, 1 skipped


def test_two_processes_equal_one_process_with_the_union_batch(tmp_path):
    """2 processes x 4 images = 1 process x 8 images, on the loss of every step.

    Why they are the same function: the EpochSampler shards one permutation of (seed, epoch) by
    rank (rank r takes positions r, r + 2, ...), so the two ranks' k-th batches together are
    exactly the 1-process run's k-th batch of 8; every image's augmentation is a function of
    (seed, epoch, index) only. Rank r's loss is S_r / n, S_r the sum of its images' loss terms,
    n the positive count averaged over ranks, (P_0 + P_1) / 2 (Criterion.sync_normalizer, on in
    DDP training steps); the 1-process loss is (S_0 + S_1) / (P_0 + P_1) = (L_0 + L_1) / 2, and
    DDP's mean of the ranks' gradients is its gradient, so the weights stay equal step after
    step (SGD: an update linear in the gradient). Images are all 64 x 64 (no padding that would
    depend on the batch); the head's GroupNorm is per image; BatchNorm, which would normalise
    over 4 images per rank instead of 8, is frozen at its running statistics for both runs
    (there is no SyncBatchNorm on the CPU). What remains is float rounding (reduction order).
    A rank-local normaliser (P_r) or another data order makes the losses differ by far more."""
    data = shapes_data(tmp_path, 32)
    common = [*TINY, "--data", data, "--epochs", "1", "--optimizer", "sgd", "--lr", "0.02", "--clip-grad", "0",
              "--eval-interval", "1"]
    rc, out, two = launch(tmp_path, [*common, "--batch-size", "4", "--out", str(tmp_path / "two")],
                          DDP_TEST_FREEZE_BN="1")
    assert rc == 0, out[-3000:]
    rc, out, one = launch(tmp_path, [*common, "--batch-size", "8", "--out", str(tmp_path / "one")], nproc=1,
                          DDP_TEST_FREEZE_BN="1")
    assert rc == 0, out[-3000:]
    ranks, single = [read(two, 0), read(two, 1)], read(one, 0)
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 4
    for r0, r1, s in zip(*ranks, single, strict=True):
        assert sorted(r0["ids"] + r1["ids"]) == sorted(s["ids"]) and not set(r0["ids"]) & set(r1["ids"])
        assert r0["loss"] != pytest.approx(r1["loss"], rel=1e-3)  # the ranks' own losses differ ...
        assert (r0["loss"] + r1["loss"]) / 2 == pytest.approx(s["loss"], rel=1e-5, abs=1e-7)  # ... their mean does not
    # evaluation: rank 0 alone scored the 8 validation images; both ranks got its stats
    assert read(two, 0, "scored") and not read(two, 1, "scored")
    assert read(two, 0, "scored")[0]["images"] == 8
    assert read(two, 0, "evaluated") == read(two, 1, "evaluated") != []


@pytest.mark.parametrize("images, batches, last, left", [(37, 5, 2, "1 of 37 images are left out of every epoch"),
                                                        (34, 4, 4, "2 of 34 images are left out of every epoch")])
def test_uneven_splits_keep_every_rank_in_step(tmp_path, images, batches, last, left):
    """Each of 2 processes gets floor(N / 2) images; the last partial batch is kept on every rank
    alike (37 images, batch 4: 18 per rank = 4 batches + 2) or dropped on every rank alike when it
    would hold one image (34: 17 per rank = 4 batches + 1), so the ranks take the same steps and the
    run ends on both; the message counts what each epoch leaves out."""
    rc, out, logs = launch(tmp_path, [*TINY, "--data", shapes_data(tmp_path, images), "--batch-size", "4",
                                      "--epochs", "2", "--val-split", "none", "--out", str(tmp_path / "run")])
    assert rc == 0, out[-3000:]
    steps = [read(logs, r) for r in (0, 1)]
    key = lambda s: (s["call"], s["epoch"], s["batch"], s["iteration"])  # noqa: E731
    assert [key(s) for s in steps[0]] == [key(s) for s in steps[1]] and len(steps[0]) == 2 * batches
    for epoch in (0, 1):
        ids = [[i for s in steps[r] if s["epoch"] == epoch for i in s["ids"]] for r in (0, 1)]
        assert len(ids[0]) == len(ids[1]) == 4 * (batches - 1) + last
        assert not set(ids[0]) & set(ids[1])  # disjoint shards
    assert left in out


def test_each_rank_resumes_its_own_rng_stream(tmp_path):
    """Rank 0 alone sees a Ctrl-C before its step 1: the flag all_reduce of that step stops both
    ranks after it; last.pt holds both ranks' RNG states, and the resumed ranks get their own."""
    run = tmp_path / "run"
    args = [*TINY, "--shapes-images", "32", "--batch-size", "4", "--epochs", "1", "--val-split", "none"]
    rc, out, cut = launch(tmp_path, [*args, "--out", str(run)], DDP_TEST_STOP="0:1")
    assert rc != 0 and "interrupted: saved" in out, out[-3000:]
    assert [s["call"] for s in read(cut, 0)] == [s["call"] for s in read(cut, 1)] == [0, 1]  # both stopped after 1
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["iteration"] == 2
    saved = ckpt["rng_per_rank"]
    assert len(saved) == 2 and same_rng(saved[0], ckpt["rng"])
    assert not same_rng(saved[0], saved[1])  # seeded seed + rank: two streams
    for rank in (0, 1):
        assert same_rng(saved[rank], torch.load(cut / f"rank{rank}.saved_rng.pt", weights_only=False)), rank
    rc, out, resumed = launch(tmp_path, ["--resume", str(run / "last.pt"), "--quiet", "--workers", "0"])
    assert rc == 0, out[-3000:]
    for rank in (0, 1):
        restored = torch.load(resumed / f"rank{rank}.restored_rng.pt", weights_only=False)
        assert same_rng(restored, saved[rank]), rank
    assert "random-number state" not in out  # no fallback note
    assert load_checkpoint(run / "last.pt")["train_state"]["iteration"] == 4


# --------------------------------------------------------------------------- one process


def test_a_step_the_grad_scaler_skips_is_not_counted(tmp_path, monkeypatch):
    """fp16 on the CPU (torch.amp.GradScaler("cpu")): inf gradients at the third step make the
    GradScaler skip it; the schedule, the EMA, the optimizer and the iteration count stay where
    they were, the scale backs off, and the next step goes on from there."""
    seen = {}
    original_init = Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        seen["trainer"] = self
        weight = next(p for p in self.model.parameters() if p.ndim == 4)
        weight.register_hook(lambda g: g * float("inf") if seen["call"] == 2 else g)
        self.optimizer.register_step_post_hook(lambda *a: seen["optimizer_steps"].append(seen["call"]))

    original_step = Trainer.step
    log = []

    def step(self, images, targets):
        seen["call"] = seen.get("call", -1) + 1
        before = (self.state.iteration, self.scheduler.last_epoch, self.ema.updates, self.scaler.get_scale())
        out = original_step(self, images, targets)
        log.append((before, (self.state.iteration, self.scheduler.last_epoch, self.ema.updates,
                             self.scaler.get_scale()), out is None))
        return out

    seen["optimizer_steps"] = []
    monkeypatch.setattr(Trainer, "__init__", init)
    monkeypatch.setattr(Trainer, "step", step)
    run = tmp_path / "run"
    assert main([*TINY, "--shapes-images", "32", "--batch-size", "8", "--epochs", "1", "--val-split", "none",
                 "--amp", "fp16", "--ema", "--out", str(run)]) == 0
    trainer = seen["trainer"]
    assert trainer.scaler.is_enabled()
    assert [skipped for *_, skipped in log] == [False, False, True, False]
    (it, last_epoch, updates, scale), after, _ = log[2]
    assert after == (it, last_epoch, updates, scale * 0.5)  # nothing advanced; the scale backed off
    assert log[3][1][:3] == (it + 1, last_epoch + 1, updates + 1)
    assert seen["optimizer_steps"] == [0, 1, 3]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["iteration"] == 3 and ckpt["scheduler"]["last_epoch"] == 3
    assert ckpt["ema"]["updates"] == 3 and ckpt["train_state"]["bad_steps"] == 0


@pytest.mark.parametrize("extra", [[], ["--amp", "fp16", "--clip-grad", "10"]], ids=["fp32", "fp16-clip"])
def test_a_step_reads_the_device_once(tmp_path, monkeypatch, extra):
    """After the forward, one training step reads a device value back to the host once: the
    finiteness / found_inf flags (``Trainer._agree``). Counted on the CPU as the Python-level
    reads that would sync with CUDA tensors (item, tolist, cpu, numpy, bool / float / int of a
    tensor) called from the trainer, the GradScaler or gradient clipping; the old step made two
    under fp16 (``torch.isfinite(loss)`` in an if, then ``scaler.step``'s found_inf check)."""
    import torch.amp.grad_scaler as grad_scaler
    import torch.nn.utils.clip_grad as clip_grad

    import minidet.engine.step_guard as step_guard
    import minidet.engine.trainer as tr

    watched = {tr.__file__, step_guard.__file__, grad_scaler.__file__, clip_grad.__file__}
    reads, active, per_step = [], [], []

    def counting(original):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1)
            if active and caller.f_code.co_filename in watched:
                reads.append(f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} {original.__name__}")
            return original(self, *args, **kwargs)
        return wrapper

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    forward, step = tr._LossStep.forward, Trainer.step

    def counted_forward(self, images, targets):
        out = forward(self, images, targets)
        active.append(True)  # from the end of the forward ...
        return out

    def counted_step(self, images, targets):
        try:
            return step(self, images, targets)
        finally:  # ... to the end of the step
            active.clear()
            per_step.append(list(reads))
            reads.clear()

    monkeypatch.setattr(tr._LossStep, "forward", counted_forward)
    monkeypatch.setattr(Trainer, "step", counted_step)
    assert main([*TINY, "--shapes-images", "32", "--batch-size", "8", "--epochs", "1", "--val-split", "none",
                 *extra, "--out", str(tmp_path / "run")]) == 0
    assert len(per_step) == 4
    assert all(len(r) == 1 and "tolist" in r[0] for r in per_step), per_step


def test_a_loss_computed_by_one_rank_alone_calls_no_collective(tmp_path, monkeypatch):
    """torch.distributed initialised (a 1-process gloo group): model.loss() stays local unless
    the Trainer turned the criterion's sync_normalizer on; a whole 1-process training run with
    its evaluation and checkpoints calls no collective either."""
    from minidet.models import build_model

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        model = build_model("retinanet", 4, backbone="tiny")
        images = torch.rand(2, 3, 64, 64)
        targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0]]), "labels": torch.tensor([1]),
                    "ignore_boxes": torch.zeros(0, 4)} for _ in range(2)]
        collectives = []

        def refuse(*args, **kwargs):
            collectives.append(args)
            raise AssertionError("a collective inside a rank-local loss")

        monkeypatch.setattr(dist, "all_reduce", refuse)
        assert not model.criterion.sync_normalizer
        losses = model.loss(images, targets)  # a debug call on one rank: no collective
        assert torch.isfinite(losses["loss"]) and not collectives
        model.criterion.sync_normalizer = True  # what the Trainer does for its DDP training steps
        with pytest.raises(AssertionError, match="collective"):
            model.loss(images, targets)
        assert len(collectives) == 1
        collectives.clear()
        for name in ("all_gather_object", "gather_object", "broadcast_object_list", "barrier", "broadcast"):
            monkeypatch.setattr(dist, name, refuse)
        run = tmp_path / "run"
        assert main([*TINY, "--data", shapes_data(tmp_path, 16), "--batch-size", "8", "--epochs", "1",
                     "--out", str(run)]) == 0
        assert not collectives and (run / "best.pt").is_file()
    finally:
        if dist.is_initialized():  # (main's cleanup ends the group)
            dist.destroy_process_group()


def test_persistent_workers_follow_the_epoch(tmp_path):
    """The resumable training loader keeps its 2 workers across epochs; the sampler's
    (epoch, index) pairs give them the epoch: the batches equal those of a loader without
    workers, epoch after epoch, and a start part-way into an epoch (a resume)."""
    from minidet.data import ShapesDataset, TrainTransform, build_loader

    def loader(workers):
        ds = ShapesDataset(16, 64, transform=TrainTransform(64, seed=3))
        ds.aug_seed = 3
        return build_loader(ds, batch_size=4, train=True, workers=workers, seed=3, pin_memory=False, resumable=True)

    def epoch(ld, e, skip=0):
        ld.sampler.set_epoch(e, skip=skip)
        return [(images, [t["image_id"] for t in targets]) for images, targets in ld]

    with_workers, without = loader(2), loader(0)
    assert with_workers.persistent_workers
    first = epoch(with_workers, 0)
    workers = with_workers._iterator._workers
    for e in (0, 1, 2):
        got, want = (first if e == 0 else epoch(with_workers, e)), epoch(without, e)
        assert [ids for _, ids in got] == [ids for _, ids in want]
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got, want, strict=True)), e
    assert with_workers._iterator._workers is workers  # the same processes throughout
    assert not torch.equal(first[0][0], epoch(without, 1)[0][0])  # epochs differ
    tail = epoch(with_workers, 2, skip=4)
    assert [ids for _, ids in tail] == [ids for _, ids in epoch(without, 2)][1:]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(tail, epoch(without, 2)[1:], strict=True))
    assert without.dataset[(1, 5)]["boxes"].tolist() == epoch_item(without.dataset, 1, 5)


def epoch_item(ds, e, index):
    """Item ``index`` with the epoch set the old way (on the dataset): a plain int index."""
    previous, ds.epoch = ds.epoch, e
    try:
        return ds[index]["boxes"].tolist()
    finally:
        ds.epoch = previous
