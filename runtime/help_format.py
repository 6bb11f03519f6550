"""One argparse help format for every edge-run command: defaults shown, but only real ones."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help unless X is None or the help already names it.

    A None default means "decided at run time" (the manifest's window, the backend's fastest
    precision...), which the help text says in words; "(default: None)" would only confuse.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)
