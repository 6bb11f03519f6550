"""Open the engines a run needs from a manifest, for the chosen backend and precision."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from runtime import validation as valid
from runtime.backends.engine import Engine, EngineError, Recurrence
from runtime.backends.onnxrt import OrtEngine, auto_backend
from runtime.backends.tensorrt import TrtEngine, ensure_plans
from runtime.manifest import BACKBONE, GRU_SEQUENCE, GRU_STEP, EngineFile, Manifest, ManifestError, rebuild_hint, verify_engine_file

BACKENDS = ("auto", "cpu", "cuda", "trt-ep", "tensorrt")


def recurrences_of(manifest: Manifest) -> tuple[Recurrence, ...]:
    """The head's state pairs as the manifest records them (by name: the order means nothing)."""
    return tuple(Recurrence(state_input, state_output) for state_input, state_output in manifest.states.items())


@dataclass
class EngineSet:
    """The engines of one run and the decisions made once when they were opened.

    `manifest` is the final manifest (rewritten when stale TensorRT plans were rebuilt),
    `window` the window length the window engine runs, `max_batch` the most streams one
    call takes. The loop reads all three from here and decides none of them again.
    """

    backbone: Engine
    gru_step: Engine  # recurrent: carries the per-step state
    gru_window: Engine  # a second instance (or the sequence engine) for per-window decisions
    window_is_sequence: bool
    backend: str
    precision: str
    manifest: Manifest
    window: int
    max_batch: int

    def close(self) -> None:
        for engine in (self.backbone, self.gru_step, self.gru_window):
            engine.close()


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        return auto_backend()
    return backend


def default_precision(manifest: Manifest, backend: str) -> str:
    """FP32 where onnxruntime runs on the CPU (its kernels run the TensorRT-layout INT8 graph
    several times slower than FP32: docs/runtime-measurements.md); the INT8 Q/DQ graph where
    TensorRT executes it."""
    fmt = "tensorrt" if backend == "tensorrt" else "onnx"
    available = manifest.precisions(BACKBONE, fmt)
    preference = ("int8", "fp16", "fp32") if backend in ("tensorrt", "trt-ep") else ("fp32", "fp16", "int8")
    for precision in preference:
        if precision in available:
            return precision
    raise ManifestError(f"the manifest lists no {fmt} backbone; {rebuild_hint(manifest.folder)}" + (" --trt" if fmt == "tensorrt" else ""))


def open_engines(
    manifest: Manifest,
    backend: str = "auto",
    precision: Optional[str] = None,
    num_streams: int = 1,
    window: Optional[int] = None,
    threads: Optional[int] = None,
    window_engine: str = "auto",
    rebuild_plans: bool = True,
    on_rebuild: Optional[Callable[[str], None]] = None,
) -> EngineSet:
    """Load backbone, GRU step and window engines. `window_engine`: auto|sequence|step.

    For the native TensorRT backend, plans built by another TensorRT or for another GPU
    are rebuilt from their ONNX first (`tensorrt.plans.ensure_plans`) unless `rebuild_plans`
    is False; `on_rebuild` hears a status line before each rebuild.
    """
    backend = resolve_backend(backend)
    precision = precision or default_precision(manifest, backend)
    fmt = "tensorrt" if backend == "tensorrt" else "onnx"
    window = manifest.window if window is None else valid.WINDOW.check("window", window)
    backbone_entry = _entry(manifest, BACKBONE, fmt, precision)
    gru_entry = _entry(manifest, GRU_STEP, fmt, None)
    sequence_entry = _sequence_entry(manifest, fmt, window) if window_engine != "step" else None
    if fmt == "tensorrt":
        refreshed = ensure_plans(manifest, [backbone_entry, gru_entry, sequence_entry], rebuild=rebuild_plans, on_rebuild=on_rebuild)
        if refreshed is not manifest:  # rebuilt: take the entries with the new hashes and keys
            manifest = refreshed
            backbone_entry = _entry(manifest, BACKBONE, fmt, precision)
            gru_entry = _entry(manifest, GRU_STEP, fmt, None)
            sequence_entry = _sequence_entry(manifest, fmt, window) if window_engine != "step" else None
    if window_engine == "sequence" and sequence_entry is None:
        raise ManifestError(f"no {fmt} GRU sequence engine for window {window} in the manifest; {rebuild_hint(manifest.folder)}")
    streams = max(1, num_streams)
    if backbone_entry.max_batch < streams and fmt == "tensorrt":
        raise ManifestError(
            f"the TensorRT backbone was built for batches up to {backbone_entry.max_batch}, {streams} streams asked for; "
            f"{rebuild_hint(manifest.folder)} --trt --max-batch {streams}"
        )

    def load(entry: EngineFile, name: str, recurrences=(), engine_threads=threads) -> Engine:
        return _load(manifest, entry, name, backend, streams, recurrences, engine_threads)

    pairs = recurrences_of(manifest)

    # Each engine is checked against the manifest as soon as it is loaded, so a mismatch is
    # an exit-3 message with the rebuild command before any frame, not a shape error in the loop.
    loaded: list[Engine] = []
    try:
        backbone = load(backbone_entry, "backbone")
        loaded.append(backbone)
        check_backbone(backbone, backbone_entry, manifest)
        # The GRU's matrices are small: a second thread costs more in hand-off than it saves.
        gru_step = load(gru_entry, "gru_step", pairs, 1)
        loaded.append(gru_step)
        check_gru(gru_step, gru_entry, manifest)
        if sequence_entry is not None:
            gru_window, is_sequence = load(sequence_entry, "gru_window", (), 1), True
            loaded.append(gru_window)
            check_gru(gru_window, sequence_entry, manifest, window)
        else:
            # The step engine run W times from a zero state: it declares the same pairs (run() feeds them from the host).
            gru_window, is_sequence = load(gru_entry, "gru_window", pairs, 1), False
            loaded.append(gru_window)
            check_gru(gru_window, gru_entry, manifest)
    except BaseException:
        for engine in loaded:
            engine.close()
        raise
    return EngineSet(backbone, gru_step, gru_window, is_sequence, backend, precision, manifest, window, streams)


