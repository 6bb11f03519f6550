"""`edge-export`: build the engines (default), train the head, `inspect` a manifest, `verify` engines.

    edge-export                         # shipped MobileNet-V3-Small + shipped demo head, INT8 from demo frames
    edge-export --weights ft.safetensors --calib factory.mp4 --trt
    edge-export train --clips clips/    # train the GRU head on labelled clips (needs the `train` extra)
    edge-export train --clips demo      # ... on the synthetic demo task (reproduces the shipped head)
    edge-export pretrain                # pretrain the default backbone on synthetic images (~15-30 min CPU)
    edge-export evaluate --clips demo:20 --demo-seed 1   # task accuracy of the engines on labelled clips
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

from runtime.help_format import HelpFormatter

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2
SUBCOMMANDS = ("build", "inspect", "verify", "train", "pretrain", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    from .build import DEFAULT_STRIDE, DEFAULT_WINDOW

    parser = argparse.ArgumentParser(
        prog="edge-export",
        description="Build the CNN backbone and GRU engines (ONNX, INT8 Q/DQ, TensorRT) and engines/manifest.json. "
        "Subcommands: train, pretrain, evaluate, inspect, verify (run `edge-export train --help`).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", default="engines", type=Path, metavar="DIR", help="output folder")
    bb = parser.add_argument_group("backbone")
    bb.add_argument("--variant", default="small", help="MobileNet-V3 variant: small or large")
    bb.add_argument("--weights", type=Path, metavar="FILE", help="torchvision-format state dict (.safetensors or .npz); 'seeded' for a seeded init; "
                    "default: the shipped MobileNet-V3-Small pretrained on synthetic images (export/assets)")
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
    g.add_argument("--gru-weights", type=Path, metavar="FILE",
                   help="PyTorch GRUCell + Linear state dict (.safetensors/.npz); 'seeded' for a seeded init; default: the "
                   "shipped demo head when the backbone and labels are the defaults, seeded otherwise")
    g.add_argument("--train-demo", action="store_true",
                   help="after building, train the head on the synthetic demo task instead of using the shipped one "
                   "(needs the train extra; same as running `edge-export train --clips demo`)")
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
        formatter_class=HelpFormatter,
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
        if command == "train":
            return train_command(train_parser().parse_args(argv), argv)
        if command == "pretrain":
            return pretrain_command(pretrain_parser().parse_args(argv), argv)
        if command == "evaluate":
            return evaluate_command(evaluate_parser().parse_args(argv))
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
    seeded_backbone = args.weights is not None and str(args.weights) == "seeded"
    seeded_head = args.gru_weights is not None and str(args.gru_weights) == "seeded"
    args.weights = None if seeded_backbone else args.weights
    args.gru_weights = None if seeded_head else args.gru_weights
    if args.train_demo:
        from .torch_mobilenet import TorchUnavailable, require_torch

        try:
            require_torch()
        except TorchUnavailable as exc:
            return _fail(EXIT_INPUT, f"--train-demo: {exc}")
    options = BuildOptions(
        seeded_backbone=seeded_backbone, seeded_head=seeded_head,
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
    if args.train_demo:
        code = train_command(train_parser().parse_args(["--clips", "demo", "--engines", str(args.out)]),
                             ["--clips", "demo", "--engines", str(args.out)])
        if code != EXIT_OK:
            return code
    print(f"edge-export: engines ready in {manifest.folder}; run: edge-run --engines {manifest.folder} --source demo --max-frames 300",
          file=sys.stderr)
    return EXIT_OK


def _tensorrt_errors():
    from runtime.backends.tensorrt.build import TensorRTUnavailable

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
    print(f"backbone      {manifest.backbone_arch}: {spec.height}x{spec.width} {spec.color_order}, "
          f"mean {list(spec.mean)}, std {list(spec.std)} -> F={manifest.feature_size}")
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
    from runtime.backends import open_engines, resolve_backend
    from runtime.backends.engine import EngineError
    from runtime.backends.onnxrt import OrtEngine
    from runtime.manifest import BACKBONE, GRU_STEP, ManifestError, load_manifest

    from .calibration import CalibrationError, read_frames
    from .quantize import row_cosine

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
        cosine, max_abs = row_cosine(ref_features, got), float(np.max(np.abs(ref_features - got)))
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


def _verify_gru(manifest, deployed, features: np.ndarray, engine_cls, role) -> tuple[bool, float]:
    """Roll the deployed GRU step and the ONNX FP32 reference over the same features."""
    from runtime.backends import GRU_RECURRENCE

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


def train_parser() -> argparse.ArgumentParser:
    from .train import DEFAULT_MAX_FAILED, TrainOptions

    d = TrainOptions()
    parser = argparse.ArgumentParser(
        prog="edge-export train",
        description="Train the GRU head on labelled clips with the backbone frozen, then rewrite the GRU engines and "
        "the manifest (labels, window, training summary) in the engines folder, atomically. Needs PyTorch: "
        "pip install 'edge-run[train]' (CPU-only machines: pip install torch==2.13.0 first).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--clips", default="demo", metavar="SOURCE",
                        help="a folder of class sub-folders (<label>/*.mp4|avi|mkv or <label>/<clip>/ image folders), "
                        "a CSV of path,label, or demo[:N] (N clips per class of the synthetic demo task)")
    parser.add_argument("--engines", default="engines", type=Path, metavar="DIR", help="engines built by edge-export")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write the result here instead of updating --engines")
    parser.add_argument("--precision", default="int8", help="backbone whose features train the head: the one you deploy")
    parser.add_argument("--window", type=int, metavar="W", help="window length (default: the manifest's)")
    parser.add_argument("--hidden", type=int, metavar="H", help="GRU hidden size (default: the manifest's)")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction, help="clips per class held out for validation")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="most epochs")
    parser.add_argument("--patience", type=int, default=d.patience, help="early stop after this many epochs without a better validation accuracy")
    parser.add_argument("--iterations", type=int, default=d.iterations, help="optimisation steps per epoch")
    parser.add_argument("--batch", type=int, default=d.batch, help="windows per step")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW, cosine decay)")
    parser.add_argument("--max-drop", type=float, default=d.max_drop, help="largest random frame-drop rate in training samples")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed for the split, sampling and initialisation")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime (default: all cores)")
    parser.add_argument("--cache", type=Path, metavar="DIR", help="feature cache (default: ~/.cache/edge-run/features)")
    parser.add_argument("--max-failed", type=float, default=DEFAULT_MAX_FAILED, help="abort when more than this fraction of clips is unreadable")
    parser.add_argument("--no-fp32-compare", action="store_true", help="skip scoring the head on the FP32 backbone's features")
    parser.add_argument("--weights-out", type=Path, metavar="FILE", help="also save the trained weights here (.safetensors)")
    parser.add_argument("--demo-seed", type=int, default=d.demo_seed, help="with --clips demo: seed of the demo clips")
    parser.add_argument("--demo-frames", type=int, default=d.demo_frames, help="with --clips demo: frames per clip")
    parser.add_argument("--demo-size", type=int, nargs=2, default=d.demo_size, metavar=("W", "H"), help="with --clips demo: frame size")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def train_command(args, argv) -> int:
    from runtime.manifest import ManifestError
    from runtime.sources import SourceError

    from .clips import ClipsError
    from .torch_mobilenet import TorchUnavailable
    from .train import TrainError, TrainOptions, run_training
    from .weights import WeightsError

    options = TrainOptions(
        clips=args.clips, engines=args.engines, out=args.out, precision=args.precision, window=args.window,
        hidden=args.hidden, val_fraction=args.val_fraction, epochs=args.epochs, patience=args.patience,
        iterations=args.iterations, batch=args.batch, lr=args.lr, max_drop=args.max_drop, seed=args.seed,
        threads=args.threads, cache_dir=args.cache, max_failed=args.max_failed, compare_fp32=not args.no_fp32_compare,
        weights_out=args.weights_out, progress=not args.no_progress, demo_seed=args.demo_seed,
        demo_frames=args.demo_frames, demo_size=tuple(args.demo_size),
        command="edge-export train " + " ".join(argv),
    )
    try:
        training = run_training(options)
    except (TorchUnavailable, ClipsError, TrainError, ManifestError, SourceError, WeightsError, ValueError) as exc:
        return _fail(EXIT_INPUT, str(exc))
    out = args.out or args.engines
    print(f"edge-export: head trained on {sum(training['clips_per_class'].values())} clips "
          f"({', '.join(f'{k} {v}' for k, v in training['clips_per_class'].items())}); engines ready in {out}; "
          f"run: edge-run --engines {out} --source demo --score", file=sys.stderr)
    return EXIT_OK


def pretrain_parser() -> argparse.ArgumentParser:
    from .pretrain import PretrainOptions

    d = PretrainOptions()
    parser = argparse.ArgumentParser(
        prog="edge-export pretrain",
        description="Pretrain MobileNet-V3-Small (PyTorch, CPU) on synthetic images of the demo world and write a "
        "torchvision-format state dict plus a JSON record of how it was made. This is how the shipped default "
        "backbone was made. Needs the train extra.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=d.out, metavar="FILE", help="weights to write (.safetensors)")
    parser.add_argument("--steps", type=int, default=d.steps, help="optimisation steps")
    parser.add_argument("--batch", type=int, default=d.batch, help="images per step")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW, warm-up then cosine)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed for images and initialisation")
    parser.add_argument("--input-size", type=int, nargs=2, default=d.input_size, metavar=("H", "W"), help="network input size")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    return parser


def pretrain_command(args, argv) -> int:
    from .pretrain import PretrainOptions, pretrain
    from .torch_mobilenet import TorchUnavailable

    options = PretrainOptions(out=args.out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                              input_size=tuple(args.input_size), threads=args.threads)
    try:
        pretrain(options)
    except TorchUnavailable as exc:
        return _fail(EXIT_INPUT, str(exc))
    print(f"edge-export: pretrained weights in {args.out}; use them with: edge-export --weights {args.out}", file=sys.stderr)
    return EXIT_OK


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-export evaluate",
        description="Task accuracy of built engines on labelled clips (per window, per step, single frame, with "
        "random frame drops), for every ONNX backbone precision. No torch needed.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--engines", default="engines", type=Path, metavar="DIR")
    parser.add_argument("--clips", default="demo:20", metavar="SOURCE", help="as for train: folder, CSV or demo[:N]")
    parser.add_argument("--demo-seed", type=int, default=1, help="with demo clips: a seed the head was not trained on")
    parser.add_argument("--demo-frames", type=int, default=48)
    parser.add_argument("--demo-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--drop", type=float, default=0.3, help="frame-drop rate for the drop figures")
    parser.add_argument("--cache", type=Path, metavar="DIR", help="feature cache (default: ~/.cache/edge-run/features)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def evaluate_command(args) -> int:
    from runtime.manifest import BACKBONE, ManifestError, load_manifest

    from .clips import ClipsError, find_clips
    from .evaluate import report
    from .feature_cache import FeatureExtractor
    from .weights import load_state_dict

    try:
        manifest = load_manifest(args.engines)
        clip_set = find_clips(args.clips, demo_seed=args.demo_seed, demo_frames=args.demo_frames,
                              demo_size=tuple(args.demo_size))
    except (ManifestError, ClipsError) as exc:
        return _fail(EXIT_INPUT, str(exc))
    head = args.engines / "gru_head.safetensors"
    weights = load_state_dict(head) if head.is_file() else _weights_from_onnx(manifest)
    results = {}
    for precision in manifest.precisions(BACKBONE, "onnx"):
        extractor = FeatureExtractor(manifest.path_of(manifest.find(BACKBONE, "onnx", precision)), manifest.input, args.cache)
        extracted = extractor.extract(clip_set.clips, desc=f"features ({precision})")
        targets = [manifest.labels.index(c.label) if c.label in manifest.labels else -1 for c in extracted.clips]
        results[precision] = report(weights, extracted.features, targets, manifest.window, drop=args.drop)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for precision, r in results.items():
            drop = int(round(args.drop * 100))
            print(f"{precision}: window accuracy {r['window_accuracy']:.1%} ({r['windows']} windows), "
                  f"{r[f'window_accuracy_drop{drop}']:.1%} with {drop}% drops; step accuracy {r['step_accuracy']:.1%} "
                  f"({r['steps']} steps), {r[f'step_accuracy_drop{drop}']:.1%} with drops; single frame "
                  f"{r['single_frame_accuracy']:.1%} (chance {r['chance']:.1%})")
    return EXIT_OK


def _weights_from_onnx(manifest) -> dict:
    """The GRU weights read back from the step ONNX's initializers."""
    import onnx
    from onnx import numpy_helper

    from runtime.manifest import GRU_STEP

    model = onnx.load(str(manifest.path_of(manifest.find(GRU_STEP, "onnx"))))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _fail(code: int, message: str) -> int:
    print(f"edge-export: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
