"""One argparse help format and one error form for every edge-run command.

`ArgumentParser` is argparse's with errors as `UsageError` (exit 2) instead of a usage
block and `SystemExit`: each CLI's `main` prints it as its one line, `edge-run: error: ...`
or `edge-export: error: ...`, like every other error.
"""
from __future__ import annotations

import argparse
from typing import NoReturn

from runtime.errors import UsageError


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with `HelpFormatter`, raising `UsageError` for a bad flag or value.

    The message is argparse's own ("argument --window: '0' is out of range; allowed: ..."):
    the `runtime.validation` types word the value and the range. `--help` is unchanged.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)