def open_head(manifest: Manifest, backend: str = "cpu", num_streams: int = 1) -> Engine:
    """The recurrent step engine alone (what a replay of recorded features runs), checked against the manifest."""
    backend = resolve_backend(backend)
    fmt = "tensorrt" if backend == "tensorrt" else "onnx"
    entry = _entry(manifest, GRU_STEP, fmt, None)
    engine = _load(manifest, entry, "gru_step", backend, max(1, num_streams), recurrences_of(manifest), 1)
    try:
        check_gru(engine, entry, manifest)
    except BaseException:
        engine.close()
        raise
    return engine


def check_backbone(engine: Engine, entry: EngineFile, manifest: Manifest) -> None:
    """The backbone takes the manifest's (3, H, W) images and gives `feature_size` features."""
    where, hint = f"the backbone {entry.file}", _hint(manifest, entry)
    image = engine.input_specs[engine.input_names[0]].shape
    expected = (3, manifest.input.height, manifest.input.width)
    if image != expected:
        raise EngineError(f"{where} takes images of {_dims(image)} (CxHxW), the manifest's input is {_dims(expected)}; {hint}")
    features = engine.output_specs[engine.output_names[0]].shape
    if features != (manifest.feature_size,):
        raise EngineError(f"{where} gives {_dims(features)} features, the manifest's feature_size is {manifest.feature_size}; {hint}")


def check_gru(engine: Engine, entry: EngineFile, manifest: Manifest, window: Optional[int] = None) -> None:
    """A GRU engine agrees with the manifest: `x` [F] (or [W, F] for a sequence engine built
    for `window`), every state tensor [H], `logits` [number of labels].

    Every tensor other than `x` and `logits` is state (each pair's input and output, h and c
    of every layer, h_last of a sequence engine): all must be H wide, or a checkpoint sized
    from the manifest would not fit them.
    """
    kind = "step" if window is None else "sequence"
    where, hint = f"the {manifest.cell.upper()} {kind} engine {entry.file}", _hint(manifest, entry)
    missing = [name for name, specs in (("x", engine.input_specs), ("logits", engine.output_specs)) if name not in specs]
    if missing:
        have = ", ".join((*engine.input_names, *engine.output_names))
        raise EngineError(f"{where} has no tensor named {' or '.join(missing)} (it has: {have}); {hint}")
    x = engine.input_specs["x"].shape
    expected = (manifest.feature_size,) if window is None else (window, manifest.feature_size)
    if window is not None and len(x) == 2 and x[0] != window:
        raise EngineError(f"{where} is built for windows of {x[0]} frames, the run's window is {window}; {hint}")
    if x != expected:
        raise EngineError(f"{where} takes x of shape {_dims(x)}, the manifest's feature_size {manifest.feature_size} "
                          f"needs {_dims(expected)}; {hint}")
    states = [spec for spec in (*engine.input_specs.values(), *engine.output_specs.values()) if spec.name not in ("x", "logits")]
    for spec in states:
        if spec.shape != (manifest.hidden_size,):
            raise EngineError(f"{where} carries state {spec.name} of size {_dims(spec.shape)}, "
                              f"the manifest's hidden_size is {manifest.hidden_size}; {hint}")
    logits = engine.output_specs["logits"].shape
    if logits != (manifest.num_classes,):
        raise EngineError(f"{where} gives {_dims(logits)} logits, the manifest has {manifest.num_classes} labels; {hint}")


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) or "no"


def _hint(manifest: Manifest, entry: EngineFile) -> str:
    return rebuild_hint(manifest.folder) + (" --trt" if entry.format == "tensorrt" else "")


def _entry(manifest: Manifest, role: str, fmt: str, precision: Optional[str]) -> EngineFile:
    entry = manifest.find(role, fmt, precision)
    if entry is None and role != BACKBONE:
        entry = manifest.find(role, "onnx", precision) if fmt == "onnx" else None
    if entry is None:
        have = ", ".join(f"{e.role}/{e.format}/{e.precision}" for e in manifest.engines)
        wanted = f"{role} ({fmt}{', ' + precision if precision else ''})"
        extra = " --trt" if fmt == "tensorrt" else ""
        raise ManifestError(f"the manifest has no {wanted} engine (it has: {have}); {rebuild_hint(manifest.folder)}{extra}")
    return entry


def _sequence_entry(manifest: Manifest, fmt: str, window: int) -> Optional[EngineFile]:
    for entry in manifest.engines:
        if entry.role == GRU_SEQUENCE and entry.format == fmt and entry.extra.get("window") == window:
            return entry
    return None


def _load(manifest, entry, name, backend, streams, recurrences, threads) -> Engine:
    path = verify_engine_file(manifest, entry)
    max_batch = max(streams, 1)
    if backend == "tensorrt":
        # The build key lets a plan from another TensorRT version or GPU be refused with the rebuild command.
        return TrtEngine(str(path), name=name, max_batch=max_batch, precision=entry.precision, recurrences=recurrences,
                         build_key=entry.extra or None)
    return OrtEngine(str(path), name=name, max_batch=max_batch, precision=entry.precision,
                     backend=backend, recurrences=recurrences, threads=threads, hint=_hint(manifest, entry))
