"""Helpers shared by the training tests."""

from minidet.engine.trainer import Trainer


def interrupt_at(monkeypatch, iteration: int):
    """Make ``Trainer.step`` raise KeyboardInterrupt (a Ctrl-C at the start of a step) once
    ``iteration`` steps are done; -> the original ``Trainer.step``, to put back."""
    original = Trainer.step

    def killed(self, images, targets):
        if self.state.iteration == iteration:
            raise KeyboardInterrupt
        return original(self, images, targets)

    monkeypatch.setattr(Trainer, "step", killed)
    return original


def catch_trainer(monkeypatch) -> dict:
    """-> a dict that gets the next Trainer built (``["trainer"]``) once its __init__ ran."""
    caught: dict = {}
    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        caught["trainer"] = self

    monkeypatch.setattr(Trainer, "__init__", init)
    return caught
