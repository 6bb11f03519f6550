"""`edge-bench`: the command line, and `run`, the whole benchmark from options to written outputs."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from runtime.backends import BACKENDS
from runtime.backends.tensorrt import device_key
from runtime.bench.jetson import acceptance
from runtime.bench.jetson import write as write_acceptance
from runtime.bench.options import LIVE_FPS, VIDEO_SIZE, BenchOptions
from runtime.bench.report import write_outputs
from runtime.bench.sections import Bench
from runtime.errors import EXIT_OK, EdgeRunError, UsageError
from runtime.help_format import HelpFormatter
from runtime.sources.demo import write_demo_video


def build_parser() -> argparse.ArgumentParser:
    defaults = BenchOptions()
    parser = argparse.ArgumentParser(
        prog="edge-bench",
        description="Benchmark the engines and the runtime on this machine: each stage alone, the pipeline (serial, "
        "pipelined), a naive loop, a live 30 fps source, 1-8 streams, memory. Writes bench.md, bench.json, bench.png.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--engines", type=Path, default=defaults.engines, metavar="DIR", help="folder holding manifest.json")
    parser.add_argument("--out", type=Path, default=defaults.out, metavar="DIR", help="results folder")
    parser.add_argument("--backend", choices=BACKENDS, default=defaults.backend, help="as edge-run's --backend")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads for the backbone; none: edge-run's default")
    parser.add_argument("--video", type=Path, help="video to run on; none: a generated 640x480 demo video")
    parser.add_argument("--frames", type=int, default=defaults.frames, help="frames per pipeline and naive run")
    parser.add_argument("--stream-frames", type=int, default=defaults.stream_frames, help="frames per stream when scaling")
    parser.add_argument("--streams", default=",".join(map(str, defaults.streams)), help="stream counts to run")
    parser.add_argument("--live-seconds", type=float, default=defaults.live_seconds, help="length of the 30 fps live run")
    parser.add_argument("--memory-frames", type=int, default=defaults.memory_frames, help="frames after warm-up for the RSS check")
    parser.add_argument("--repeats", type=int, default=defaults.repeats,
                        help="runs of each compared variant, interleaved against drifting load")
    parser.add_argument("--plot", choices=("auto", "opencv"), default="auto", help="auto: matplotlib when installed")
    parser.add_argument("--quick", action="store_true",
                        help="a reduced run of a few seconds: every section, small counts (the counts above are ignored)")
    parser.add_argument("--jetson", action="store_true",
                        help="the on-box acceptance run instead: TensorRT plans (built where missing or stale), edge-export verify "
                        "--backend tensorrt, the TensorRT stage floors, camera to result; one table beside the published "
                        "figures, written to jetson.md and jetson.json")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda line: print(f"edge-bench: {line}", file=sys.stderr, flush=True)  # noqa: E731 - one line, used twice
    try:
        options = options_from(args)
        paths = run_jetson(options, log) if args.jetson else run(options, log=log)
    except EdgeRunError as exc:
        print(f"edge-bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    for path in paths.values():
        print(f"edge-bench: wrote {path}", file=sys.stderr)
    print(paths["markdown"].read_text())
    return EXIT_OK


def options_from(args: argparse.Namespace) -> BenchOptions:
    """The run the parsed arguments ask for; `UsageError` for a malformed --streams."""
    try:
        streams = tuple(int(v) for v in str(args.streams).split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"--streams takes counts like 1,2,4,8, not {args.streams!r}") from exc
    chosen = dict(engines=args.engines, out=args.out, backend=args.backend, threads=args.threads, video=args.video,
                  plot=args.plot)
    if args.quick:
        return BenchOptions.reduced(**chosen)
    return BenchOptions(frames=args.frames, stream_frames=args.stream_frames, streams=streams,
                        live_seconds=args.live_seconds, memory_frames=args.memory_frames, repeats=args.repeats,
                        **chosen)


def run_jetson(options: BenchOptions, log: Callable[[str], None] = lambda line: None) -> dict[str, Path]:
    """The on-box acceptance run (`runtime.bench.jetson`); returns the paths of jetson.md and jetson.json."""
    device_key()  # without TensorRT: the one-line error naming what to install, before any work
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as scratch:
        video = options.video or _demo_video(Path(scratch), options.frames, log)
        results = acceptance(options, Path(video), log)
    return write_acceptance(results, options.out)


def _demo_video(folder: Path, length: int, log: Callable[[str], None]) -> Path:
    video = folder / f"demo-{VIDEO_SIZE[0]}x{VIDEO_SIZE[1]}.avi"
    log(f"writing a {length}-frame {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} demo video")
    write_demo_video(video, length, seed=1, width=VIDEO_SIZE[0], height=VIDEO_SIZE[1], fps=LIVE_FPS)
    return video


def run(options: BenchOptions, log: Callable[[str], None] = lambda line: None) -> dict[str, Path]:
    """The whole benchmark; returns the paths of the Markdown, JSON and PNG outputs."""
    bench = Bench(options, log)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as scratch:
        length = max(options.frames, options.stream_frames, int(options.live_seconds * LIVE_FPS) + 2)
        video = options.video or _demo_video(Path(scratch), length, log)
        results = bench.run(Path(video))
    return write_outputs(results, bench.samples, options.out, options.plot)
