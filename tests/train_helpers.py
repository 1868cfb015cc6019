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
