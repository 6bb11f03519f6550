"""`edge-export verify`: the deployed engines against the FP32 ONNX reference, on the same frames.

Errors are raised for `export.cli.main` to report; a mismatch is a result, exit 1.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from export.errors import EXIT_FAILED, EXIT_OK
from export.quantize import read_frames, row_cosine
from runtime import validation as valid
from runtime.backends import GRU_RECURRENCE, open_engines, resolve_backend
from runtime.backends.engine import Engine
from runtime.backends.onnxrt import OrtEngine
from runtime.help_format import ArgumentParser
from runtime.manifest import BACKBONE, GRU_STEP, Manifest, load_manifest


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
    parser.add_argument("--min-cosine", type=valid.COSINE, default=0.95, help="fail below this mean cosine (INT8/FP16)")
    return parser


def verify_command(args: argparse.Namespace) -> int:
    """Deployed engines against the FP32 ONNX reference (onnxruntime CPU) on the same frames."""
    manifest = load_manifest(args.out)
    backend = resolve_backend(args.backend)
    frames = read_frames(args.source, args.frames, manifest.input)
    fmt = "tensorrt" if backend == "tensorrt" else "onnx"
    precisions = [args.precision] if args.precision else manifest.precisions(BACKBONE, fmt)
    reference = OrtEngine(str(manifest.path_of(manifest.find(BACKBONE, "onnx", "fp32"))), "reference", 1, "fp32")
    ref_features = _run_rows(reference, frames)
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
        gru_ok, gru_err = _verify_gru(manifest, engines.gru_step, ref_features)
        failed |= not gru_ok
        print(f"gru_step {fmt} on {backend}: max abs error over {len(ref_features)} steps {gru_err:.2e} -> {'ok' if gru_ok else 'MISMATCH'}")
        engines.close()
    return EXIT_FAILED if failed else EXIT_OK


def _run_rows(engine: Engine, frames: np.ndarray) -> np.ndarray:
    inp = engine.input(engine.input_names[0])
    out = engine.output(engine.output_names[0])
    rows = []
    for frame in frames:
        inp[0] = frame
        engine.run(1)
        rows.append(out[0].copy())
    return np.stack(rows)


def _verify_gru(manifest: Manifest, deployed: Engine, features: np.ndarray) -> tuple[bool, float]:
    """Roll the deployed GRU step and the ONNX FP32 reference over the same features."""
    reference = OrtEngine(str(manifest.path_of(manifest.find(GRU_STEP, "onnx"))), "gru_reference", 1, "fp32", recurrence=GRU_RECURRENCE)
    deployed.reset_state()
    worst = 0.0
    for feature in features:
        for engine in (reference, deployed):
            engine.input("x")[0] = feature
            engine.step(1)
        worst = max(worst, float(np.max(np.abs(reference.output("logits")[0] - deployed.output("logits")[0]))))
    ok = np.isfinite(worst) and worst < 1e-3
    return bool(ok), worst
