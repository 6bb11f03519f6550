"""TensorRT plans from the exported ONNX files, built on the device that will run them.

A plan (serialized TensorRT engine) is only valid for the TensorRT version and the GPU
model that built it: upgrading JetPack, or copying `engines/` to another board, makes
every plan unloadable. Plans are therefore treated as a cache keyed on
(TensorRT version, GPU model, precision, SHA-256 of the source ONNX): `plan_key` makes
the key that the manifest stores beside each plan, `plan_matches` tells whether a plan
still fits this machine and, if not, why. Both live in `keys` (the runtime checks plans
before loading them and must not import `export`).

Precision and TensorRT versions (features are detected with `hasattr`, the version
string only decides between two APIs that both exist):
- TensorRT 10.3 (JetPack 6) .. 10.11: "weakly typed" networks; FP16 and INT8 are
  builder flags. INT8 uses explicit quantization: the Q/DQ graph from
  `export.quantize`, no calibrator. The FP16 flag is set too so layers left in float by
  the Q/DQ graph run in FP16.
- TensorRT 10.12+ deprecates those flags and 11 removes them: the network is created
  STRONGLY_TYPED and the precision comes from the graph's types. INT8 needs nothing more
  (Q/DQ); FP16 needs an FP16 graph, so the ONNX is converted first (`to_fp16_onnx`,
  inputs and outputs kept FP32 so the runtime's buffers do not change).

`tensorrt` is imported lazily (see `imports`): this module imports on any machine, and
every entry point raises TensorRTUnavailable naming the extra to install when it is missing.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from runtime.backends.tensorrt.imports import import_tensorrt
from runtime.backends.tensorrt.keys import gpu_name, plan_key, soc_model
from runtime.errors import PlanBuildError
from runtime.files import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
# Tactic timings beside the plans: `build_plan` reads and writes it, the plan cache reuses it on rebuilds.
TIMING_CACHE_NAME = "timing.cache"
DEFAULT_WORKSPACE_MB = 1024
__all__ = ["DEFAULT_WORKSPACE_MB", "PRECISIONS", "TIMING_CACHE_NAME", "build_plan", "to_fp16_onnx"]


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# FP16 graphs for strongly typed networks --------------------------------------------------
def to_fp16_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write an FP16 copy of the FP32 model `src` to `dst` (atomically); inputs and outputs stay FP32.

    Strongly typed TensorRT networks run each layer in the type the graph gives it, so an
    FP16 plan needs an FP16 graph. Casts are inserted at the inputs and outputs so the
    engine's I/O buffers are the same as the FP32 model's.
    """
    try:  # lazily: importing onnxruntime.transformers appends its folder to sys.path, which no other caller wants
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise PlanBuildError(f"cannot convert {src} to FP16: onnxruntime's float16 converter is missing ({exc})") from exc
    import onnx  # lazily, like below: only a plan build needs it, and importing it costs every edge-run start ~1 s

    model = onnx.load(str(src))
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node):
        raise PlanBuildError(f"{src} is a quantized (Q/DQ) graph; build it as int8, not fp16")
    converted = convert_float_to_float16(model, keep_io_types=True)
    _toposort(converted.graph)  # the converter appends its input Casts after their consumers
    onnx.checker.check_model(converted)
    dst = Path(dst)
    atomic_write_bytes(dst, converted.SerializeToString())
    return dst


def _toposort(graph) -> None:
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            missing = sorted({n for node in remaining for n in node.input if n not in available})
            raise PlanBuildError(f"graph has a cycle or undefined inputs: {', '.join(missing[:5])}")
        pending = remaining
    del graph.node[:]
    graph.node.extend(ordered)


def _has_qdq(onnx_path: Path) -> bool:
    import onnx  # lazily: only a plan build needs it, and importing it costs every edge-run start ~1 s

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


# Building ---------------------------------------------------------------------------------
def _use_strong_typing(trt, precision: str, requested: Optional[bool]) -> bool:
    """Strong typing where the weak-typing flags are gone (11) or deprecated (10.12+)."""
    has_strong = hasattr(trt, "NetworkDefinitionCreationFlag") and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    flag_names = {"fp16": ("FP16",), "int8": ("INT8", "FP16"), "fp32": ()}[precision]
    has_flags = all(hasattr(trt.BuilderFlag, name) for name in flag_names)
    if requested is not None:
        if requested and not has_strong and _version_tuple(trt.__version__) < (11,):
            raise PlanBuildError(f"TensorRT {trt.__version__} has no strongly typed networks")
        if not requested and not has_flags:
            raise PlanBuildError(f"TensorRT {trt.__version__} has no {precision.upper()} builder flag; use strong typing")
        return requested
    if not has_flags:
        return True
    return has_strong and _version_tuple(trt.__version__) >= (10, 12)


