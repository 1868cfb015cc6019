"""The skeleton of a trainer made of parts (detectron2's ``TrainerBase`` + ``HookBase``): hooks
registered in order, each called at the same points of every run."""

from __future__ import annotations

__all__ = ["HookBase", "TrainerBase"]


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
