"""The default subcommand, `build`, and `inspect`: their parsers and what they run.

Errors are raised, not printed: `export.cli.main` turns any `EdgeRunError` into a one-line
message and edge-export's exit code (`export.errors.code_for`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export.build import DEFAULT_STRIDE, DEFAULT_WINDOW, BuildOptions, build
from export.errors import EXIT_OK
from export.quantize import DEFAULT_MIN_COSINE, QuantizationError
from export.training.commands import train_command, train_parser
from export.training.torch_mobilenet import TorchUnavailable, require_torch
from runtime import validation as valid
from runtime.errors import EdgeRunError, UsageError
from runtime.help_format import ArgumentParser
from runtime.manifest import load_manifest


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="edge-export",
        description="Build the CNN backbone and GRU engines (ONNX, INT8 Q/DQ, TensorRT) and engines/manifest.json. "
        "Subcommands: train, pretrain, evaluate, inspect, verify (run `edge-export train --help`).",
    )
    parser.add_argument("--out", default="engines", type=Path, metavar="DIR", help="output folder")
    bb = parser.add_argument_group("backbone")
    bb.add_argument("--variant", default="small", help="MobileNet-V3 variant: small or large")
    bb.add_argument("--weights", type=Path, metavar="FILE", help="torchvision-format state dict (.safetensors or .npz); 'seeded' for a seeded init; "
                    "default: the shipped MobileNet-V3-Small pretrained on synthetic images (export/assets)")
    bb.add_argument("--backbone-onnx", type=Path, metavar="FILE", help="use your own ONNX backbone instead of MobileNet-V3")
    bb.add_argument("--feature-output", metavar="NAME",
                    help="with --backbone-onnx: the [N, F] or [N, C, 1, 1] tensor to use as features (default: the first output)")
    bb.add_argument("--input-size", type=valid.INPUT_SIDE, nargs=2, metavar=("H", "W"),
                    help="network input height and width (default 224 224; a --backbone-onnx with dynamic H, W needs it)")
    n = parser.add_argument_group("input normalisation (the network's own; default: torchvision's RGB, ImageNet mean/std, "
                                  "scale 1/255), recorded in the manifest and applied by edge-run")
    n.add_argument("--mean", type=valid.INPUT_MEAN, nargs=3, metavar=("R", "G", "B"),
                   help="per-channel mean, in scaled units, in the network's channel order")
    n.add_argument("--std", type=valid.INPUT_STD, nargs=3, metavar=("R", "G", "B"), help="per-channel std, in scaled units")
    n.add_argument("--scale", type=valid.INPUT_SCALE, metavar="X",
                   help="factor on uint8 pixels before mean/std (1/255=0.00392156862745098 for 0..1, 1 for 0..255)")
    n.add_argument("--color-order", choices=valid.COLOR_ORDERS, help="channel order the network expects")
    n.add_argument("--input-json", type=Path, metavar="FILE",
                   help='the same as a JSON sidecar: {"mean": [..], "std": [..], "scale": x, "color_order": "BGR"}; flags win')
    bb.add_argument("--seed", type=valid.SEED, default=0, help="seed for default weights")
    q = parser.add_argument_group("quantization")
    q.add_argument("--calib", default="demo", metavar="SOURCE", help="calibration frames: video file, image folder or demo")
    q.add_argument("--calib-frames", type=valid.CALIB_FRAMES, default=128, metavar="N", help="calibration frames")
    q.add_argument("--holdout-frames", type=valid.HOLDOUT_FRAMES, default=32, metavar="N", help="held-out frames for the INT8 quality gate")
    q.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), help="activation range method (default: the one that measured best)")
    q.add_argument("--min-cosine", type=valid.COSINE, default=DEFAULT_MIN_COSINE,
                   help="quality gate: minimum mean cosine of INT8 to FP32 features")
    q.add_argument("--allow-degraded", action="store_true", help="keep an INT8 model that fails the quality gate")
    q.add_argument("--no-int8", action="store_true", help="skip INT8 quantization")
    g = parser.add_argument_group("temporal head")
    g.add_argument("--cell", choices=valid.CELLS, default="gru", help="recurrent cell of the head")
    g.add_argument("--layers", type=valid.LAYERS, default=1, metavar="N", help="stacked layers of that cell: 1 or 2")
    g.add_argument("--hidden", type=valid.HIDDEN, default=256, metavar="H", help="hidden size of each layer")
    g.add_argument("--labels", type=valid.labels, metavar="A,B,...", help="class labels (default: the demo task's classes)")
    g.add_argument("--gru-weights", type=Path, metavar="FILE",
                   help="PyTorch state dict of the head (.safetensors/.npz): GRUCell/LSTMCell + Linear, or nn.GRU/nn.LSTM "
                   "(num_layers=2) + Linear, as PyTorch names them; 'seeded' for a seeded init; default: the "
                   "shipped demo head when the backbone, labels and head shape are the defaults, seeded otherwise")
    g.add_argument("--train-demo", action="store_true",
                   help="after building, train the head on the synthetic demo task instead of using the shipped one "
                   "(needs the train extra; same as running `edge-export train --clips demo`)")
    g.add_argument("--window", type=valid.WINDOW, default=DEFAULT_WINDOW, metavar="W", help="default window length for per-window decisions")
    g.add_argument("--stride", type=valid.STRIDE, default=DEFAULT_STRIDE, metavar="S", help="default frames between window decisions")
    t = parser.add_argument_group("TensorRT")
    t.add_argument("--trt", action="store_true", help="also build TensorRT plans (needs the tensorrt extra and a GPU)")
    t.add_argument("--trt-precision", type=valid.choices_list(valid.TRT_PRECISIONS), default="int8,fp16", metavar="LIST",
                   help="backbone plan precisions")
    t.add_argument("--max-batch", type=valid.MAX_BATCH, default=8, metavar="N", help="largest batch (streams) the engines are built for")
    t.add_argument("--workspace-mb", type=valid.WORKSPACE_MB, default=1024, help="TensorRT builder workspace limit")
    t.add_argument("--dla-core", type=valid.DLA_CORE, help="put the backbone plans on this DLA core (Orin NX, AGX Orin), with GPU "
                   "fallback; the FP32 GRU plans stay on the GPU")
    return parser


def inspect_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="edge-export inspect", description="Print what a manifest holds and check its files.",
                            formatter_class=argparse.HelpFormatter)
    parser.add_argument("--out", default="engines", type=Path, metavar="DIR", help="folder holding manifest.json")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    return parser


def build_command(args: argparse.Namespace) -> int:
    """`edge-export [options]`: build the engines, then (with --train-demo) train the head on the demo task."""
    if args.feature_output and not args.backbone_onnx:
        raise UsageError("--feature-output needs --backbone-onnx")
    seeded_backbone = args.weights is not None and str(args.weights) == "seeded"
    seeded_head = args.gru_weights is not None and str(args.gru_weights) == "seeded"
    args.weights = None if seeded_backbone else args.weights
    args.gru_weights = None if seeded_head else args.gru_weights
    if args.train_demo:
        try:
            require_torch()
        except TorchUnavailable as exc:
            raise TorchUnavailable(f"--train-demo: {exc}") from exc
    norm = read_input_json(args.input_json) if args.input_json is not None else {}
    for key in ("mean", "std", "scale", "color_order"):
        if getattr(args, key) is not None:
            norm[key] = tuple(getattr(args, key)) if key in ("mean", "std") else getattr(args, key)
    options = BuildOptions(
        seeded_backbone=seeded_backbone, seeded_head=seeded_head,
        out=args.out, variant=args.variant, weights=args.weights, backbone_onnx=args.backbone_onnx,
        feature_output=args.feature_output, input_size=tuple(args.input_size) if args.input_size else None, **norm,
        calib=args.calib,
        calib_frames=args.calib_frames, holdout_frames=args.holdout_frames, calibration=args.calibration,
        int8=not args.no_int8, min_cosine=args.min_cosine, allow_degraded=args.allow_degraded,
        hidden=args.hidden, cell=args.cell, layers=args.layers, labels=args.labels,
        gru_weights=args.gru_weights, window=args.window, stride=args.stride, seed=args.seed,
        max_batch=args.max_batch, trt=args.trt, trt_precision=tuple(args.trt_precision),
        workspace_mb=args.workspace_mb, dla_core=args.dla_core,
    )
    for path, flag in ((args.weights, "--weights"), (args.gru_weights, "--gru-weights"), (args.backbone_onnx, "--backbone-onnx")):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{flag} {path}: no such file")
    try:
        manifest = build(options)
    except QuantizationError as exc:
        raise QuantizationError(f"quantization failed: {exc}") from exc
    except EdgeRunError:
        raise
    except ValueError as exc:  # numpy/onnx refusing the user's input (a shape, a size): bad input
        raise UsageError(str(exc)) from exc
    if args.train_demo:
        train_argv = ["--clips", "demo", "--engines", str(args.out)]
        code = train_command(train_parser().parse_args(train_argv), train_argv)
        if code != EXIT_OK:
            return code
    print(f"edge-export: engines ready in {manifest.folder}; run: edge-run --engines {manifest.folder} --source demo --max-frames 300",
          file=sys.stderr)
    return EXIT_OK


def read_input_json(path: Path) -> dict:
    """--input-json: the network's normalisation from a sidecar; UsageError naming what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"--input-json {path}: not a readable JSON file ({exc})") from exc
    allowed = ("mean", "std", "scale", "color_order")
    if not isinstance(data, dict) or set(data) - set(allowed):
        extra = sorted(set(data) - set(allowed)) if isinstance(data, dict) else data
        raise UsageError(f"--input-json {path}: expected an object with keys among {', '.join(allowed)}; got {extra!r}")
    norm = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    valid.check_normalisation(f"--input-json {path}", norm.get("mean"), norm.get("std"), norm.get("scale"),
                              norm.get("color_order"))
    return norm


def inspect_command(args: argparse.Namespace) -> int:
    """`edge-export inspect`: what a manifest holds (its file hashes checked on load)."""
    manifest = load_manifest(args.out)
    if args.json:
        print(json.dumps(manifest.to_json(), indent=2))
        return EXIT_OK
    spec = manifest.input
    print(f"manifest      {manifest.folder / 'manifest.json'} (schema {manifest.schema_version}, all file hashes match)")
    print(f"model         {manifest.model_id()} (the \"model\" of every result edge-run gives with these engines)")
    print(f"backbone      {manifest.backbone_arch}: {spec.height}x{spec.width} {spec.color_order}, "
          f"mean {list(spec.mean)}, std {list(spec.std)}, scale {spec.scale:.6g} -> F={manifest.feature_size}")
    layers = f"{manifest.layers}-layer " if manifest.layers > 1 else ""
    states = ", ".join(f"{k} -> {v}" for k, v in manifest.states.items())
    print(f"temporal      {layers}{manifest.cell.upper()} H={manifest.hidden_size} (states {states}), "
          f"window {manifest.window}, stride {manifest.stride}")
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
