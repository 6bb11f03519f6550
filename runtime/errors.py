"""Every error edge-run reports has one root, `EdgeRunError`, and carries its exit code.

The CLIs turn any `EdgeRunError` into a one-line message and `exit_code`; nothing else
decides exit codes. The codes (documented in README.md and `edge-run --help`):

| code | meaning                                                   | errors                              |
|------|-----------------------------------------------------------|-------------------------------------|
| 0    | done                                                      |                                     |
| 1    | failed while running, or output lost                      | `PipelineError` (`sinks.OutputLost`), `CheckpointError` |
| 2    | bad arguments or settings; camera or device unavailable   | `UsageError`, `CameraUnavailable`   |
| 3    | engines missing, corrupt or mismatched                    | `EngineError`, `ManifestError`      |
| 4    | source unreadable                                         | `SourceError`                       |

Each class also derives from the built-in error it replaced (`ValueError` for bad input,
`RuntimeError` otherwise), so callers of the Python API that catch those keep working.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ENGINES = 3
EXIT_SOURCE = 4


class EdgeRunError(Exception):
    """The root: an error with a readable one-line message and the exit code it ends a CLI with."""

    exit_code = EXIT_FAILED


class UsageError(EdgeRunError, ValueError):
    """A bad argument, setting or input file given by the user."""

    exit_code = EXIT_USAGE


class EngineError(EdgeRunError, RuntimeError):
    """An engine that cannot be loaded or run (corrupt, mismatched, missing backend)."""

    exit_code = EXIT_ENGINES


class ManifestError(EdgeRunError, RuntimeError):
    """A manifest that is missing, of another schema, or whose files do not match it."""

    exit_code = EXIT_ENGINES


class TensorRTUnavailable(EngineError):
    """TensorRT (or the CUDA bindings) cannot be imported on this machine."""


class PlanBuildError(EngineError):
    """TensorRT refused to build a plan from its ONNX."""


class SourceError(EdgeRunError, RuntimeError):
    """A source that cannot be opened or read, with a message that says which and why."""

    exit_code = EXIT_SOURCE


class CameraUnavailable(SourceError):
    """A camera (V4L2, CSI or network) that cannot be opened."""

    exit_code = EXIT_USAGE


class SourceReadError(SourceError):
    """A live source whose read failed (unplugged camera, dropped stream): reconnect."""


class PipelineError(EdgeRunError, RuntimeError):
    """A run that cannot continue (a source failed for good, an engine error)."""


class CheckpointError(EdgeRunError, ValueError):
    """A checkpoint file that cannot be decoded."""
