"""`edge-export verify`: the deployed engines against references they were not built into, on the same frames.

- The backbone: each deployed precision against the FP32 backbone (onnxruntime CPU) rebuilt
  from the weights the manifest's provenance records (the shipped backbone or a `--weights`
  file, checked against its SHA-256 prefix), so the FP32 file is checked too; for a seeded or
  user-ONNX backbone, which cannot be rebuilt here, against the FP32 ONNX file, and it says so.
- The recurrent head's step engine (GRU or LSTM, one or two layers): rolled over the reference
  features against the plain-numpy head (`export.graphs.head.head_step_numpy`) on the weights the build recorded in the manifest's
  provenance (the shipped demo head, `seeded:N`, `trained: gru_head.safetensors` or a
  `--gru-weights` file, each checked against its recorded SHA-256 prefix). Where those
  weights cannot be found, it falls back to the weights inside the window engine, a
  file built from the same weights but not the one under test, and says so. (Comparing the
  step ONNX with itself, as on the CPU backend it once did, can never fail.)

Errors are raised for `export.cli.main` to report; a mismatch is a result, exit 1.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort

from export.build import DEFAULT_BACKBONE_WEIGHTS, DEFAULT_DEMO_HEAD, SEEDED
from export.errors import EXIT_FAILED, EXIT_OK
from export.graphs.head import head_shape, head_step_numpy, init_head_weights, weights_from_engine
from export.graphs.mobilenet import VARIANTS, build_backbone
from export.graphs.weights import WeightsError, load_state_dict
from export.publish import HEAD_WEIGHTS_NAME
from export.quantize import DEFAULT_MIN_COSINE, read_frames, row_cosine
from export.training.clip_quality import features_of, measure_on_clips
from export.training.clips import find_clips
from runtime import validation as valid
from runtime.backends import open_engines, resolve_backend
from runtime.backends.engine import Engine
from runtime.files import sha256_file
from runtime.help_format import ArgumentParser
from runtime.manifest import BACKBONE, GRU_SEQUENCE, Manifest, load_manifest

# The GRU ships in float32 (export/graphs/gru.py). float32 rounding over the rolled steps moves
# the demo head's logits by 4e-6 with onnxruntime (measured, 8 steps); one weight matrix 1% off
# moves them by 0.1 (measured). 1e-3 separates the two, with room for a TensorRT FP32 plan's
# other kernels and summation order.
GRU_MAX_ABS_LOGIT_ERROR = 1e-3


def verify_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="edge-export verify",
        description="Run the deployed engines against the FP32 ONNX reference on N frames; non-zero exit on mismatch.",
    )
    parser.add_argument("--out", default="engines", type=Path, metavar="DIR", help="folder holding manifest.json")
    parser.add_argument("--backend", default="cpu", help="backend to verify: cpu, cuda, trt-ep, tensorrt")
    parser.add_argument("--precision", help="backbone precision to verify (default: every one the backend has)")
    parser.add_argument("--frames", type=valid.VERIFY_FRAMES, default=32, help="frames to compare")
    parser.add_argument("--source", default="demo:7", help="frames from this source")
    parser.add_argument("--min-cosine", type=valid.COSINE, default=DEFAULT_MIN_COSINE,
                        help="fail below this mean cosine (INT8/FP16)")
    parser.add_argument("--clips", metavar="SOURCE",
                        help="also measure the INT8 ONNX backbone against FP32 on every frame of these clips (as for "
                        "train: a folder of class folders, a CSV or demo[:N]): INT8 measured where it is used")
    return parser


def verify_command(args: argparse.Namespace) -> int:
    """Deployed engines against the FP32 ONNX reference (onnxruntime CPU) on the same frames."""
    manifest = load_manifest(args.out)
    backend = resolve_backend(args.backend)
    frames = read_frames(args.source, args.frames, manifest.input)
    fmt = "tensorrt" if backend == "tensorrt" else "onnx"
    precisions = [args.precision] if args.precision else manifest.precisions(BACKBONE, fmt)
    ref_features, backbone_reference = _backbone_reference(manifest, frames)
    print(f"reference backbone: {backbone_reference}")
    gru_weights, gru_reference = gru_reference_weights(manifest)
    failed = False
    for precision in precisions:
        engines = open_engines(manifest, backend, precision, num_streams=1, window_engine="step")
        got = _run_rows(engines.backbone, frames)
        cosine, max_abs = row_cosine(ref_features, got), float(np.max(np.abs(ref_features - got)))
        threshold = 0.9999 if precision == "fp32" else args.min_cosine
        ok = float(cosine.mean()) >= threshold
        failed |= not ok
        print(f"backbone {fmt}/{precision} on {backend}: cosine mean {cosine.mean():.5f} min {cosine.min():.5f}, "
              f"max abs error {max_abs:.5f} -> {'ok' if ok else 'MISMATCH'} (threshold {threshold})")
        gru_ok, gru_err = _verify_gru(gru_weights, engines.gru_step, ref_features)
        failed |= not gru_ok
        print(f"gru_step {fmt} on {backend} against the numpy {manifest.cell.upper()} head on {gru_reference}: max abs logit error over "
              f"{len(ref_features)} steps {gru_err:.2e} -> {'ok' if gru_ok else 'MISMATCH'} "
              f"(threshold {GRU_MAX_ABS_LOGIT_ERROR})")
        engines.close()
    if args.clips:
        failed |= not _verify_on_clips(manifest, args.clips, args.min_cosine)
    return EXIT_FAILED if failed else EXIT_OK


def _verify_on_clips(manifest: Manifest, clips_source: str, min_cosine: float) -> bool:
    """INT8 vs FP32 ONNX features on every frame of the clips; False below `min_cosine`."""
    if "int8" not in manifest.precisions(BACKBONE, "onnx"):
        print("clips: the manifest has no INT8 ONNX backbone; nothing to measure")
        return True
    clips = find_clips(clips_source).clips
    int8 = features_of(manifest, "int8", clips, None, None, progress=False)
    record, _ = measure_on_clips(manifest, list(int8), list(int8.values()), "int8", f"{len(int8)} clips of {clips_source}",
                                 progress=False)
    ok = bool(record) and record["cosine_mean"] >= min_cosine
    print(f"backbone onnx/int8 vs fp32 on {record.get('measured_on', clips_source)}: cosine mean "
          f"{record.get('cosine_mean', float('nan')):.5f} min {record.get('cosine_min', float('nan')):.5f} over "
          f"{record.get('frames', 0)} frames -> {'ok' if ok else 'BELOW'} (threshold {min_cosine}; at calibration "
          f"{manifest.quantization.get('cosine_mean', float('nan')):.5f} on {manifest.quantization.get('measured_on', 'n/a')})")
    return ok


def _run_rows(engine: Engine, frames: np.ndarray) -> np.ndarray:
    inp = engine.input(engine.input_names[0])
    out = engine.output(engine.output_names[0])
    rows = []
    for frame in frames:
        inp[0] = frame
        engine.run(1)
        rows.append(out[0].copy())
    return np.stack(rows)


def _recorded_file(recorded: str, shipped: Path, trained: Optional[Path] = None) -> Optional[Path]:
    """The file a provenance entry names ("shipped: NAME (sha256 X...)", "trained: NAME (sha256 X...)"
    or "PATH (sha256 X...)"), where it exists with that SHA-256 prefix; None otherwise."""
    path, _, rest = recorded.partition(" (sha256 ")
    if recorded.startswith("shipped: "):
        candidate = shipped
    elif recorded.startswith("trained: "):
        candidate = trained
    else:
        candidate = Path(path)
    digest = rest[:16]
    if candidate is None or len(digest) < 16 or not candidate.is_file() or not sha256_file(candidate).startswith(digest):
        return None
    return candidate


def _backbone_reference(manifest: Manifest, frames: np.ndarray) -> tuple[np.ndarray, str]:
    """FP32 features of `frames` from the backbone rebuilt from its recorded weights, or from the FP32 file."""
    recorded = str(manifest.provenance.get("backbone_weights", ""))
    variant = manifest.backbone_arch.removeprefix("mobilenet_v3_")
    weights = _recorded_file(recorded, DEFAULT_BACKBONE_WEIGHTS) if variant in VARIANTS else None
    model, description = None, ""
    if weights is not None:
        try:
            model = build_backbone(variant, load_state_dict(weights), (manifest.input.height, manifest.input.width))
            description = f"{manifest.backbone_arch} rebuilt from the recorded weights ({weights.name})"
        except WeightsError:
            model = None
    if model is None:
        fp32 = manifest.find(BACKBONE, "onnx", "fp32")
        model = onnx.load(str(manifest.path_of(fp32)))
        description = f"the FP32 file {fp32.file} (its recorded weights {recorded!r} cannot be rebuilt here)"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    features = np.concatenate([session.run(None, {name: frames[i:i + 1]})[0] for i in range(len(frames))])
    return features, description


def gru_reference_weights(manifest: Manifest) -> tuple[dict[str, np.ndarray], str]:
    """The head weights the build recorded (see the module docstring), and where they came from."""
    recorded = str(manifest.provenance.get("gru_weights", ""))
    dims = (manifest.cell, manifest.layers, manifest.feature_size, manifest.hidden_size, len(manifest.labels))
    if recorded.startswith(f"{SEEDED}:") and recorded[len(SEEDED) + 1:].isdigit():
        return init_head_weights(*dims, seed=int(recorded[len(SEEDED) + 1:])), f"the recorded weights ({recorded})"
    candidate = _recorded_file(recorded, DEFAULT_DEMO_HEAD, manifest.folder / HEAD_WEIGHTS_NAME)
    if candidate is not None:
        try:
            weights = load_state_dict(candidate)
            shape = head_shape(weights)
            if (shape.cell, shape.layers, shape.features, shape.hidden, shape.classes) == dims:
                return weights, f"the recorded weights ({candidate.name}, sha256 {sha256_file(candidate)[:16]})"
        except WeightsError:
            pass
    window = manifest.find(GRU_SEQUENCE, "onnx")
    weights = weights_from_engine(onnx.load(str(manifest.path_of(window))))
    return weights, f"the weights inside {window.file} (the recorded weights {recorded!r} were not found)"


def _verify_gru(weights: dict[str, np.ndarray], deployed: Engine, features: np.ndarray) -> tuple[bool, float]:
    """Roll the deployed step engine and the numpy head on `weights` over the same features from zero states."""
    deployed.reset_state()
    shape = head_shape(weights)
    states = {name: np.zeros((1, shape.hidden), np.float32) for name in shape.states}
    worst = 0.0
    for feature in features:
        states, logits = head_step_numpy(weights, feature[None, :], states)
        deployed.input("x")[0] = feature
        deployed.step(1)
        worst = max(worst, float(np.max(np.abs(logits[0] - deployed.output("logits")[0]))))
    ok = np.isfinite(worst) and worst < GRU_MAX_ABS_LOGIT_ERROR
    return bool(ok), worst
