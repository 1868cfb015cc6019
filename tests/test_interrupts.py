"""Ctrl-C (SIGINT) at any instant of python -m minidet.train: resuming from the last.pt it leaves
repeats the uninterrupted run bit for bit (per-iteration losses, weights, BatchNorm statistics,
optimiser state and step counts, schedule, EMA, RNGs); what the run says it saved is what is on
disk; stale temporary checkpoint files go away when a run (re)starts.

The random-instant tests run the training in child processes forked from one interpreter that
imported minidet once (importing torch + torchvision takes seconds, a run of 8 iterations a
fraction of one); the child runs ``minidet.train.main`` as ``python -m minidet.train`` does, with
tracing hooks that note which phase of the loop each SIGINT landed in. One test starts a plain
``python -m minidet.train`` and interrupts it while it starts up. The targeted tests raise the
signal from inside the phase itself (a BatchNorm forward hook, a gradient hook, the optimiser's
post-step hook, ...), in this process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from minidet.engine.checkpoint import load_checkpoint
from minidet.engine.trainer import Trainer
from minidet.train import main

ARGS = ["--epochs", "2", "--img-size", "64", "--batch-size", "4", "--shapes-images", "16", "--val-split", "none",
        "--workers", "0", "--quiet", "--log-interval", "1", "--warmup-iters", "2", "--device", "cpu", "--seed", "0"]
ITERS_PER_EPOCH, EPOCHS = 4, 2

# The phases the tracer marks, grouped as the brief of a random instant names them.
CATEGORIES = {
    "setting up": ("setup",),  # main() before Trainer.fit: arguments, data, model, Trainer
    "data loading": ("data loading", "to device"),
    "forward": ("forward", "loss"),
    "backward": ("backward",),
    "optimizer step": ("clip grad", "optimizer step", "after optimizer step", "ema update"),
    "logging": ("logging", "between iterations"),
    "checkpoint write": ("checkpoint write", "after checkpoint write"),
    "closing logs": ("closing logs",),
}

PHASES_TRACED = [p for phases in CATEGORIES.values() for p in phases]

ZYGOTE = r'''
import json, mmap, os, signal, struct, sys, time, traceback
TRACE = {"path": None, "phase": "zygote", "events": []}
PHASE_IDS = {name: i for i, name in enumerate(json.loads(sys.argv[1]))}
SHARED = mmap.mmap(-1, 8 * len(PHASE_IDS))  # how often the child entered each phase, read by this process
COUNTS = [0] * len(PHASE_IDS)

def mark(name):
    TRACE["phase"] = name
    TRACE["events"].append((time.monotonic(), name))
    i = PHASE_IDS.get(name)
    if i is not None:
        COUNTS[i] += 1
        struct.pack_into("<q", SHARED, 8 * i, COUNTS[i])

_signal = signal.signal

def _recording_signal(signum, handler):  # note the phase each SIGINT lands in, then handle it as asked
    if signum == signal.SIGINT and callable(handler) and not getattr(handler, "_recording", False):
        inner = handler
        def handler(s, f, inner=inner):
            with open(TRACE["path"] + ".landed", "a") as fh:
                fh.write(json.dumps([TRACE["phase"], time.monotonic()]) + "\n")
            return inner(s, f)
        handler._recording = True
    return _signal(signum, handler)

signal.signal = _recording_signal
signal.signal(signal.SIGINT, signal.default_int_handler)

import torch
import torch.utils.data.dataloader as dl
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
import minidet.train
from minidet.engine import run_state
from minidet.engine import trainer as tr

def wrap(owner, name, label, after=None):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        mark(label)
        out = original(*args, **kwargs)
        if after:
            mark(after)
        return out
    setattr(owner, name, wrapped)

wrap(dl._SingleProcessDataLoaderIter, "_next_data", "data loading", after="to device")
wrap(torch.amp.GradScaler, "scale", "backward")
wrap(torch.nn.utils, "clip_grad_norm_", "clip grad")
wrap(tr.ModelEMA, "update", "ema update")
wrap(tr.RunLogger, "log", "logging", after="between iterations")
wrap(tr.RunLogger, "close", "closing logs")
wrap(run_state, "save_checkpoint", "checkpoint write", after="after checkpoint write")
register_optimizer_step_pre_hook(lambda *a: mark("optimizer step"))
register_optimizer_step_post_hook(lambda *a: mark("after optimizer step"))
_init, _fit = tr.Trainer.__init__, tr.Trainer.fit

def init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.model.register_forward_pre_hook(lambda *a: mark("forward"))
    self.model.criterion.register_forward_pre_hook(lambda *a: mark("loss"))

def fit(self):
    marker = TRACE["path"] + ".fit"
    with open(marker + ".part", "w") as fh:
        fh.write(repr(time.monotonic()))
    os.replace(marker + ".part", marker)
    mark("fit")
    try:
        return _fit(self)
    finally:
        mark("after fit")

tr.Trainer.__init__, tr.Trainer.fit = init, fit

def child(job):
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    TRACE["events"] = []
    mark("setup")
    code = 1
    try:
        code = minidet.train.main(job["argv"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 3  # what python -m minidet.train would end with: a KeyboardInterrupt traceback
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        mark("exit")
        with open(job["trace"] + ".events", "w") as fh:
            json.dump(TRACE["events"], fh)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

def wait_for(pid, condition):
    """Spin until condition() (-> None) or the child ended (-> its wait status)."""
    n = 0
    while not condition():
        n += 1
        if n % 256 == 0:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
    return None


for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    SHARED[:] = bytes(len(SHARED))
    TRACE["path"] = job["trace"]
    t_fork = time.monotonic()
    pid = os.fork()
    if pid == 0:
        COUNTS[:] = [0] * len(COUNTS)
        child(job)
    status, sent, t0 = None, None, None
    if job.get("target") is not None:  # SIGINT `offset` s after the child entered that phase the n-th time
        i, n = PHASE_IDS[job["target"]], job["occurrence"]
        status = wait_for(pid, lambda: struct.unpack_from("<q", SHARED, 8 * i)[0] >= n)
        t0 = time.monotonic()
    elif job.get("kill_at") is not None:  # SIGINT `kill_at` s after Trainer.fit started (or after the fork)
        marker, t0 = job["trace"] + ".fit", t_fork
        if job["from"] == "fit":
            status = wait_for(pid, lambda: os.path.exists(marker))
            t0 = float(open(marker).read()) if status is None else None
    if status is None and t0 is not None:
        deadline = t0 + (job["offset"] if job.get("target") is not None else job["kill_at"])
        while time.monotonic() < deadline:
            pass
        os.kill(pid, signal.SIGINT)  # not waited for yet: still this process's child (or its zombie)
        sent = time.monotonic() - t0
    if status is None:
        _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "sent": sent}), flush=True)
'''


class ForkServer:
    """A python process that imported minidet once and forks one child per training run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # single-threaded: safe to fork
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, json.dumps(PHASES_TRACED)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=folder)
        self.n = 0

    def run(self, argv: list[str], kill_at: float | None = None, start: str = "fit", target: tuple | None = None) -> dict:
        """Run ``main(argv)`` in a fresh child; ``kill_at``: SIGINT that many seconds after the
        child's Trainer.fit started (``start="fit"``) or after the fork (``"fork"``); ``target``
        (phase, n, offset): SIGINT ``offset`` seconds after the child entered ``phase`` the n-th time."""
        self.n += 1
        base = self.folder / f"job{self.n}"
        job = {"argv": argv, "log": f"{base}.log", "trace": str(base), "kill_at": kill_at, "from": start}
        if target is not None:
            job.update(target=target[0], occurrence=target[1], offset=target[2])
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the fork server died"
        result = json.loads(reply)
        result["output"] = Path(f"{base}.log").read_text()
        landed = Path(f"{base}.landed")
        result["landed"] = [json.loads(line)[0] for line in landed.read_text().splitlines()] if landed.exists() else []
        result["events"] = json.loads(Path(f"{base}.events").read_text()) if Path(f"{base}.events").exists() else []
        return result

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ------------------------------------------------------------------------------------ helpers


