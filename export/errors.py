"""edge-export's errors: one root under edge-run's `EdgeRunError`, and the exit code of each.

edge-export's codes (documented in `export/cli.py` and README.md): 0 done; 1 build failed
(quality gate, quantization, a TensorRT plan that would not build); 2 bad input (arguments,
weights, ONNX, calibration source, clips, output folder, a missing extra).

Each of edge-export's own errors derives from `ExportError` and carries its code. An error
of the runtime met while exporting (a manifest, a source, an engine backend, TensorRT
missing) is bad input to edge-export, code 2, whatever it carries in edge-run, except
`PlanBuildError` in a command that builds engines (build, train): TensorRT refusing to build
a plan there is a failed build, code 1 (`verify` opening engines reports it as bad input, 2).
"""
from __future__ import annotations

from runtime.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, EdgeRunError, PlanBuildError

EXIT_INPUT = EXIT_USAGE

__all__ = ["BUILDING_COMMANDS", "EXIT_FAILED", "EXIT_INPUT", "EXIT_OK", "ExportError", "code_for"]

BUILDING_COMMANDS = ("build", "train")


class ExportError(EdgeRunError):
    """An error of edge-export's own; `exit_code` is edge-export's code for it (bad input unless set)."""

    exit_code = EXIT_INPUT


def code_for(exc: EdgeRunError, command: str = "build") -> int:
    """edge-export's exit code for `exc` raised by `command` (see the module docstring)."""
    if isinstance(exc, ExportError):
        return exc.exit_code
    if isinstance(exc, PlanBuildError) and command in BUILDING_COMMANDS:
        return EXIT_FAILED
    return EXIT_INPUT
