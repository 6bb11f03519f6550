"""The optional extras, `tensorrt` and `pycuda`, imported on first use and never at module import.

They come with JetPack or the `tensorrt` extra and are absent on CPU machines, where the
runtime must still import (ONNX Runtime runs everything there). Every TensorRT code path
gets them from here, so a missing one is always the same `TensorRTUnavailable` (exit
code 3, an `EngineError`) naming what to install.
"""
from __future__ import annotations

from types import ModuleType

from runtime.errors import TensorRTUnavailable

INSTALL_HINT = "install the `tensorrt` extra (pip install 'edge-run[tensorrt]'), or use the JetPack image's TensorRT"


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module, or TensorRTUnavailable naming the extra to install."""
    try:
        import tensorrt
    except ImportError as exc:  # also raised when sys.modules["tensorrt"] is None (how tests hide an installed one)
        raise TensorRTUnavailable(f"the TensorRT backend needs the tensorrt package ({exc}): {INSTALL_HINT}") from exc
    return tensorrt


def import_pycuda() -> ModuleType:
    """`pycuda.driver` (buffers, streams, the CUDA context), or TensorRTUnavailable naming the extra to install."""
    try:
        import pycuda.driver
    except ImportError as exc:
        raise TensorRTUnavailable(f"the TensorRT backend needs pycuda ({exc}): {INSTALL_HINT}") from exc
    return pycuda.driver