def _make_logger(trt):
    class _Logger(trt.ILogger):
        """Keeps TensorRT's errors for the exception message and forwards the rest to logging."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            levels = trt.ILogger.Severity
            if severity in (levels.INTERNAL_ERROR, levels.ERROR):
                self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif severity == levels.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _load_timing_cache(config, path: Optional[Path]):
    """A timing cache seeded from `path` when it holds one this TensorRT and GPU accept, else an empty one.

    `set_timing_cache` returns False when it refuses a cache (another device's, with
    `ignore_mismatch` off): the build then gets a fresh cache, so it does not start cold
    every time, and saving it after the build replaces the stale file.
    """
    blob = b""
    if path is not None and path.is_file():
        blob = path.read_bytes()
    try:
        cache = config.create_timing_cache(blob)
    except Exception as exc:  # noqa: BLE001 - TensorRT raises plain exceptions; another TensorRT version's or a truncated cache: start cold
        log.warning("timing cache %s unusable (%s); starting a new one", path, exc)
        cache = None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    if cache is not None:
        log.warning("timing cache %s was made on another device; starting a new one, which replaces it after this build", path)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise PlanBuildError("TensorRT refused an empty timing cache; the builder is unusable here (see TensorRT's log)")
    return cache


def _save_timing_cache(config, path: Optional[Path]) -> None:
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is None:
        return
    try:
        atomic_write_bytes(path, bytes(memoryview(cache.serialize())))
    except OSError as exc:  # the plan is what matters; a lost cache only costs build time
        log.warning("could not save timing cache %s: %s", path, exc)


def build_plan(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 8,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    dla_core: Optional[int] = None,
    timing_cache_path: Optional[str | os.PathLike] = None,
    strongly_typed: Optional[bool] = None,
) -> dict[str, Any]:
    """Build a TensorRT plan from `onnx_path` and write it atomically to `plan_path`.

    `precision` "int8" expects the Q/DQ graph from `export.quantize`. The batch dimension
    (the inputs' first, dynamic, dimension) gets one optimization profile
    min_batch..opt_batch..max_batch; a DLA build pins it to max_batch (DLA has no dynamic
    shapes). `timing_cache_path` (default: `timing.cache` beside the plan) is loaded
    before and saved after the build, so rebuilding after an ONNX change takes seconds.
    `strongly_typed` None chooses by TensorRT's capabilities (see the module docstring).

    Returns a summary with the plan's build key (`key`, see `plan_key`) and what a rebuild needs
    to build it again the same way (`build`: batch range, workspace, DLA core, typing).
    """
    if precision not in PRECISIONS:
        raise PlanBuildError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise PlanBuildError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    onnx_path = Path(onnx_path)
    plan_path = Path(plan_path)
    if not onnx_path.is_file():
        raise PlanBuildError(f"{onnx_path} does not exist; run edge-export first")
    trt = import_tensorrt()
    started = time.perf_counter()
    notes: list[str] = []
    if precision == "int8" and not _has_qdq(onnx_path):
        raise PlanBuildError(
            f"{onnx_path} has no QuantizeLinear/DequantizeLinear nodes: an int8 plan needs the "
            f"quantized backbone written by export.quantize (implicit calibration is not used)"
        )
    strong = _use_strong_typing(trt, precision, strongly_typed)
    timing_cache = Path(timing_cache_path) if timing_cache_path is not None else plan_path.parent / TIMING_CACHE_NAME
    plan_path.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=".trt-build.", dir=plan_path.parent) as tmp:
        source = onnx_path
        if strong and precision == "fp16":
            source = to_fp16_onnx(onnx_path, Path(tmp) / "fp16.onnx")
            notes.append("strongly typed: built from an FP16 copy of the ONNX (I/O kept FP32)")
        elif strong and precision == "int8":
            notes.append("strongly typed: Q/DQ layers run INT8, layers between them in the graph's FP32")

        logger = _make_logger(trt)
        builder = _make_builder(trt, logger)
        flags = 0
        if strong and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            # From TensorRT 11 on every network is strongly typed and the flag is ignored.
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
            # Required before TensorRT 10, deprecated and ignored since.
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise PlanBuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: " + "; ".join(errors or logger.errors))

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        if not strong:
            # Weak typing is chosen only where these flags exist (`_use_strong_typing`); TensorRT 11 removed them,
            # so each use stays behind its hasattr (the conformance test holds every removed name to that).
            if precision in ("fp16", "int8") and hasattr(trt.BuilderFlag, "FP16"):
                config.set_flag(trt.BuilderFlag.FP16)
            if precision == "int8" and hasattr(trt.BuilderFlag, "INT8"):
                config.set_flag(trt.BuilderFlag.INT8)
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # an fp32 plan is the accuracy reference

        if dla_core is not None:
            min_batch, opt_batch, max_batch = _configure_dla(trt, builder, config, int(dla_core), precision, strong,
                                                             min_batch, opt_batch, max_batch, notes)

        inputs = _add_profile(trt, builder, network, config, min_batch, opt_batch, max_batch)
        cache = _load_timing_cache(config, timing_cache)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            detail = "; ".join(logger.errors[-5:]) or "see TensorRT's log above"
            raise PlanBuildError(f"TensorRT {trt.__version__} failed to build a {precision} plan from {onnx_path}: {detail}")
        _save_timing_cache(config, timing_cache)
        del cache
        atomic_write_bytes(plan_path, bytes(memoryview(serialized)))

    onnx_sha = sha256_file(onnx_path)
    device = gpu_name()
    record = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch, "workspace_mb": int(workspace_mb),
              "dla_core": dla_core, "typing": "strong" if strong else "weak"}
    return {
        "plan": str(plan_path),
        "onnx": str(onnx_path),
        "precision": precision,
        "typing": "strong" if strong else "weak",
        "tensorrt": str(trt.__version__),
        "gpu": device,
        "min_batch": min_batch,
        "opt_batch": opt_batch,
        "max_batch": max_batch,
        "inputs": inputs,
        "dla_core": dla_core,
        "workspace_mb": int(workspace_mb),
        "timing_cache": str(timing_cache),
        "plan_sha256": sha256_file(plan_path),
        "seconds": round(time.perf_counter() - started, 2),
        "notes": notes,
        "key": plan_key(onnx_sha, precision, str(trt.__version__), device, soc_model(), dla_core),
        "build": record,
    }


def _make_builder(trt, logger):
    """trt.Builder, or PlanBuildError when TensorRT cannot make one here (no GPU or no driver: the bindings
    raise TypeError "factory function returned nullptr")."""
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:
        detail = "; ".join(logger.errors[-3:]) or str(exc)
        raise PlanBuildError(f"TensorRT {trt.__version__} cannot create a builder on this machine (no GPU or CUDA driver?): "
                             f"{detail}") from exc
    if builder is None:
        raise PlanBuildError(f"TensorRT {trt.__version__} cannot create a builder on this machine (no GPU or CUDA driver?)")
    return builder


def _configure_dla(trt, builder, config, core: int, precision: str, strong: bool,
                   min_batch: int, opt_batch: int, max_batch: int, notes: list[str]) -> tuple[int, int, int]:
    available = int(getattr(builder, "num_DLA_cores", 0) or 0)
    if not hasattr(trt, "DeviceType") or not hasattr(trt.DeviceType, "DLA"):
        raise PlanBuildError(f"TensorRT {trt.__version__} has no DLA support; build without --dla-core")
    if available == 0:
        raise PlanBuildError("this device has no DLA cores (Jetson AGX/NX Orin have them, Orin Nano does not); build without --dla-core")
    if not 0 <= core < available:
        raise PlanBuildError(f"DLA core {core} does not exist; this device has {available} (0..{available - 1})")
    if precision == "fp32":
        raise PlanBuildError("DLA runs FP16 or INT8 only; build the DLA plan as fp16 or int8")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
    notes.append(f"DLA core {core} with GPU fallback")
    if min_batch != max_batch:
        notes.append(f"DLA needs static shapes: batch pinned to {max_batch} (runtime pads smaller batches)")
    return max_batch, max_batch, max_batch


def _add_profile(trt, builder, network, config, min_batch: int, opt_batch: int, max_batch: int) -> dict[str, list]:
    profile = builder.create_optimization_profile()
    dynamic = False
    shapes: dict[str, list] = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(int(d) for d in tensor.shape)
        shapes[tensor.name] = list(shape)
        if any(d < 0 for d in shape[1:]):
            raise PlanBuildError(f"input {tensor.name} {shape}: only the batch dimension may be dynamic")
        if shape and shape[0] < 0:
            rest = shape[1:]
            profile.set_shape(tensor.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
            dynamic = True
        elif shape and shape[0] < max_batch:
            log.warning("input %s has a fixed batch of %d; the plan cannot run batches above it", tensor.name, shape[0])
    if dynamic:
        config.add_optimization_profile(profile)
    return shapes

