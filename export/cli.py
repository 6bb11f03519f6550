"""`edge-export`: build the engines (default), `inspect` a manifest, `verify` deployed engines.

    edge-export                         # MobileNet-V3-Small, seeded, INT8 from demo frames, GRU H=256
    edge-export --weights ft.safetensors --calib factory.mp4 --trt
    edge-export inspect [--out engines]
    edge-export verify [--out engines] [--backend tensorrt] [--frames 64]

Exit codes: 0 done; 1 build failed (quality gate, engine error); 2 bad input (arguments,
weights, ONNX, calibration source, output folder).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2
SUBCOMMANDS = ("build", "inspect", "verify")


def build_parser() -> argparse.ArgumentParser:
    from .build import DEFAULT_STRIDE, DEFAULT_WINDOW

    parser = argparse.ArgumentParser(
        prog="edge-export",
        description="Build the CNN backbone and GRU engines (ONNX, INT8 Q/DQ, TensorRT) and engines/manifest.json. "
        "Subcommands: inspect, verify (run `edge-export inspect --help`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="engines", type=Path, metavar="DIR", help="output folder")
    bb = parser.add_argument_group("backbone")
    bb.add_argument("--variant", default="small", help="MobileNet-V3 variant: small or large")
    bb.add_argument("--weights", type=Path, metavar="FILE", help="torchvision-format state dict (.safetensors or .npz); default: seeded init")
    bb.add_argument("--backbone-onnx", type=Path, metavar="FILE", help="use your own ONNX backbone instead of MobileNet-V3")
    bb.add_argument("--feature-output", metavar="NAME", help="with --backbone-onnx: the [N, F] tensor to use as features")
    bb.add_argument("--input-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"), help="network input height and width")
    bb.add_argument("--seed", type=int, default=0, help="seed for default weights")
    q = parser.add_argument_group("quantization")
    q.add_argument("--calib", default="demo", metavar="SOURCE", help="calibration frames: video file, image folder or demo")
    q.add_argument("--calib-frames", type=int, default=128, metavar="N", help="calibration frames")
    q.add_argument("--holdout-frames", type=int, default=32, metavar="N", help="held-out frames for the INT8 quality gate")
    q.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), help="activation range method (default: the one that measured best)")
    q.add_argument("--min-cosine", type=float, default=0.95, help="quality gate: minimum mean cosine of INT8 to FP32 features")
    q.add_argument("--allow-degraded", action="store_true", help="keep an INT8 model that fails the quality gate")
    q.add_argument("--no-int8", action="store_true", help="skip INT8 quantization")
    g = parser.add_argument_group("temporal head")
    g.add_argument("--hidden", type=int, default=256, metavar="H", help="GRU hidden size")
    g.add_argument("--labels", metavar="A,B,...", help="class labels (default: the demo task's classes)")
    g.add_argument("--gru-weights", type=Path, metavar="FILE", help="PyTorch GRUCell + Linear state dict (.safetensors/.npz); default: seeded")
    g.add_argument("--window", type=int, default=DEFAULT_WINDOW, metavar="W", help="default window length for per-window decisions")
    g.add_argument("--stride", type=int, default=DEFAULT_STRIDE, metavar="S", help="default frames between window decisions")
    t = parser.add_argument_group("TensorRT")
    t.add_argument("--trt", action="store_true", help="also build TensorRT plans (needs the tensorrt extra and a GPU)")
    t.add_argument("--trt-precision", default="int8,fp16", metavar="LIST", help="backbone plan precisions")
    t.add_argument("--max-batch", type=int, default=8, metavar="N", help="largest batch (streams) the engines are built for")
    t.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT builder workspace limit")
    t.add_argument("--dla-core", type=int, help="build for this DLA core (Jetson Orin), with GPU fallback")
    return parser


def inspect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-export inspect", description="Print what a manifest holds and check its files.")
    parser.add_argument("--out", default="engines", type=Path, metavar="DIR", help="folder holding manifest.json")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    return parser


def verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-export verify",
        description="Run the deployed engines against the FP32 ONNX reference on N frames; non-zero exit on mismatch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="engines", type=Path, metavar="DIR", help="folder holding manifest.json")
    parser.add_argument("--backend", default="cpu", help="backend to verify: cpu, cuda, trt-ep, tensorrt")
    parser.add_argument("--precision", help="backbone precision to verify (default: every one the backend has)")
    parser.add_argument("--frames", type=int, default=32, help="frames to compare")
    parser.add_argument("--source", default="demo:7", help="frames from this source")
    parser.add_argument("--min-cosine", type=float, default=0.95, help="fail below this mean cosine (INT8/FP16)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "build"
    try:
        if command == "inspect":
            return inspect_command(inspect_parser().parse_args(argv))
        if command == "verify":
            return verify_command(verify_parser().parse_args(argv))
        return build_command(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        print("edge-export: interrupted; the previous engines are untouched", file=sys.stderr)
        return 130


def build_command(args) -> int:
    from runtime.sources import SourceError

    from .build import BuildError, BuildOptions, build
    from .calibration import CalibrationError
    from .quantize import QualityGateError, QuantizationError
    from .user_backbone import BackboneOnnxError
    from .weights import WeightsError

    if args.feature_output and not args.backbone_onnx:
        return _fail(EXIT_INPUT, "--feature-output needs --backbone-onnx")
    options = BuildOptions(
        out=args.out, variant=args.variant, weights=args.weights, backbone_onnx=args.backbone_onnx,
        feature_output=args.feature_output, input_size=tuple(args.input_size), calib=args.calib,
        calib_frames=args.calib_frames, holdout_frames=args.holdout_frames, calibration=args.calibration,
        int8=not args.no_int8, min_cosine=args.min_cosine, allow_degraded=args.allow_degraded,
        hidden=args.hidden, labels=tuple(s.strip() for s in args.labels.split(",") if s.strip()) if args.labels else None,
        gru_weights=args.gru_weights, window=args.window, stride=args.stride, seed=args.seed,
        max_batch=args.max_batch, trt=args.trt, trt_precision=tuple(args.trt_precision.split(",")),
        workspace_mb=args.workspace_mb, dla_core=args.dla_core,
    )
    for path, flag in ((args.weights, "--weights"), (args.gru_weights, "--gru-weights"), (args.backbone_onnx, "--backbone-onnx")):
        if path is not None and not Path(path).is_file():
            return _fail(EXIT_INPUT, f"{flag} {path}: no such file")
    try:
        manifest = build(options)
    except (WeightsError, BackboneOnnxError, CalibrationError, SourceError, BuildError, ValueError) as exc:
        return _fail(EXIT_INPUT, str(exc))
    except QualityGateError as exc:
        return _fail(EXIT_FAILED, str(exc))
    except QuantizationError as exc:
        return _fail(EXIT_FAILED, f"quantization failed: {exc}")
    except _tensorrt_errors() as exc:
        return _fail(EXIT_INPUT, str(exc))
    print(f"edge-export: engines ready in {manifest.folder}; run: edge-run --engines {manifest.folder} --source demo --max-frames 300",
          file=sys.stderr)
    return EXIT_OK


def _tensorrt_errors():
    from .tensorrt_build import TensorRTUnavailable

    return (TensorRTUnavailable,)


def inspect_command(args) -> int:
    from runtime.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(args.out)
    except ManifestError as exc:
        return _fail(EXIT_INPUT, str(exc))
    if args.json:
        print(json.dumps(manifest.to_json(), indent=2))
        return EXIT_OK
    spec = manifest.input
    print(f"manifest      {manifest.folder / 'manifest.json'} (schema {manifest.schema_version}, all file hashes match)")
    print(f"backbone      {manifest.backbone_arch}: {spec.height}x{spec.width} {spec.color_order}, mean {list(spec.mean)}, std {list(spec.std)} -> F={manifest.feature_size}")
    print(f"temporal      GRU H={manifest.hidden_size}, window {manifest.window}, stride {manifest.stride}")
    print(f"labels        {', '.join(manifest.labels)}")
    for entry in manifest.engines:
        size = manifest.path_of(entry).stat().st_size / 1e6
        print(f"engine        {entry.role:<13} {entry.format:<9} {entry.precision:<5} {entry.file} ({size:.1f} MB, sha256 {entry.sha256[:12]})")
    if manifest.quantization:
        q = manifest.quantization
        print(f"quantization  {q.get('method')} on {q.get('calibration_frames')} frames: cosine mean {q.get('cosine_mean', float('nan')):.4f}, "
              f"min {q.get('cosine_min', float('nan')):.4f} ({q.get('gate')})")
    if manifest.training:
        print(f"training      {json.dumps(manifest.training)}")
    print(f"versions      {', '.join(f'{k} {v}' for k, v in manifest.versions.items() if v)}")
    return EXIT_OK


def verify_command(args) -> int:
    """Deployed engines against the FP32 ONNX reference (onnxruntime CPU) on the same frames."""
    from runtime.backend_onnx import OrtEngine
    from runtime.engine import EngineError
    from runtime.engine_set import open_engines, resolve_backend
    from runtime.manifest import BACKBONE, GRU_STEP, ManifestError, load_manifest

    from .calibration import CalibrationError, read_frames

    try:
        manifest = load_manifest(args.out)
        backend = resolve_backend(args.backend)
        frames = read_frames(args.source, args.frames, manifest.input)
    except (ManifestError, EngineError, CalibrationError) as exc:
        return _fail(EXIT_INPUT, str(exc))
    fmt = "tensorrt" if backend == "tensorrt" else "onnx"
    precisions = [args.precision] if args.precision else manifest.precisions(BACKBONE, fmt)
    reference = OrtEngine(str(manifest.path_of(manifest.find(BACKBONE, "onnx", "fp32"))), "reference", 1, "fp32")
    ref_features = _run_rows(reference, frames)
    failed = False
    for precision in precisions:
        try:
            engines = open_engines(manifest, backend, precision, num_streams=1, window_engine="step")
        except (ManifestError, EngineError) as exc:
            return _fail(EXIT_INPUT, str(exc))
        got = _run_rows(engines.backbone, frames)
        cosine, max_abs = _compare(ref_features, got)
        threshold = 0.9999 if precision == "fp32" else args.min_cosine
        ok = float(cosine.mean()) >= threshold
        failed |= not ok
        print(f"backbone {fmt}/{precision} on {backend}: cosine mean {cosine.mean():.5f} min {cosine.min():.5f}, "
              f"max abs error {max_abs:.5f} -> {'ok' if ok else 'MISMATCH'} (threshold {threshold})")
        gru_ok, gru_err = _verify_gru(manifest, engines.gru_step, ref_features, OrtEngine, GRU_STEP)
        failed |= not gru_ok
        print(f"gru_step {fmt} on {backend}: max abs error over {len(ref_features)} steps {gru_err:.2e} -> {'ok' if gru_ok else 'MISMATCH'}")
        engines.close()
    return EXIT_FAILED if failed else EXIT_OK


def _run_rows(engine, frames: np.ndarray) -> np.ndarray:
    inp = engine.input(engine.input_names[0])
    out = engine.output(engine.output_names[0])
    rows = []
    for frame in frames:
        inp[0] = frame
        engine.run(1)
        rows.append(out[0].copy())
    return np.stack(rows)


def _compare(ref: np.ndarray, got: np.ndarray):
    dot = np.sum(ref * got, axis=1)
    norms = np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-30)
    return dot / norms, float(np.max(np.abs(ref - got)))


def _verify_gru(manifest, deployed, features: np.ndarray, engine_cls, role) -> tuple[bool, float]:
    """Roll the deployed GRU step and the ONNX FP32 reference over the same features."""
    from runtime.engine_set import GRU_RECURRENCE

    reference = engine_cls(str(manifest.path_of(manifest.find(role, "onnx"))), "gru_reference", 1, "fp32", recurrence=GRU_RECURRENCE)
    deployed.reset_state()
    worst = 0.0
    for feature in features:
        for engine in (reference, deployed):
            engine.input("x")[0] = feature
            engine.step(1)
        worst = max(worst, float(np.max(np.abs(reference.output("logits")[0] - deployed.output("logits")[0]))))
    ok = np.isfinite(worst) and worst < 1e-3
    return bool(ok), worst


def _fail(code: int, message: str) -> int:
    print(f"edge-export: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
