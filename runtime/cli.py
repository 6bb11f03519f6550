"""`edge-run`: run the engines on a camera, a file, a stream or the built-in demo.

Exit codes: 0 done; 1 failed while running; 2 camera or device unavailable (or bad
arguments); 3 engines missing, corrupt or mismatched; 4 source unreadable.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Optional, Sequence

from .engine import EngineError
from .engine_set import BACKENDS, open_engines
from .mailbox import DropPolicy
from .manifest import ManifestError, load_manifest
from .pipeline import Pipeline, PipelineConfig, PipelineError
from .result import EmitMode
from .sinks import FanOut, JsonLinesSink
from .sources import CameraUnavailable, SourceError, camera_source, open_source

log = logging.getLogger("edge_run")

EXIT_OK, EXIT_FAILED, EXIT_DEVICE, EXIT_ENGINES, EXIT_SOURCE = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-run",
        description="Streaming temporal inference: camera/file/stream frames -> CNN features -> GRU -> JSON lines.",
        epilog="Examples:  edge-run --source demo --max-frames 300   |   edge-run --camera 0   |   "
        "edge-run --source clip.mp4 --emit both --out results.jsonl",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = parser.add_argument_group("input")
    src.add_argument("--camera", type=int, action="append", default=[], metavar="N", help="OpenCV camera index (repeatable)")
    src.add_argument(
        "--source", action="append", default=[], metavar="URI",
        help="video file, image folder, rtsp:// or http:// URL, GStreamer pipeline, csi://N, or 'demo' (repeatable); "
        "default: demo when no --camera is given",
    )
    src.add_argument("--width", type=int, help="capture width for cameras")
    src.add_argument("--height", type=int, help="capture height for cameras")
    src.add_argument("--fps", type=float, help="capture rate for cameras")
    src.add_argument("--realtime", action="store_true", help="pace file and demo sources at their native fps (they then drop like a camera)")
    src.add_argument("--max-frames", type=int, metavar="N", help="stop each stream after N frames")

    eng = parser.add_argument_group("engines")
    eng.add_argument("--engines", default="engines", metavar="DIR", help="folder holding manifest.json (edge-export's --out)")
    eng.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: TensorRT EP, then CUDA EP, then CPU; tensorrt: native TensorRT plans")
    eng.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="backbone variant (default: the fastest for the backend)")
    eng.add_argument("--threads", type=int, help="onnxruntime intra-op threads for the backbone (default: cores, at most 4)")

    tmp = parser.add_argument_group("temporal")
    tmp.add_argument("--emit", choices=[m.value for m in EmitMode], default="step", help="per-step results, per-window results, or both")
    tmp.add_argument("--window", type=int, help="window length W in frames (default: the manifest's)")
    tmp.add_argument("--stride", type=int, help="frames between window decisions S (default: the manifest's)")
    tmp.add_argument("--reset-gap-ms", type=float, default=1000.0, help="reset a live stream's state after a capture gap this long")

    sch = parser.add_argument_group("scheduling")
    sch.add_argument("--budget-ms", type=float, help="per-frame latency budget (default: 1000 / source fps)")
    sch.add_argument("--drop-policy", choices=[p.value for p in DropPolicy], help="newest: drop stale frames (live default); none: process every frame")
    sch.add_argument("--serial", action="store_true", help="read sources in the inference thread (no capture threads)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="FILE", help="append JSON lines to FILE instead of stdout")
    out.add_argument("--score", action="store_true", help="compare labels with the source's ground truth (demo) and print accuracy")
    out.add_argument("--quiet", action="store_true", help="no JSON lines on stdout (summary only)")
    out.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress bar on stderr for file sources")
    out.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="edge-run: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return _run(args)
    except CameraUnavailable as exc:
        return _fail(EXIT_DEVICE, str(exc))
    except (ManifestError, EngineError) as exc:
        return _fail(EXIT_ENGINES, str(exc))
    except SourceError as exc:
        return _fail(EXIT_SOURCE, str(exc))
    except PipelineError as exc:
        return _fail(EXIT_FAILED, str(exc))
    except ValueError as exc:
        return _fail(EXIT_DEVICE, str(exc))


def _fail(code: int, message: str) -> int:
    print(f"edge-run: error: {message}", file=sys.stderr)
    return code


def _open_sources(args) -> list:
    sources = [camera_source(index, args.width, args.height, args.fps, stream=i) for i, index in enumerate(args.camera)]
    uris = args.source or ([] if args.camera else ["demo"])
    for uri in uris:
        sources.append(open_source(uri, width=args.width, height=args.height, fps=args.fps,
                                   realtime=args.realtime, stream=len(sources)))
    return sources


def _config(args) -> PipelineConfig:
    return PipelineConfig(
        emit=EmitMode(args.emit),
        window=args.window,
        stride=args.stride,
        budget=args.budget_ms / 1e3 if args.budget_ms else None,
        reset_gap=args.reset_gap_ms / 1e3,
        max_frames=args.max_frames,
        drop_policy=DropPolicy(args.drop_policy) if args.drop_policy else None,
        threaded=not args.serial,
        score=args.score,
    )


def _run(args) -> int:
    manifest = load_manifest(args.engines)
    sources = _open_sources(args)
    engines = open_engines(manifest, args.backend, args.precision, num_streams=len(sources),
                           window=args.window, threads=args.threads)
    log.info("engines: backend %s, backbone %s", engines.backend, engines.precision)
    sinks = []
    if args.out:
        sinks.append(JsonLinesSink.to_path(args.out, manifest.labels))
    elif not args.quiet:
        sinks.append(JsonLinesSink.to_stdout(manifest.labels))
    fanout = FanOut(sinks)
    pipeline = Pipeline(manifest, engines, sources, _config(args))
    previous = _install_signal_handlers(pipeline)
    progress = None
    try:
        pipeline.start()
        progress = _progress_bar(args, sources)
        for result in pipeline:
            fanout(result)
            if progress is not None:
                progress.update(pipeline.stats.total("frames") - progress.n)
    finally:
        if progress is not None:
            progress.close()
        pipeline.close()
        fanout.close()
        engines.close()
        _restore_signal_handlers(previous)
    pipeline.stats.sink_dropped = fanout.dropped
    for line in pipeline.stats.summary_lines():
        print(f"edge-run: {line}", file=sys.stderr)
    return EXIT_OK


def _progress_bar(args, sources):
    wanted = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    if not wanted or any(s.live for s in sources):
        return None
    from tqdm import tqdm

    totals = [getattr(s, "frame_count", None) for s in sources]
    total = sum(totals) if all(totals) else None
    if args.max_frames and total:
        total = min(total, args.max_frames * len(sources))
    elif args.max_frames:
        total = args.max_frames * len(sources)
    return tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True)


def _install_signal_handlers(pipeline: Pipeline):
    def handler(signum, _frame):
        log.warning("signal %d: finishing the frame in hand and stopping", signum)
        pipeline.stop()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread (embedded use): the caller owns signals
            pass
    return previous


def _restore_signal_handlers(previous) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
