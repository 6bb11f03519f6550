"""The torch-side subcommands, `train`, `pretrain` and `evaluate`: their parsers and what they run.

Importing this module does not import torch (`torch_mobilenet.require_torch` does, when a
command needs it). Errors are raised for `export.cli.main` to report with edge-export's
exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from export.errors import EXIT_OK
from export.graphs.head import weights_from_engine
from export.graphs.weights import load_state_dict
from export.training.clips import find_clips
from export.training.evaluate import report
from export.training.feature_cache import FeatureExtractor
from export.training.pretrain import PretrainOptions, pretrain
from export.training.train import DEFAULT_MAX_FAILED, TrainOptions, run_training
from runtime import validation as valid
from runtime.errors import EdgeRunError, UsageError
from runtime.help_format import ArgumentParser
from runtime.manifest import BACKBONE, GRU_STEP, Manifest, load_manifest


def train_parser() -> argparse.ArgumentParser:
    d = TrainOptions()
    parser = ArgumentParser(
        prog="edge-export train",
        description="Train the recurrent head (GRU or LSTM, 1 or 2 layers) on labelled clips with the backbone frozen, "
        "then rewrite the head engines and the manifest (labels, window, training summary) in the engines folder, atomically. Needs PyTorch: "
        "pip install 'edge-run[train]' (CPU-only machines: pip install torch==2.13.0 first).",
    )
    parser.add_argument("--clips", default="demo", metavar="SOURCE",
                        help="a folder of class sub-folders (<label>/*.mp4|avi|mkv or <label>/<clip>/ image folders), "
                        "a CSV of path,label, or demo[:N] (N clips per class of the synthetic demo task)")
    parser.add_argument("--engines", default="engines", type=Path, metavar="DIR", help="engines built by edge-export")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write the result here instead of updating --engines")
    parser.add_argument("--precision", default="int8", help="backbone whose features train the head: the one you deploy")
    parser.add_argument("--window", type=valid.WINDOW, metavar="W", help="window length (default: the manifest's)")
    parser.add_argument("--hidden", type=valid.HIDDEN, metavar="H", help="hidden size of each layer (default: the manifest's)")
    parser.add_argument("--cell", choices=valid.CELLS, help="recurrent cell of the head (default: the manifest's)")
    parser.add_argument("--layers", type=valid.LAYERS, metavar="N", help="stacked layers of that cell, 1 or 2 (default: the manifest's)")
    parser.add_argument("--val-fraction", type=valid.VAL_FRACTION, default=d.val_fraction, help="clips per class held out for validation")
    parser.add_argument("--epochs", type=valid.EPOCHS, default=d.epochs, help="most epochs")
    parser.add_argument("--patience", type=valid.PATIENCE, default=d.patience,
                        help="early stop after this many epochs without a better validation accuracy")
    parser.add_argument("--iterations", type=valid.STEPS, default=d.iterations, help="optimisation steps per epoch")
    parser.add_argument("--batch", type=valid.BATCH, default=d.batch, help="windows per step")
    parser.add_argument("--lr", type=valid.LEARNING_RATE, default=d.lr, help="peak learning rate (AdamW, cosine decay)")
    parser.add_argument("--max-drop", type=valid.DROP_RATE, default=d.max_drop, help="largest random frame-drop rate in training samples")
    parser.add_argument("--views", type=valid.VIEWS, default=d.views, metavar="K",
                        help="augmented views per training clip: one random crop/scale, flip and colour jitter per view, "
                        "the same for every frame of it; each view's features extracted once and cached (K times the "
                        "extraction of the training clips); 0: none")
    parser.add_argument("--flip-map", metavar="A:B,...",
                        help="labels a horizontal flip swaps (e.g. move_left:move_right); labels not named keep theirs; "
                        "without a map flips are off; 'none' turns the demo's default map off "
                        "(default: move_left:move_right,rotate_cw:rotate_ccw for --clips demo)")
    parser.add_argument("--seed", type=valid.SEED, default=d.seed, help="seed for the split, sampling and initialisation")
    parser.add_argument("--threads", type=valid.THREADS, help="CPU threads for torch and onnxruntime (default: all cores)")
    parser.add_argument("--cache", type=Path, metavar="DIR", help="feature cache (default: ~/.cache/edge-run/features)")
    parser.add_argument("--max-failed", type=valid.MAX_FAILED, default=DEFAULT_MAX_FAILED,
                        help="abort when more than this fraction of clips is unreadable")
    parser.add_argument("--no-fp32-compare", action="store_true",
                        help="skip the FP32 features of the validation clips: no INT8 cosine on them, no FP32 task accuracy")
    parser.add_argument("--min-cosine", type=valid.COSINE,
                        help="fail (exit 1, nothing written) when the INT8 backbone's mean cosine to FP32 on the validation "
                        "clips is below this (default: warn under the build's gate)")
    parser.add_argument("--weights-out", type=Path, metavar="FILE", help="also save the trained weights here (.safetensors)")
    parser.add_argument("--demo-seed", type=valid.SEED, default=d.demo_seed, help="with --clips demo: seed of the demo clips")
    parser.add_argument("--demo-frames", type=valid.DEMO_FRAMES, default=d.demo_frames, help="with --clips demo: frames per clip")
    parser.add_argument("--demo-size", type=valid.DEMO_SIDE, nargs=2, default=d.demo_size, metavar=("W", "H"), help="with --clips demo: frame size")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def train_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """`edge-export train`: train the head on labelled clips and rewrite the head engines and manifest."""
    options = TrainOptions(
        clips=args.clips, engines=args.engines, out=args.out, precision=args.precision, window=args.window,
        hidden=args.hidden, cell=args.cell, layers=args.layers, val_fraction=args.val_fraction, epochs=args.epochs, patience=args.patience,
        iterations=args.iterations, batch=args.batch, lr=args.lr, max_drop=args.max_drop, seed=args.seed,
        threads=args.threads, cache_dir=args.cache, max_failed=args.max_failed, compare_fp32=not args.no_fp32_compare,
        min_cosine=args.min_cosine, views=args.views, flip_map=args.flip_map,
        weights_out=args.weights_out, progress=not args.no_progress, demo_seed=args.demo_seed,
        demo_frames=args.demo_frames, demo_size=tuple(args.demo_size),
        command="edge-export train " + " ".join(argv),
    )
    try:
        training = run_training(options)
    except EdgeRunError:
        raise
    except ValueError as exc:  # numpy/onnx refusing the user's input: bad input
        raise UsageError(str(exc)) from exc
    out = args.out or args.engines
    print(f"edge-export: head trained on {sum(training['clips_per_class'].values())} clips "
          f"({', '.join(f'{k} {v}' for k, v in training['clips_per_class'].items())}); engines ready in {out}; "
          f"run: edge-run --engines {out} --source demo --score", file=sys.stderr)
    return EXIT_OK


def pretrain_parser() -> argparse.ArgumentParser:
    d = PretrainOptions()
    parser = ArgumentParser(
        prog="edge-export pretrain",
        description="Pretrain MobileNet-V3-Small (PyTorch, CPU) on synthetic images of the demo world and write a "
        "torchvision-format state dict plus a JSON record of how it was made. This is how the shipped default "
        "backbone was made. Needs the train extra.",
    )
    parser.add_argument("--out", type=Path, default=d.out, metavar="FILE", help="weights to write (.safetensors)")
    parser.add_argument("--steps", type=valid.STEPS, default=d.steps, help="optimisation steps")
    parser.add_argument("--batch", type=valid.BATCH, default=d.batch, help="images per step")
    parser.add_argument("--lr", type=valid.LEARNING_RATE, default=d.lr, help="peak learning rate (AdamW, warm-up then cosine)")
    parser.add_argument("--seed", type=valid.SEED, default=d.seed, help="seed for images and initialisation")
    parser.add_argument("--input-size", type=valid.INPUT_SIDE, nargs=2, default=d.input_size, metavar=("H", "W"), help="network input size")
    parser.add_argument("--threads", type=valid.THREADS, help="torch CPU threads (default: all cores)")
    return parser


def pretrain_command(args: argparse.Namespace) -> int:
    """`edge-export pretrain`: pretrain the default backbone on synthetic images."""
    options = PretrainOptions(out=args.out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                              input_size=tuple(args.input_size), threads=args.threads)
    pretrain(options)
    print(f"edge-export: pretrained weights in {args.out}; use them with: edge-export --weights {args.out}", file=sys.stderr)
    return EXIT_OK


def evaluate_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="edge-export evaluate",
        description="Task accuracy of built engines on labelled clips (per window, per step, single frame, with "
        "random frame drops), for every ONNX backbone precision. No torch needed.",
    )
    parser.add_argument("--engines", default="engines", type=Path, metavar="DIR")
    parser.add_argument("--clips", default="demo:20", metavar="SOURCE", help="as for train: folder, CSV or demo[:N]")
    parser.add_argument("--demo-seed", type=valid.SEED, default=1, help="with demo clips: a seed the head was not trained on")
    parser.add_argument("--demo-frames", type=valid.DEMO_FRAMES, default=48)
    parser.add_argument("--demo-size", type=valid.DEMO_SIDE, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--drop", type=valid.DROP_RATE, default=0.3, help="frame-drop rate for the drop figures")
    parser.add_argument("--cache", type=Path, metavar="DIR", help="feature cache (default: ~/.cache/edge-run/features)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def evaluate_command(args: argparse.Namespace) -> int:
    """`edge-export evaluate`: task accuracy of the engines on labelled clips, per ONNX backbone precision."""
    manifest = load_manifest(args.engines)
    clip_set = find_clips(args.clips, demo_seed=args.demo_seed, demo_frames=args.demo_frames,
                          demo_size=tuple(args.demo_size))
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


def _weights_from_onnx(manifest: Manifest) -> dict[str, np.ndarray]:
    """The head weights read back from the step ONNX's initializers."""
    return weights_from_engine(onnx.load(str(manifest.path_of(manifest.find(GRU_STEP, "onnx")))))
