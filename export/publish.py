"""An engines folder, staged and published atomically; the recurrent head's engine files; replacing a head.

A build or a new head is written into a staging folder inside the output folder first;
files move into place only after every step succeeded, and the manifest is written last,
atomically. A step that fails leaves the previous engines and manifest as they were.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, TextIO

import numpy as np
import onnx
import onnxruntime

from export.errors import ExportError
from export.graphs.head import HeadShape, build_head_sequence, build_head_step, head_shape
from export.graphs.weights import save_state_dict
from runtime.backends.tensorrt import TensorRTUnavailable, build_plan, import_tensorrt
from runtime.files import atomic_write_bytes, sha256_file
from runtime.manifest import BACKBONE, GRU_SEQUENCE, GRU_STEP, EngineFile, Manifest, load_manifest, save_manifest

VERSION = "0.1.0"
HEAD_WEIGHTS_NAME = "gru_head.safetensors"


class BuildError(ExportError, RuntimeError):
    """A build that cannot go on; the message says what to change (bad input, exit 2)."""


def staging_folder(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as exc:
        raise BuildError(f"cannot write to output folder {out}: {exc.strerror or exc}; choose another with --out") from exc


def write_head_engines(weights: Mapping[str, np.ndarray], window: int, folder: Path, max_batch: int) -> list[EngineFile]:
    """The head's step and window ONNX files for `weights` (any cell and layers) in `folder`, as manifest entries."""
    shape = head_shape(weights)
    stem = head_file_stem(shape)
    step_path = folder / f"{stem}_step.onnx"
    seq_path = folder / f"{stem}_window{window}.onnx"
    atomic_write_bytes(step_path, build_head_step(weights).SerializeToString())
    atomic_write_bytes(seq_path, build_head_sequence(weights, window).SerializeToString())
    F, H, C = shape.features, shape.hidden, shape.classes
    return [
        engine_entry(GRU_STEP, "onnx", "fp32", step_path, {"x": ["batch", F], **{n: ["batch", H] for n in shape.states}},
                     {**{n: ["batch", H] for n in shape.states.values()}, "logits": ["batch", C]}, max_batch),
        engine_entry(GRU_SEQUENCE, "onnx", "fp32", seq_path, {"x": ["batch", window, F]},
                     {"h_last": ["batch", H], "logits": ["batch", C]}, max_batch, {"window": window}),
    ]


def head_file_stem(shape: HeadShape) -> str:
    """`gru` for the one-layer GRU (the names every earlier build used), else e.g. `lstm2`."""
    return shape.cell if shape.layers == 1 and shape.cell == "gru" else f"{shape.cell}{shape.layers}"


def head_fields(shape: HeadShape) -> dict[str, Any]:
    """The manifest's fields that describe the head: hidden size, cell, layers, state pairs."""
    return {"hidden_size": shape.hidden, "cell": shape.cell, "layers": shape.layers, "states": shape.states}


