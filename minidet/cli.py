"""Shared command-line help: the module docstring as written, and every option's default."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends ``(default: X)`` to each option's help,
    unless the help already says its default in words (``default: the model's``) or there is
    nothing to show (a default of None, or an on/off switch that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if ("%(default)" in help_text or "default" in help_text.lower() or default is None
                or default is argparse.SUPPRESS or (action.nargs == 0 and default is False)
                or not action.option_strings):
            return help_text
        return f"{help_text} (default: %(default)s)"
