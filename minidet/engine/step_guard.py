"""Whether a training step is applied: one decision after the backward pass, agreed by every
process, and the messages of a skipped step (``StepGuard``); ``TrainingError`` when training
cannot go on."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from ..distributed import get_rank, is_main
from .interrupts import StopControl
from .run_state import TrainState

__all__ = ["TrainingError", "StepGuard"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says why and what to do.

    ``every_process``: raised at the same point by every process of a distributed run, so that they
    can wait for each other before exiting (each one's message is then printed before torchrun
    stops the others)."""

    def __init__(self, message: str, *, every_process: bool = False):
        super().__init__(message)
        self.every_process = every_process


class StepGuard:
    """The step's finiteness check, from one small flag tensor built on the device: one host sync
    and no collective on one process; under DDP one all_reduce on the gloo flag group of
    ``stop``, which also carries this process's Ctrl-C flag (``StopControl.agreed``), so that
    every process skips or applies the same steps and stops after the same iteration.
    ``max_bad_steps`` skipped steps in a row stop the run with a TrainingError naming the newest
    checkpoint (``last_checkpoint()``) and ``run_dir``."""

    def __init__(self, *, scaler: torch.amp.GradScaler, stop: StopControl, max_bad_steps: int,
                 last_checkpoint: Callable[[], str | None], run_dir) -> None:
        self.scaler, self.stop, self.max_bad_steps = scaler, stop, max_bad_steps
        self.last_checkpoint, self.run_dir = last_checkpoint, run_dir

    def agree(self, loss: torch.Tensor, grad_norm: torch.Tensor | None,
              optimizer: torch.optim.Optimizer) -> tuple[bool, bool, bool]:
        """-> (this process's loss is not finite, some process's loss is not finite, inf / NaN
        gradients: the GradScaler's found_inf under fp16, else the total gradient norm), from the
        flags [loss not finite, gradient norm not finite, GradScaler's found_inf per device...].
        DDP: copied to the host (the one sync), the Ctrl-C flag appended, MAX-reduced over the
        processes (MAX of "not finite" = MIN of "finite"): every process gets the same answer."""
        flags = [(~torch.isfinite(loss.detach())).reshape(1).float()]
        if grad_norm is not None:
            flags.append((~torch.isfinite(grad_norm.detach())).reshape(1).float().to(flags[0].device))
        if self.scaler.is_enabled():  # filled by unscale_ (a private GradScaler accessor, stable since torch 1.6)
            flags += [f.reshape(1).to(flags[0].device, torch.float32)
                      for f in self.scaler._found_inf_per_device(optimizer).values()]
        flags = torch.cat(flags)
        if self.stop.group is None:
            values = flags.tolist()  # the step's one host sync
            return bool(values[0]), bool(values[0]), any(values[1:])
        host = flags.cpu()  # the step's one host sync
        local_bad = bool(host[0])
        host = torch.cat([host, torch.tensor([float(self.stop.flag.requested)])])
        dist.all_reduce(host, op=dist.ReduceOp.MAX, group=self.stop.group)
        values = host.tolist()
        self.stop.agreed = bool(values[-1])
        return local_bad, bool(values[0]), any(values[1:-1])

    def skipped(self, losses: dict, local_bad: bool, any_bad: bool, state: TrainState) -> None:
        """Count a skipped step and say why; a TrainingError (every process) after
        ``max_bad_steps`` in a row."""
        bad = [k for k, v in losses.items() if not torch.isfinite(v).all()] if local_bad else []
        where = (f"components {', '.join(bad)}" if bad else "on another process" if any_bad else
                 "the gradients of finite losses")
        state.bad_steps += 1
        it, n = state.iteration, state.bad_steps
        if not any_bad:  # finite losses everywhere, inf / NaN gradients (the same on every process)
            if is_main():
                print(f"warning: non-finite gradients (finite loss) at iteration {it}; step skipped ({n} in a row)")
        elif self.stop.group is None:
            print(f"warning: non-finite loss at iteration {it} (components: {', '.join(bad)}); step skipped "
                  f"({n} in a row)")
        elif local_bad:
            print(f"warning: non-finite loss at iteration {it} on rank {get_rank()} (components: {', '.join(bad)}); "
                  f"step skipped by every process ({n} in a row)")
        elif is_main():
            print(f"warning: non-finite loss at iteration {it} on another process; step skipped by every process "
                  f"({n} in a row)")
        if n >= self.max_bad_steps:
            newest = self.last_checkpoint()
            saved = (f"The last good checkpoint is {newest}." if newest is not None else
                     f"No checkpoint was written yet ({self.run_dir / 'last.pt'} does not exist).")
            raise TrainingError(
                f"{n} consecutive non-finite losses (last at iteration {it}, {where}); stopped. {saved} Lower --lr, "
                f"raise --warmup-iters, set --clip-grad, or check the data with python -m minidet.data.check",
                every_process=True)
