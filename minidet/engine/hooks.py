"""A trainer made of parts (detectron2's ``TrainerBase`` + ``HookBase``: hooks registered in
order, each called at the same points of every run) and the trainer's hooks: the EMA of the
weights, the training log with its progress bar, and the periodic evaluation that keeps best.pt."""

from __future__ import annotations

import math
import time
from typing import NoReturn

from ..distributed import is_main, world_size
from ..evaluation.figures import write_evaluation_figures
from ..evaluation.per_class import flat_per_class, per_class_results, worst_class
from ..progress import progress_bar
from .interrupts import StopRequested

__all__ = ["HookBase", "TrainerBase", "EMAHook", "LoggingHook", "EvalHook", "ESTIMATE_AFTER_STEPS"]

ESTIMATE_AFTER_STEPS = 10  # steps measured before the time of the run is estimated


class HookBase:
    """A part of the training loop; ``self.trainer`` is the trainer it was registered with.

    Called, in registration order: ``before_train``; per epoch ``before_epoch(batches, shown)``
    (the epoch's last batch index and the batches its progress bar shows), ``after_update``
    inside every applied step (after the optimizer and the schedule stepped), ``after_step(losses,
    images)`` after every iteration (``losses`` None: the step was skipped; ``images``: the
    batch's images on this process), ``end_epoch`` when the epoch's loop ends (also on an
    exception), ``after_epoch`` after each trained epoch or before a pending evaluation;
    ``after_train`` at the end of ``fit`` (also on an exception)."""

    trainer = None

    def before_train(self) -> None:
        pass

    def before_epoch(self, batches: int, shown: int) -> None:
        pass

    def after_update(self) -> None:
        pass

    def after_step(self, losses: dict | None, images: int) -> None:
        pass

    def end_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class TrainerBase:
    """Holds the hooks and calls them."""

    def __init__(self) -> None:
        self.hooks: list[HookBase] = []

    def register_hooks(self, hooks: list[HookBase]) -> None:
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def call_hooks(self, point: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, point)(*args)


class EMAHook(HookBase):
    """In every applied step: the EMA of the weights (``trainer.ema``) follows the model."""

    def after_update(self) -> None:
        self.trainer.ema.update(self.trainer.model)


class LoggingHook(HookBase):
    """Per epoch a progress bar; every ``log_interval`` iterations (and at the end of an epoch or
    of the run) a "train" record in the run's logs with the lr, images/s and the loss dict; once,
    after ESTIMATE_AFTER_STEPS steps, the time the rest of the run will take. Closes the logs at
    the end of training."""

    def __init__(self) -> None:
        self.announced = False

    def before_epoch(self, batches: int, shown: int) -> None:
        t = self.trainer
        st = t.state
        self.batches, self.t0, self.seen = batches, time.perf_counter(), 0
        self.bar = progress_bar(total=shown, initial=st.batch_in_epoch,
                                desc=f"epoch {st.epoch + 1}/{max(t.plan.epochs, st.epoch + 1)}",
                                disable=not is_main() or t.args.quiet)

    def after_step(self, losses: dict | None, images: int) -> None:
        t, st = self.trainer, self.trainer.state
        self.seen += images * world_size()
        speed = self.seen / max(time.perf_counter() - self.t0, 1e-9)
        if self.seen == ESTIMATE_AFTER_STEPS * images * world_size():
            self.announce(speed)
        if losses is not None and (st.iteration % t.args.log_interval == 0 or st.batch_in_epoch == self.batches
                                   or st.iteration == t.plan.total_iters):
            record = {"kind": "train", "epoch": st.epoch, "iteration": st.iteration,
                      "lr": t.optimizer.param_groups[0]["lr"], "img_per_s": speed,
                      **{k: float(v) for k, v in losses.items()}}
            if t.logger is not None:
                t.logger.log(record)
            self.bar.set_postfix({k: f"{record[k]:.3g}" for k in record
                                  if k in ("loss", "cls", "reg", "lr", "img_per_s") or k.startswith("weight_")})
        self.bar.update(1)

    def end_epoch(self) -> None:
        self.bar.close()

    def announce(self, img_per_s: float) -> None:
        """Once, on the main process: the time the rest of the run's steps take at this speed."""
        if self.announced or not is_main():
            return
        self.announced = True
        t = self.trainer
        left = max(0, t.plan.total_iters - t.state.iteration)
        minutes = left * t.args.batch_size * world_size() / img_per_s / 60
        print(f"speed: {img_per_s:.1f} images/s over the first {ESTIMATE_AFTER_STEPS} steps; the remaining {left} "
              f"steps take about {minutes:.1f} min (evaluations not included)", flush=True)

    def after_train(self) -> None:
        if self.trainer.logger is not None:
            self.trainer.logger.close()


class EvalHook(HookBase):
    """When an evaluation is due (``state.eval_pending``): ``trainer.evaluate()``, the val line
    with the worst class, an "eval" record, and best.pt when the AP is the best so far.
    ``latest``: the stats of the evaluation after the last trained epoch (None if it had none)."""

    def __init__(self) -> None:
        self.latest: dict | None = None
        self.in_fit = False

    def before_train(self) -> None:
        self.in_fit = True

    def after_train(self) -> None:
        self.in_fit = False

    def evaluate(self) -> dict:
        """``trainer.validation.evaluate()``; after the final evaluation (the run's epochs done)
        rank 0 writes its figures into the run folder. A Ctrl-C during it lets it finish; inside
        ``fit`` the loop then saves last.pt and stops, on its own (the final evaluation of
        python -m minidet.train) it exits with status 130."""
        t = self.trainer
        stats = t.validation.evaluate(stop_if_interrupted=not self.in_fit)
        if is_main() and t.state.epoch >= t.plan.epochs and t.args.plots:
            write_evaluation_figures(t.last_evaluation, t.val_set, t.run_dir)
        return stats

    def interrupted(self) -> NoReturn:
        """An evaluation a Ctrl-C stopped: inside fit the loop saves last.pt with the evaluation
        still pending; otherwise say where the trained weights are and exit with 130."""
        t = self.trainer
        if self.in_fit:
            raise StopRequested(agreed=t.stop.group is None)
        if is_main():
            newest = t._last_checkpoint()
            after = (f"; the trained weights are in {newest}, evaluate them with python -m minidet.eval --weights "
                     f"{t.run_dir / 'last.pt'}" if newest is not None else "")
            print(f"\ninterrupted during the evaluation{after}")
        raise SystemExit(130)

    def after_epoch(self) -> None:
        t = self.trainer
        st = t.state
        self.latest = None
        if not st.eval_pending:
            return
        stats = t.evaluate()
        t.updating = True
        if is_main():
            per_class = per_class_results(t.last_evaluation)
            worst = worst_class(per_class)
            print("val: " + ", ".join(f"{k} {v:.4f}" for k, v in stats.items() if k in ("AP", "AP50", "AP75", "AR100"))
                  + (f"; worst class {worst[0]} AP {worst[1]:.4f}" if worst else ""))
            t.logger.log({"kind": "eval", "epoch": st.epoch, "iteration": st.iteration, **stats,
                          **flat_per_class(per_class)})
        st.eval_pending = False
        if stats["AP"] > st.best_ap or not math.isfinite(st.best_ap):
            st.best_ap = stats["AP"]
            t.save("best.pt", evaluated_weights=True)
        t.updating = False
        self.latest = stats
