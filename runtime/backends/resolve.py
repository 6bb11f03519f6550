"""Which backend `--backend auto` means on this machine: one rule, in one place.

    native TensorRT plans  when `tensorrt` and `pycuda` import and a CUDA GPU answers
    (plans are built or rebuilt at start through the plan cache), else
    the TensorRT execution provider  when this onnxruntime has it, else
    the CUDA execution provider  likewise, else
    the CPU.

Each step down is logged once, with its reason, when the run starts. What the machine
offers is read by `probe()`; the rule itself (`choose`) takes it as an argument, so it is
tested by saying what is available, not by faking a GPU.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from runtime.backends.tensorrt.imports import import_pycuda, import_tensorrt
from runtime.errors import EngineError, TensorRTUnavailable

log = logging.getLogger("edge_run.backends")

BACKENDS = ("auto", "cpu", "cuda", "trt-ep", "tensorrt")
# Execution providers that make an onnxruntime backend, best first (the CPU is always there).
EP_BACKENDS = (("trt-ep", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider"))


@dataclass(frozen=True)
class Available:
    """What this machine offers: why native TensorRT cannot run ("" when it can) and onnxruntime's providers."""

    native_tensorrt_missing: str
    providers: tuple[str, ...]


def probe() -> Available:
    """Read what this machine offers (imports tensorrt and pycuda when present, initialises CUDA)."""
    import onnxruntime

    return Available(_native_tensorrt_missing(), tuple(onnxruntime.get_available_providers()))


def _native_tensorrt_missing() -> str:
    try:
        import_tensorrt()
        cuda = import_pycuda()
    except TensorRTUnavailable as exc:
        return str(exc)
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # noqa: BLE001 - pycuda raises its own error types (cuda.Error, RuntimeError) without a driver
        return f"CUDA does not initialise ({type(exc).__name__}: {exc})"
    return "" if count > 0 else "no CUDA device"


def choose(available: Available) -> str:
    """The backend `auto` resolves to, given what is available; logs why it steps down, once per step."""
    if not available.native_tensorrt_missing:
        return "tensorrt"
    reasons = [f"native TensorRT: {available.native_tensorrt_missing}"]
    for backend, provider in EP_BACKENDS:
        if provider in available.providers:
            _log_steps_down(reasons, backend)
            return backend
        reasons.append(f"{backend}: onnxruntime has no {provider}")
    _log_steps_down(reasons, "cpu")
    return "cpu"


def _log_steps_down(reasons: list[str], chosen: str) -> None:
    for reason in reasons:
        log.info("backend auto: not %s", reason)
    log.info("backend auto: %s", chosen)


def resolve_backend(backend: str, available: Optional[Available] = None) -> str:
    """`backend` as given, or what `auto` means here (`choose`, with `probe()` unless `available` is given)."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return choose(available if available is not None else probe())