def publish_head(engines: Path, out: Path, weights: Mapping[str, np.ndarray], labels: tuple[str, ...], window: int,
                 training: dict[str, Any], task_quality: Optional[dict[str, Any]] = None, log: Optional[TextIO] = None,
                 weights_out: Optional[Path] = None, clip_cosine: Optional[dict[str, Any]] = None) -> Manifest:
    """Replace the recurrent head of the engines in `engines` with `weights` (any cell and layers),
    writing the result to `out`.

    The new head engines (ONNX; TensorRT plans too where the manifest has them and TensorRT
    imports), the weights (`gru_head.safetensors`) and the manifest (labels, window,
    training summary, task accuracy, INT8 cosine on the clips) are staged and published like a build: files first,
    the manifest last and atomically. With `out` != `engines` the backbone files are copied.
    """
    log = log or sys.stderr
    old = load_manifest(engines)
    out = Path(out)
    staging = staging_folder(out)
    try:
        entries = [e for e in old.engines if e.role == BACKBONE]
        if out.resolve() != Path(engines).resolve():
            for entry in entries:
                shutil.copyfile(old.path_of(entry), staging / entry.file)
        head = write_head_engines(weights, window, staging, _max_batch(old))
        save_state_dict(weights, staging / HEAD_WEIGHTS_NAME)
        if weights_out is not None:
            save_state_dict(weights, weights_out)
        trt_plans = [e for e in old.engines if e.format == "tensorrt" and e.role != BACKBONE]
        if trt_plans:
            entries.extend(_rebuild_head_plans(head, staging, trt_plans, log))
        entries.extend(head)
        quantization = dict(old.quantization)
        if task_quality:
            quantization["task_accuracy"] = task_quality
        if clip_cosine:  # INT8 vs FP32 features on the training clips, beside the calibration-time figure
            quantization["on_clips"] = clip_cosine
        provenance = dict(old.provenance)
        provenance["gru_weights"] = f"trained: {HEAD_WEIGHTS_NAME} (sha256 {sha256_file(staging / HEAD_WEIGHTS_NAME)[:16]})"
        stride = old.stride if old.window == window else max(1, window // 2)
        manifest = dataclasses.replace(old, labels=tuple(labels), window=window, stride=stride,
                                       **head_fields(head_shape(weights)), engines=tuple(entries),
                                       training=training, quantization=quantization, provenance=provenance,
                                       versions=tool_versions(), folder=out)
        publish(staging, out, manifest)
        keep = {e.file for e in manifest.engines} | {HEAD_WEIGHTS_NAME}
        for entry in old.engines:  # files of the replaced head no longer listed (e.g. another window)
            if entry.file not in keep and out.resolve() == Path(engines).resolve():
                (out / entry.file).unlink(missing_ok=True)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _max_batch(manifest: Manifest) -> int:
    return max((e.max_batch for e in manifest.engines), default=8)


def _rebuild_head_plans(head: list[EngineFile], staging: Path, old_plans: list[EngineFile], log: TextIO) -> list[EngineFile]:
    """TensorRT plans for the new GRU files where TensorRT is here; otherwise the old plans are dropped."""
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        print("train: WARNING TensorRT is not installed here: the GRU TensorRT plans were removed from the manifest; "
              "rebuild them on the device (edge-export --trt, then edge-export train ... again there)", file=log)
        return []
    plans = []
    for entry in head:
        plan_path = staging / (Path(entry.file).stem + ".fp32.plan")
        info = build_plan(staging / entry.file, plan_path, precision="fp32", max_batch=entry.max_batch)
        extra = dict(entry.extra)
        extra.update(info.get("key", {}))
        extra["onnx_file"] = entry.file
        plans.append(engine_entry(entry.role, "tensorrt", "fp32", plan_path, entry.inputs, entry.outputs, entry.max_batch, extra))
    return plans


def publish(staging: Path, out: Path, manifest: Manifest) -> None:
    """Move the staged files into `out`, then write the manifest (last, atomically)."""
    for path in sorted(staging.iterdir()):
        os.replace(path, out / path.name)
    save_manifest(manifest, out)
    print(f"      wrote {out / 'manifest.json'}", file=sys.stderr)


def engine_entry(role: str, fmt: str, precision: str, path: Path, inputs: dict[str, list], outputs: dict[str, list],
                 max_batch: int, extra: Optional[Mapping[str, Any]] = None) -> EngineFile:
    return EngineFile(role=role, format=fmt, precision=precision, file=path.name, sha256=sha256_file(path),
                      inputs=inputs, outputs=outputs, max_batch=max_batch, extra=dict(extra or {}))


def tool_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {
        "edge_run": VERSION,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "tensorrt": None,
    }
    try:
        versions["tensorrt"] = import_tensorrt().__version__
    except TensorRTUnavailable:
        pass
    return versions
