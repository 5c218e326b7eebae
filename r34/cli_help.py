"""How every command line of the project shows its defaults in `--help` (one formatter, so each CLI says it alike)."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" where it tells something: not where the help already states the default, not for a
    None default (the help says what happens then) and not for on/off switches (a pair of switches sharing one
    destination would print the other's default). Descriptions and epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if ("default" in help_text or action.default in (None, argparse.SUPPRESS)
                or action.nargs == 0 or not action.option_strings):
            return help_text
        return f"{help_text} (default: %(default)s)".strip()