def train_records(run: Path) -> list[dict]:
    """The per-iteration records of metrics.jsonl without the wall-clock throughput."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if k != "img_per_s"} for r in map(json.loads, lines) if r["kind"] != "eval"]


def eval_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "eval"]


def assert_same(a, b, where: str = "checkpoint") -> None:
    """Bitwise equality of nested checkpoint contents."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max abs diff {(a.double() - b.double()).abs().max().item()})"
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_final_state(run: Path, reference: Path) -> None:
    """last.pt of ``run`` equals the uninterrupted ``reference``'s (all but the command line and
    the training wall clock)."""
    got, want = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    assert got.keys() == want.keys()
    for key in want:
        if key not in ("args", "train_seconds"):  # the command line, the wall clock
            assert_same(got[key], want[key], key)
    # what the brief names, spelled out: BatchNorm statistics and AdamW's step counts
    assert any(k.endswith("running_var") for k in want["model"])
    steps = {float(s["step"]) for s in got["optimizer"]["state"].values()}
    assert steps == {float(EPOCHS * ITERS_PER_EPOCH)}
    assert train_records(run) == train_records(reference)  # every iteration logged once, same losses


def category(phase: str) -> str:
    for name, phases in CATEGORIES.items():
        if phase in phases:
            return name
    return phase


