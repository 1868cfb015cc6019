"""The worked example of extending minidet, as minidet/README.md shows it: a new regression loss is
a function plus its name in ``REGRESSION_LOSSES``, a new weighting scheme a class plus its name in
``WEIGHTINGS``; both are then chosen by name, by ``build_model`` and by the command line alike.
The README's code block is run here as written (the tables are restored afterwards)."""

import re
from pathlib import Path

import torch

from minidet.losses import REGRESSION_LOSSES
from minidet.train import parse_args
from minidet.weighting import WEIGHTINGS

README = Path(__file__).resolve().parents[1] / "minidet" / "README.md"


def worked_example() -> str:
    text = README.read_text()
    section = text[text.index("## Worked example"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_design_page_example_trains_a_new_loss_and_weighting_by_name(capsys):
    assert "log_cosh" not in REGRESSION_LOSSES and "half_reg" not in WEIGHTINGS
    scope: dict = {}
    try:
        exec(compile(worked_example(), str(README), "exec"), scope)
        args = parse_args(["--reg-loss", "log_cosh", "--weighting", "half_reg"])  # the flags accept the new names
    finally:
        REGRESSION_LOSSES.pop("log_cosh", None)
        WEIGHTINGS.pop("half_reg", None)
    assert (args.reg_loss, args.weighting) == ("log_cosh", "half_reg")
    losses = scope["losses"]
    assert losses["reg"] > 0 and losses["weight_reg"] == 0.5
    assert losses["reg_weighted"] == 0.5 * losses["reg"]
    assert torch.isfinite(losses["loss"])
    assert all(p.grad is not None for p in scope["model"].parameters() if p.requires_grad)
    assert "'weight_reg': 0.5" in capsys.readouterr().out
