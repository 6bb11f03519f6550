"""`edge-export`'s build: backbone and GRU graphs -> FP32/INT8 ONNX (and TensorRT plans) + manifest.

Everything is written into a staging folder inside `--out` first; files move into place
only after every step succeeded, and the manifest is written last, atomically
(`export.publish`). A build that fails leaves the previous engines and manifest as they were.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

import numpy as np
import onnx

from export.graphs.bn_stats import reestimate_bn
from export.graphs.head import head_shape, init_head_weights
from export.graphs.mobilenet import VARIANTS, build_backbone, init_state_dict
from export.graphs.user_backbone import load_user_backbone
from export.graphs.weights import WeightsError, load_state_dict
from export.publish import (
    BuildError,
    engine_entry,
    head_fields,
    publish,
    staging_folder,
    tool_versions,
    write_head_engines,
)
from export.quantize import DEFAULT_METHOD, DEFAULT_MIN_COSINE, QualityGateError, check_quality, feature_quality, quantize_backbone, read_frames
from runtime import validation as valid
from runtime.backends.tensorrt import TIMING_CACHE_NAME, build_plan, plan_extra, plan_file_name
from runtime.errors import UsageError
from runtime.files import atomic_write_bytes, sha256_file
from runtime.manifest import BACKBONE, EngineFile, InputSpec, Manifest
from runtime.sources.demo import CLASSES

DEFAULT_WINDOW = 16
DEFAULT_STRIDE = 8
DEFAULT_INPUT_SIZE = (224, 224)  # height, width: MobileNet-V3's ImageNet size

# Shipped with the project (see export/assets/README.md for how each was made):
ASSETS = Path(__file__).parent / "assets"
# MobileNet-V3-Small pretrained on synthetic demo-world images (`edge-export pretrain`).
DEFAULT_BACKBONE_WEIGHTS = ASSETS / "mobilenet_v3_small_synthetic.safetensors"
# The GRU head trained on the demo task through the default INT8 backbone (`edge-export train --clips demo`).
DEFAULT_DEMO_HEAD = ASSETS / "demo_head.safetensors"
SEEDED = "seeded"  # --weights seeded / --gru-weights seeded: the old seeded initialisation


@dataclass
class BuildOptions:
    out: Path = Path("engines")
    variant: str = "small"
    weights: Optional[Path] = None  # None: the shipped pretrained weights (Small), seeded otherwise
    seeded_backbone: bool = False  # ignore the shipped weights: seeded init + BatchNorm re-estimation
    backbone_onnx: Optional[Path] = None
    feature_output: Optional[str] = None
    input_size: Optional[tuple[int, int]] = None  # height, width; None: 224x224, or a --backbone-onnx's fixed size
    # The network's own input normalisation (None: torchvision's, InputSpec's defaults): recorded in the
    # manifest, applied by the runtime's preprocessing.
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None
    scale: Optional[float] = None
    color_order: Optional[str] = None
    calib: str = "demo"
    calib_frames: int = 128
    holdout_frames: int = 32
    calibration: Optional[str] = None  # default: export.quantize.DEFAULT_METHOD
    int8: bool = True
    min_cosine: float = DEFAULT_MIN_COSINE
    allow_degraded: bool = False
    hidden: int = 256
    cell: str = "gru"  # the recurrent head's cell (valid.CELLS)
    layers: int = 1
    labels: Optional[tuple[str, ...]] = None  # default: the demo task's classes
    gru_weights: Optional[Path] = None  # None: the shipped demo head where it fits, seeded otherwise
    seeded_head: bool = False  # ignore the shipped demo head
    window: int = DEFAULT_WINDOW
    stride: int = DEFAULT_STRIDE
    seed: int = 0
    max_batch: int = 8
    trt: bool = False
    trt_precision: tuple[str, ...] = ("int8", "fp16")
    workspace_mb: int = 1024
    dla_core: Optional[int] = None
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The same ranges as edge-export's flags (runtime.validation): exit 2 before any work.
        valid.check_fields(self, {
            "calib_frames": valid.CALIB_FRAMES, "holdout_frames": valid.HOLDOUT_FRAMES, "min_cosine": valid.COSINE,
            "hidden": valid.HIDDEN, "layers": valid.LAYERS, "window": valid.WINDOW, "stride": valid.STRIDE, "seed": valid.SEED,
            "max_batch": valid.MAX_BATCH, "workspace_mb": valid.WORKSPACE_MB, "dla_core": valid.DLA_CORE,
        }, optional=("dla_core",))
        if self.input_size is not None:
            if not isinstance(self.input_size, (tuple, list)) or len(self.input_size) != 2:
                raise UsageError(f"BuildOptions.input_size = {self.input_size!r} is not a (height, width) pair; "
                                 f"allowed: two of {valid.INPUT_SIDE.describe()}")
            for side, value in zip(("height", "width"), self.input_size):
                valid.INPUT_SIDE.check(f"BuildOptions.input_size {side}", value)
        valid.check_normalisation("BuildOptions", self.mean, self.std, self.scale, self.color_order)
        valid.check_labels("BuildOptions.labels", self.labels, optional=True)
        if self.cell not in valid.CELLS:
            raise UsageError(f"BuildOptions.cell = {self.cell!r} is not a cell; allowed: {', '.join(valid.CELLS)}")
        valid.check_choices("BuildOptions.trt_precision", self.trt_precision, valid.TRT_PRECISIONS)


class Progress:
    """One line per build step on stderr, with its duration."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self._t0 = None

    def start(self, text: str) -> None:
        self.done += 1
        self._t0 = time.perf_counter()
        print(f"[{self.done}/{self.total}] {text} ...", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        print(f"      {text}", file=self.stream, flush=True)

    def finish(self, text: str = "") -> None:
        took = time.perf_counter() - (self._t0 or time.perf_counter())
        print(f"      done in {took:.1f} s{': ' + text if text else ''}", file=self.stream, flush=True)


def default_labels() -> tuple[str, ...]:
    return tuple(CLASSES)


def build(options: BuildOptions) -> Manifest:
    out = Path(options.out)
    staging = staging_folder(out)
    try:
        manifest = _build_into(options, out, staging)
        publish(staging, out, manifest)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_into(options: BuildOptions, out: Path, staging: Path) -> Manifest:
    labels = tuple(options.labels or default_labels())
    if len(labels) < 2:
        raise BuildError(f"at least 2 class labels are needed, got {list(labels)}")
    if options.window < 1 or options.stride < 1:
        raise BuildError("--window and --stride must be at least 1")
    steps = 4 + int(options.int8) + int(options.trt)
    progress = Progress(steps)
    engines: list[EngineFile] = []
    provenance: dict[str, Any] = {"calibration_source": options.calib}

    progress.start(f"reading {options.calib_frames} calibration + {options.holdout_frames} held-out frames from {options.calib!r}")
    spec, backbone_model, arch = _backbone_geometry(options)
    # Consecutive demo frames are near-duplicates: one in 12 spans many clips (docs/export-measurements.md).
    every = 12 if options.calib.startswith("demo") else 1
    frames = read_frames(options.calib, options.calib_frames + options.holdout_frames, spec, seed=options.seed, every=every)
    calib, holdout = _split(frames, options.holdout_frames)
    progress.finish(f"{len(calib)} calibration, {len(holdout)} held out")

    progress.start("building the backbone")
    if backbone_model is None:
        backbone_model, provenance["backbone_weights"] = _mobilenet(options, calib, progress)
    else:
        provenance["backbone_weights"] = f"user ONNX {options.backbone_onnx} (output {options.feature_output})"
    fp32_path = staging / "backbone_fp32.onnx"
    atomic_write_bytes(fp32_path, backbone_model.SerializeToString())
    feature_size = _feature_size(backbone_model)
    engines.append(engine_entry(BACKBONE, "onnx", "fp32", fp32_path, {"image": ["batch", 3, spec.height, spec.width]},
                          {"features": ["batch", feature_size]}, options.max_batch))
    progress.finish(f"{arch}, {feature_size} features, {fp32_path.stat().st_size / 1e6:.1f} MB")

    quality: dict[str, Any] = {}
    if options.int8:
        quality = _quantize(options, fp32_path, staging / "backbone_int8.onnx", calib, holdout, progress)
        engines.append(engine_entry(BACKBONE, "onnx", "int8", staging / "backbone_int8.onnx", engines[0].inputs,
                              engines[0].outputs, options.max_batch))

    layers = f"{options.layers}-layer " if options.layers > 1 else ""
    progress.start(f"building the {layers}{options.cell.upper()} head (H={options.hidden}, {len(labels)} classes, window {options.window})")
    weights, gru_source, head_training = _gru_weights(options, feature_size, labels, provenance)
    provenance["gru_weights"] = gru_source
    engines.extend(write_head_engines(weights, options.window, staging, options.max_batch))
    if quality and head_training.get("task_accuracy"):
        # Task accuracy of this head on INT8 vs FP32 features (measured when it was trained), beside the cosine.
        quality["task_accuracy"] = head_training["task_accuracy"]
    training = dict(head_training)
    training.update(options.training)
    progress.finish(gru_source)

    if options.trt:
        engines.extend(_tensorrt(options, engines, staging, progress))

    progress.start("writing the manifest")
    manifest = Manifest(
        input=spec,
        backbone_arch=arch,
        feature_size=feature_size,
        labels=labels,
        window=options.window,
        stride=options.stride,
        engines=tuple(engines),
        **head_fields(head_shape(weights)),
        versions=tool_versions(),
        quantization=quality,
        training=training,
        provenance=provenance,
        folder=out,
    )
    return manifest


def _backbone_geometry(options: BuildOptions):
    """The input spec, the user's ONNX backbone (if given) and the architecture name."""
    if options.backbone_onnx is not None:
        model, (height, width) = load_user_backbone(options.backbone_onnx, options.feature_output, options.input_size)
        return _input_spec(options, height, width), model, f"onnx:{Path(options.backbone_onnx).name}"
    if options.variant not in VARIANTS:
        raise BuildError(f"unknown --variant {options.variant!r}; choose from {', '.join(VARIANTS)}")
    height, width = options.input_size or DEFAULT_INPUT_SIZE
    return _input_spec(options, height, width), None, f"mobilenet_v3_{options.variant}"


def _input_spec(options: BuildOptions, height: int, width: int) -> InputSpec:
    """The geometry plus the normalisation the options give (InputSpec's torchvision defaults otherwise)."""
    given = {"mean": options.mean, "std": options.std, "scale": options.scale, "color_order": options.color_order}
    return InputSpec(height=height, width=width, **{k: v for k, v in given.items() if v is not None})


def _mobilenet(options: BuildOptions, calib: np.ndarray, progress: Progress):
    if options.weights is not None:
        state = load_state_dict(options.weights)
        source = f"{options.weights} (sha256 {sha256_file(options.weights)[:16]})"
    elif uses_shipped_backbone(options):
        state = load_state_dict(DEFAULT_BACKBONE_WEIGHTS)
        source = (f"shipped: {DEFAULT_BACKBONE_WEIGHTS.name} (sha256 {sha256_file(DEFAULT_BACKBONE_WEIGHTS)[:16]}; "
                  "MobileNet-V3-Small pretrained on synthetic demo-world images by `edge-export pretrain`)")
    else:
        progress.note(f"no --weights: seeded initialisation (seed {options.seed}), BatchNorm statistics re-estimated on the calibration frames")
        state = reestimate_bn(options.variant, init_state_dict(options.variant, options.seed), calib)
        source = f"seeded:{options.seed} + BN re-estimated on {len(calib)} frames of {options.calib!r}"
    return build_backbone(options.variant, state, options.input_size or DEFAULT_INPUT_SIZE), source


def _quantize(options, fp32_path: Path, int8_path: Path, calib, holdout, progress: Progress) -> dict[str, Any]:
    method = options.calibration or DEFAULT_METHOD
    progress.start(f"quantizing the backbone to INT8 (Q/DQ, {method} calibration on {len(calib)} frames)")
    summary = quantize_backbone(fp32_path, int8_path, calib, method=method)
    quality = feature_quality(fp32_path, int8_path, holdout)
    progress.note(
        f"INT8 vs FP32 on {len(holdout)} held-out frames: cosine mean {quality['cosine_mean']:.4f}, "
        f"min {quality['cosine_min']:.4f}, max abs error {quality['max_abs_error']:.4f}"
    )
    progress.note(f"calibrated on {len(calib)} frames of {options.calib!r}: INT8 is only as good as those frames are like "
                  "the deployed camera's (calibrate on your own footage with --calib; `edge-export train` measures it on "
                  "your clips)")
    record = {"method": method, "calibration_frames": len(calib), "min_cosine_gate": options.min_cosine, **summary, **quality,
              "measured_on": f"{len(holdout)} held-out frames of the calibration source {options.calib!r}"}
    try:
        check_quality(quality, options.min_cosine)
        record["gate"] = "passed"
    except QualityGateError as exc:
        if not options.allow_degraded:
            raise
        progress.note(f"WARNING: {exc} (kept: --allow-degraded)")
        record["gate"] = "degraded (allowed)"
    progress.finish()
    return record


def uses_shipped_backbone(options: BuildOptions) -> bool:
    return (options.weights is None and options.backbone_onnx is None and not options.seeded_backbone
            and options.variant == "small" and DEFAULT_BACKBONE_WEIGHTS.is_file())


def shipped_head_info() -> dict[str, Any]:
    """The shipped demo head's record (labels, window, how it was trained), or {} when absent."""
    record = DEFAULT_DEMO_HEAD.with_suffix(".json")
    if not DEFAULT_DEMO_HEAD.is_file() or not record.is_file():
        return {}
    return json.loads(record.read_text())


def _gru_weights(options: BuildOptions, feature_size: int, labels: tuple[str, ...], provenance: dict):
    """(weights, description, training record) for the recurrent head of this build."""
    num_classes = len(labels)
    wanted = (options.cell, options.layers, feature_size, options.hidden, num_classes)
    if options.gru_weights is not None:
        weights = load_state_dict(options.gru_weights)
        shape = head_shape(weights)
        if (shape.cell, shape.layers, shape.features, shape.hidden, shape.classes) != wanted:
            raise WeightsError(
                f"head weights {options.gru_weights} are a {shape.layers}-layer {shape.cell} for F={shape.features}, "
                f"H={shape.hidden}, C={shape.classes}; this build needs a {options.layers}-layer {options.cell} for "
                f"F={feature_size}, H={options.hidden}, C={num_classes} (set --cell / --layers / --hidden / --labels to match)"
            )
        return weights, f"{options.gru_weights} (sha256 {sha256_file(options.gru_weights)[:16]})", {}
    info = shipped_head_info()
    if (info and not options.seeded_head and uses_shipped_backbone(options)
            and tuple(info.get("labels", ())) == labels):
        weights = load_state_dict(DEFAULT_DEMO_HEAD)
        shape = head_shape(weights)
        if (shape.cell, shape.layers, shape.features, shape.hidden, shape.classes) == wanted:
            record = {k: v for k, v in info.items() if k not in ("skipped",)}
            record["weights"] = f"shipped: {DEFAULT_DEMO_HEAD.name}"
            return weights, (f"shipped: {DEFAULT_DEMO_HEAD.name} (sha256 {sha256_file(DEFAULT_DEMO_HEAD)[:16]}; "
                             f"trained on the demo task by `{info.get('command', 'edge-export train --clips demo')}`)"), record
    return init_head_weights(*wanted, seed=options.seed), f"seeded:{options.seed}", {}


@dataclass(frozen=True)
class PlannedPlan:
    """One TensorRT plan of `edge-export --trt`: from which ONNX entry, in which precision, on which DLA core."""

    source: EngineFile
    precision: str
    file: str
    dla_core: Optional[int]


def plan_set(options: BuildOptions, onnx_entries: list[EngineFile]) -> list[PlannedPlan]:
    """The plans `--trt` builds: the backbone in each `--trt-precision` (the INT8 one from the Q/DQ
    graph), the GRU graphs in FP32. `--dla-core` applies to the backbone plans only: DLA runs
    FP16 and INT8, and the GRU's FP32 recurrence stays on the GPU."""
    planned = []
    for entry in onnx_entries:
        if entry.role == BACKBONE:
            precision = "int8" if entry.precision == "int8" else "fp16"
            if precision not in options.trt_precision:
                continue
            dla_core = options.dla_core
        else:
            precision, dla_core = "fp32", None  # the recurrent head stays in float32: see export/graphs/gru.py
        planned.append(PlannedPlan(entry, precision, plan_file_name(entry.file, precision), dla_core))
    return planned


def _tensorrt(options: BuildOptions, onnx_entries: list[EngineFile], staging: Path, progress: Progress) -> list[EngineFile]:
    progress.start("building TensorRT plans")
    plans = []
    cache = staging / TIMING_CACHE_NAME
    previous_cache = Path(options.out) / TIMING_CACHE_NAME
    if previous_cache.is_file():
        shutil.copyfile(previous_cache, cache)  # reuse earlier tactic timings: much faster rebuilds
    for planned in plan_set(options, onnx_entries):
        entry = planned.source
        plan_path = staging / planned.file
        info = build_plan(staging / entry.file, plan_path, precision=planned.precision, max_batch=options.max_batch,
                          workspace_mb=options.workspace_mb, dla_core=planned.dla_core, timing_cache_path=cache)
        progress.note(f"{plan_path.name}: {planned.precision}" + ("" if planned.dla_core is None else f" on DLA core {planned.dla_core}"))
        extra = plan_extra({**entry.extra, "onnx_file": entry.file}, info)
        plans.append(engine_entry(entry.role, "tensorrt", planned.precision, plan_path, entry.inputs, entry.outputs,
                                  options.max_batch, extra))
    progress.finish(f"{len(plans)} plans")
    return plans


def _split(frames: np.ndarray, holdout: int):
    """Every k-th frame held out for the quality gate, so both sets span the whole source."""
    if holdout <= 0 or len(frames) < 2:
        return frames, frames
    step = max(2, len(frames) // holdout)
    mask = np.zeros(len(frames), bool)
    mask[step - 1 :: step] = True
    return frames[~mask], frames[mask]


def _feature_size(model: onnx.ModelProto) -> int:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        raise BuildError(f"the backbone's output must be [batch, F], got {[d.dim_value or d.dim_param for d in dims]}")
    return int(dims[1].dim_value)