def phase_intervals(events: list) -> list[tuple[float, float, str]]:
    """(start, end, phase) relative to Trainer.fit's start, from a traced reference run."""
    t0 = next(t for t, name in events if name == "fit")
    spans = [(a - t0, b - t0, name) for (a, name), (b, _) in zip(events, events[1:], strict=False)]
    return [s for s in spans if s[0] >= 0 and s[2] not in ("fit", "after fit", "exit")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ForkServer(tmp_path_factory.mktemp("forks"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory):
    """The uninterrupted run (traced): its folder and the phase timeline of its Trainer.fit."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = server.run([*ARGS, "--out", str(run)])
    assert result["exit"] == 0, result["output"][-3000:]
    assert len(train_records(run)) == EPOCHS * ITERS_PER_EPOCH
    return run, result["events"]


def interrupt_and_resume(server, run: Path, **when) -> dict:
    """Train into ``run`` with one SIGINT (``when``: ForkServer.run's arguments); check what the
    run said; resume (or restart) it to the end. -> the interrupted run's result."""
    first = server.run([*ARGS, "--out", str(run)], **when)
    out, last = first["output"], run / "last.pt"
    if first["exit"] == 130:  # Trainer.fit caught it: last.pt holds the state it names
        st = load_checkpoint(last)["train_state"]
        assert f"interrupted: saved {last} (epoch {st['epoch']}, iteration {st['iteration']})" in out, out[-3000:]
    elif first["exit"] != 0:  # outside Trainer.fit (setting up, or after it): no claim of a checkpoint
        assert "interrupted: saved" not in out, out[-3000:]
    if last.is_file():
        second = server.run(["--resume", str(last), "--quiet", "--workers", "0"])
    else:
        assert not (run / "metrics.jsonl").exists() or not train_records(run)
        second = server.run([*ARGS, "--out", str(run)])
    assert second["exit"] == 0, second["output"][-3000:]
    return first


def occurrences(events: list) -> list[tuple[str, int, float]]:
    """(phase, n, duration): the n-th time the traced reference run entered that phase."""
    seen, out = {}, []
    for (t, name), (t_next, _) in zip(events, events[1:], strict=False):
        seen[name] = seen.get(name, 0) + 1
        if name in PHASES_TRACED:
            out.append((name, seen[name], t_next - t))
    return out


def draw_instants(reference_events, rng: np.random.Generator, plan: list[str]) -> list[dict]:
    """ForkServer.run arguments for one SIGINT per entry of ``plan``: a category (aimed at a
    random instant of a random occurrence of it in the reference run's timeline) or "anywhere"
    (a uniform instant of the reference run's Trainer.fit)."""
    fit_time = phase_intervals(reference_events)[-1][1]
    todo = []
    for name in plan:
        if name == "anywhere":
            todo.append({"kill_at": float(rng.uniform(0, fit_time))})
            continue
        options = [o for o in occurrences(reference_events) if category(o[0]) == name]
        assert options, f"the reference run never was in {name}"
        phase, n, duration = options[rng.integers(len(options))]
        todo.append({"target": (phase, n, float(rng.uniform(0, duration)))})
    return todo


def check_random_instants(server, reference, tmp_path, plan, seed) -> dict:
    ref_run, ref_events = reference
    rng = np.random.default_rng(seed)
    landings = {}
    for i, (aimed, when) in enumerate(zip(plan, draw_instants(ref_events, rng, plan), strict=True)):
        run = tmp_path / f"cut{i}"
        first = interrupt_and_resume(server, run, **when)
        landed = category(first["landed"][0]) if first["landed"] else "after the run ended"
        desc = (f"{when['target'][0]}#{when['target'][1]}+{when['target'][2] * 1000:.2f}ms" if "target" in when
                else f"fit+{when['kill_at'] * 1000:.1f}ms")
        landings.setdefault(landed, []).append(f"{aimed}: {desc} -> exit {first['exit']}")
        assert_same_final_state(run, ref_run)
    print("\nSIGINT landings (landed phase: aimed category: instant -> exit status):", json.dumps(landings, indent=1))
    return landings


# ------------------------------------------------------------------------ random instants


def test_sigint_at_random_instants_resumes_exactly(server, reference, tmp_path):
    plan = ["forward", "backward", "optimizer step", "data loading", "checkpoint write", "logging",
            "optimizer step", "anywhere", "anywhere", "anywhere"]
    landings = check_random_instants(server, reference, tmp_path, plan, seed=20240601)
    assert sum(len(v) for v in landings.values()) == len(plan)


def test_sigint_during_setup_restarts_from_scratch(server, reference, tmp_path):
    """A SIGINT before Trainer.fit (data and model being built): no checkpoint, no claim of one.
    Aimed inside the setup of a run like this one (the reference's setup is the first and slower:
    its renders and lazy imports are not warm yet, so 80% of it can fall after fit started)."""
    warm = server.run([*ARGS, "--out", str(tmp_path / "warm")])
    assert warm["exit"] == 0, warm["output"][-3000:]
    setup = min(o[2] for events in (reference[1], warm["events"]) for o in occurrences(events) if o[0] == "setup")
    run = tmp_path / "early"
    first = interrupt_and_resume(server, run, target=("setup", 1, 0.8 * setup * np.random.default_rng().random()))
    if first["exit"] == 0:
        # the KeyboardInterrupt was raised where CPython swallows it ("Exception ignored in ..."):
        # the run went on and finished
        assert "Exception ignored" in first["output"], first["output"][-3000:]
    else:
        assert first["exit"] != 130 and first["landed"] == ["setup"], (first["exit"], first["landed"])
    assert_same_final_state(run, reference[0])


@pytest.mark.slow
def test_sigint_at_many_random_instants_resumes_exactly(server, reference, tmp_path):
    plan = [name for name in [*CATEGORIES, "anywhere"] for _ in range(6)]
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print("seed", seed)
    check_random_instants(server, reference, tmp_path, plan, seed=seed)


def test_python_m_minidet_train_interrupted_while_starting(reference, tmp_path):
    """A plain python -m minidet.train, SIGINT at a random instant of its start-up (imports,
    data, model): it exits non-zero without claiming a checkpoint; started again it ends in the
    reference state."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "minidet.train", *ARGS, "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    time.sleep(float(np.random.default_rng().uniform(0.3, 1.5)))
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode == 0:
        # the signal landed where CPython itself swallows the KeyboardInterrupt (an "Exception
        # ignored in ..." during an import): the run went on and finished
        assert_same_final_state(run, reference[0])
        return
    assert "saved" not in out and not (run / "last.pt").exists(), out[-3000:]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert_same_final_state(run, reference[0])


# ------------------------------------------------------------------------ targeted phases


@pytest.fixture(scope="module")
def inprocess_reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("inproc") / "ref"
    assert main([*ARGS, "--out", str(run)]) == 0
    return run


class Catch:
    """The Trainer main() builds, and a way to hook into it."""

    def __init__(self, monkeypatch) -> None:
        self.trainer = None
        original = Trainer.__init__

        def init(trainer, *args, **kwargs):
            original(trainer, *args, **kwargs)
            self.trainer = trainer
            for hook in self.on_init:
                hook(trainer)

        self.on_init = []
        monkeypatch.setattr(Trainer, "__init__", init)


def sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def interrupted_main(argv) -> tuple[int, str]:
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is restored
    return stop.value.code


def resume_to_end(run: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["--resume", str(run / "last.pt"), "--quiet", "--workers", "0"]) == 0
    return capsys.readouterr().out


def bn_forward_hook(at_iteration, action):
    """A forward hook on the first BatchNorm of the model (it has updated its running statistics
    when the hook runs) calling ``action`` once, during the step that makes ``at_iteration``."""
    fired = []

    def install(trainer):
        bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))

        def hook(module, inputs, output):
            if module.training and trainer.state.iteration == at_iteration - 1 and not fired:
                fired.append(True)
                action()

        bn.register_forward_hook(hook)

    return install


def grad_hook(at_iteration):
    def install(trainer):
        p = next(p for p in trainer.model.parameters() if p.ndim == 4)
        p.register_hook(lambda g: sigint() if trainer.state.iteration == at_iteration - 1 else None)

    return install


def after_optimizer_step(at_iteration):
    def install(trainer):  # after optimizer.step(), before the scheduler, the EMA and the counter
        trainer.optimizer.register_step_post_hook(
            lambda *a: sigint() if trainer.state.iteration == at_iteration - 1 else None)

    return install


PHASES = {
    # name: (hook installer, the iteration last.pt must hold)
    "forward (after BatchNorm updated its statistics)": (bn_forward_hook(6, sigint), 6),
    "backward": (grad_hook(3), 3),
    "after optimizer.step": (after_optimizer_step(7), 7),
    "first iteration": (bn_forward_hook(1, sigint), 1),
    "last iteration of an epoch": (after_optimizer_step(4), 4),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_sigint_inside_a_phase_finishes_the_iteration(phase, inprocess_reference, tmp_path, monkeypatch, capsys):
    install, saved_at = PHASES[phase]
    catch = Catch(monkeypatch)
    catch.on_init.append(install)
    run = tmp_path / "run"
    assert interrupted_main([*ARGS, "--out", str(run)]) == 130
    out = capsys.readouterr()
    st = load_checkpoint(run / "last.pt")["train_state"]
    assert st["iteration"] == saved_at and st["batch_in_epoch"] == saved_at % ITERS_PER_EPOCH
    assert f"interrupted: saved {run / 'last.pt'} (epoch {st['epoch']}, iteration {saved_at})" in out.out
    assert "Ctrl-C: stopping after the current step" in out.err
    monkeypatch.undo()
    resume_to_end(run, capsys)
    assert_same_final_state(run, inprocess_reference)


def test_sigint_while_fetching_a_batch(inprocess_reference, tmp_path, monkeypatch, capsys):
    import torch.utils.data.dataloader as dl

    original, calls = dl._SingleProcessDataLoaderIter._next_data, []

    def next_data(self):
        calls.append(1)
        if len(calls) == 3:
            sigint()
        return original(self)

    monkeypatch.setattr(dl._SingleProcessDataLoaderIter, "_next_data", next_data)
    run = tmp_path / "run"
    assert interrupted_main([*ARGS, "--out", str(run)]) == 130
    assert len(calls) == 3  # no batch fetched after the Ctrl-C
    assert load_checkpoint(run / "last.pt")["train_state"]["iteration"] == 2  # the fetched batch is not used
    monkeypatch.undo()
    resume_to_end(run, capsys)
    assert_same_final_state(run, inprocess_reference)


def test_a_worker_stopped_by_the_same_sigint(inprocess_reference, tmp_path, monkeypatch, capsys):
    """With DataLoader workers the Ctrl-C also stops them; a fetch that then fails is the
    interrupt, not an error (simulated: the fetch raises what torch raises)."""
    import torch.utils.data.dataloader as dl

    original, calls = dl._SingleProcessDataLoaderIter._next_data, []

    def next_data(self):
        calls.append(1)
        if len(calls) == 6:
            sigint()
            raise RuntimeError("DataLoader worker (pid(s) 12345) exited unexpectedly")
        return original(self)

    monkeypatch.setattr(dl._SingleProcessDataLoaderIter, "_next_data", next_data)
    run = tmp_path / "run"
    assert interrupted_main([*ARGS, "--out", str(run)]) == 130
    assert load_checkpoint(run / "last.pt")["train_state"]["iteration"] == 5
    monkeypatch.undo()
    resume_to_end(run, capsys)
    assert_same_final_state(run, inprocess_reference)


def test_sigint_while_writing_a_checkpoint(inprocess_reference, tmp_path, monkeypatch, capsys):
    original, calls = torch.save, []

    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the end of epoch 1
            sigint()
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    assert interrupted_main([*ARGS, "--out", str(run)]) == 130
    assert len(calls) == 1  # written once: the state did not change after it
    st = load_checkpoint(run / "last.pt")["train_state"]
    assert (st["epoch"], st["iteration"], st["batch_in_epoch"]) == (1, 4, 0)
    monkeypatch.undo()
    resume_to_end(run, capsys)
    assert_same_final_state(run, inprocess_reference)


def test_second_sigint_stops_at_once_and_keeps_the_previous_checkpoint(inprocess_reference, tmp_path, monkeypatch,
                                                                       capsys):
    catch = Catch(monkeypatch)
    catch.on_init.append(bn_forward_hook(6, lambda: (sigint(), sigint())))
    run = tmp_path / "run"
    assert interrupted_main([*ARGS, "--out", str(run)]) == 130
    out = capsys.readouterr().out
    st = load_checkpoint(run / "last.pt")["train_state"]
    assert (st["epoch"], st["iteration"]) == (1, 4)  # the end of epoch 1, not the half-done iteration 6
    assert "stopped at once by a second Ctrl-C" in out and "the current state was not saved" in out
    assert f"the newest checkpoint is {run / 'last.pt'} (epoch 1, iteration 4)" in out
    assert "interrupted: saved" not in out
    monkeypatch.undo()
    resume_to_end(run, capsys)
    ref = load_checkpoint(inprocess_reference / "last.pt")
    got = load_checkpoint(run / "last.pt")
    for key in ("model", "optimizer", "scheduler", "ema", "rng"):
        assert_same(got[key], ref[key], key)
    records = {r["iteration"]: r for r in train_records(run)}  # iteration 5 was logged twice
    assert list(records.values()) == train_records(inprocess_reference)


def test_second_sigint_during_the_final_write_waits_for_it(inprocess_reference, tmp_path, monkeypatch, capsys):
    catch = Catch(monkeypatch)
    catch.on_init.append(bn_forward_hook(6, sigint))
    original, calls = torch.save, []

    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the write after the first Ctrl-C (the first one: end of epoch 1)
            sigint()
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    assert interrupted_main([*ARGS, "--out", str(run)]) == 130
    out = capsys.readouterr().out
    assert f"interrupted: saved {run / 'last.pt'} (epoch 1, iteration 6)" in out
    assert load_checkpoint(run / "last.pt")["train_state"]["iteration"] == 6
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    resume_to_end(run, capsys)
    assert_same_final_state(run, inprocess_reference)


def test_keyboard_interrupt_inside_an_iteration_is_not_saved(tmp_path, monkeypatch, capsys):
    """A KeyboardInterrupt that did not go through the flag (another thread's signal handling,
    code raising it) in the middle of an iteration: nothing half-done is saved."""
    def stop():
        raise KeyboardInterrupt

    catch = Catch(monkeypatch)
    catch.on_init.append(bn_forward_hook(6, stop))
    run = tmp_path / "run"
    assert interrupted_main([*ARGS, "--out", str(run)]) == 130
    out = capsys.readouterr().out
    assert "stopped during iteration 6" in out and "the current state was not saved" in out
    assert load_checkpoint(run / "last.pt")["train_state"]["iteration"] == 4


def test_interrupt_before_the_first_checkpoint_says_so(tmp_path, monkeypatch, capsys):
    catch = Catch(monkeypatch)
    catch.on_init.append(bn_forward_hook(1, lambda: (sigint(), sigint())))
    run = tmp_path / "run"
    assert interrupted_main([*ARGS, "--out", str(run)]) == 130
    out = capsys.readouterr().out
    assert "before the first checkpoint: no checkpoint was written" in out and "interrupted: saved" not in out
    assert not (run / "last.pt").exists()


def with_validation(tmp_path, *extra) -> list[str]:
    data = tmp_path / "shapes.yaml"
    data.write_text("format: shapes\ntrain: {num_images: 16, image_size: 64}\nval: {num_images: 8, image_size: 64}\n")
    return [a for a in ARGS if a not in ("--val-split", "none")] + ["--data", str(data), *extra]


def test_sigint_during_evaluation(tmp_path, monkeypatch, capsys):
    """The flag is checked after the evaluation (which finishes); an evaluation that fails
    because the Ctrl-C stopped its workers is done again after the resume."""
    args = with_validation(tmp_path, "--eval-interval", "1")
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    import minidet.engine.validation as validation

    original, calls = validation.evaluate_detector, []

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            sigint()
            return original(*a, **k)  # finishes
        if len(calls) == 2:  # after the resume: the second epoch's evaluation fails
            sigint()
            raise RuntimeError("DataLoader worker (pid(s) 12345) exited unexpectedly")
        return original(*a, **k)

    monkeypatch.setattr(validation, "evaluate_detector", evaluate)
    run = tmp_path / "run"
    assert interrupted_main([*args, "--out", str(run)]) == 130
    st = load_checkpoint(run / "last.pt")["train_state"]
    assert (st["epoch"], st["iteration"], st["eval_pending"]) == (1, 4, False)
    assert len(eval_records(run)) == 1 and (run / "best.pt").is_file()
    capsys.readouterr()
    assert interrupted_main(["--resume", str(run / "last.pt"), "--quiet", "--workers", "0"]) == 130
    st = load_checkpoint(run / "last.pt")["train_state"]
    assert (st["epoch"], st["iteration"], st["eval_pending"]) == (2, 8, True)  # trained, not evaluated yet
    assert len(eval_records(run)) == 1
    monkeypatch.undo()
    resume_to_end(run, capsys)
    assert_same_final_state(run, tmp_path / "ref")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "img_per_s"} for r in rs]  # noqa: E731
    assert strip(eval_records(run)) == strip(eval_records(tmp_path / "ref"))
    assert_same(load_checkpoint(run / "best.pt")["model"], load_checkpoint(tmp_path / "ref" / "best.pt")["model"])


def test_sigint_during_the_final_evaluation_of_main(tmp_path, monkeypatch, capsys):
    """main's evaluation after training (no per-epoch one ran): interruptible too."""
    args = with_validation(tmp_path, "--epochs", "0")
    import minidet.engine.validation as validation

    original = validation.evaluate_detector

    def evaluate(*a, **k):
        sigint()
        return original(*a, **k)

    monkeypatch.setattr(validation, "evaluate_detector", evaluate)
    assert interrupted_main([*args, "--out", str(tmp_path / "run")]) == 130
    assert "interrupted during the evaluation" in capsys.readouterr().out


# ------------------------------------------------------------------ truthful files and messages


def test_epochs_0_claims_no_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*ARGS, "--epochs", "0", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint was written" in out and "checkpoints:" not in out
    assert not (run / "last.pt").exists()


def test_non_finite_guard_before_any_checkpoint(tmp_path, monkeypatch, capsys):
    from minidet.criterion import DenseCriterion

    original = DenseCriterion.forward

    def always_nan(self, outputs, targets):
        out = original(self, outputs, targets)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(DenseCriterion, "forward", always_nan)
    run = tmp_path / "run"
    assert main([*ARGS, "--max-bad-steps", "2", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "2 consecutive non-finite losses" in err and "No checkpoint was written yet" in err
    assert "last good checkpoint" not in err and not (run / "last.pt").exists()


def test_stale_temporary_files_are_removed_when_a_run_starts_or_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".last.pt.123.tmp", run / ".best.pt.k2j_x9ab.tmp"]
    keep = [run / ".notes.tmp", run / "last.pt.tmp", run / "data.tmp"]
    for path in stale + keep:
        path.write_bytes(b"partial")
    assert main([*ARGS, "--epochs", "1", "--out", str(run)]) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert f"removed {stale[0]}" in capsys.readouterr().out
    (run / ".last.pt.456.tmp").write_bytes(b"partial")
    assert main(["--resume", str(run / "last.pt"), "--epochs", "2", "--quiet", "--workers", "0"]) == 0
    assert not (run / ".last.pt.456.tmp").exists()
    assert load_checkpoint(run / "last.pt")["train_state"]["iteration"] == 8


@pytest.mark.slow
def test_sigint_to_the_process_group_with_dataloader_workers(tmp_path):
    """As a terminal's Ctrl-C: SIGINT to the main process and its 2 DataLoader workers at random
    instants of the training; every interrupted run resumes (with workers) to the reference."""
    args = [*ARGS[:ARGS.index("--workers")], "--workers", "2", *ARGS[ARGS.index("--workers") + 2:],
            "--shapes-images", "32"]  # 8 iterations per epoch
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(argv):  # its own session: the process group holds the run and its workers only
        return subprocess.Popen([sys.executable, "-m", "minidet.train", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)

    ref = tmp_path / "ref"
    proc = start([*args, "--out", str(ref)])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    rng = np.random.default_rng()
    for i in range(4):
        run = tmp_path / f"cut{i}"
        proc = start([*args, "--out", str(run)])
        while not (run / "metrics.jsonl").exists() and proc.poll() is None:  # the first iteration is logged
            time.sleep(0.001)
        time.sleep(float(rng.uniform(0, 0.8)))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode in (0, 130), out[-3000:]
        assert out.count("Ctrl-C: stopping") <= 1  # said once, by the main process
        resume = ["--resume", str(run / "last.pt"), "--quiet", "--workers", "2"]
        done = subprocess.run([sys.executable, "-m", "minidet.train", *resume], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        got, want = load_checkpoint(run / "last.pt"), load_checkpoint(ref / "last.pt")
        for key in want:
            if key not in ("args", "train_seconds"):
                assert_same(got[key], want[key], key)
        assert train_records(run) == train_records(ref)
