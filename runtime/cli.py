"""`edge-run`: run the engines on a camera, a file, a stream or the built-in demo.

Exit codes (each error class carries its own: runtime/errors.py): 0 done; 1 failed while
running, or output lost; 2 camera or device unavailable, or bad arguments; 3 engines
missing, corrupt or mismatched; 4 source unreadable.

As a service (see deploy/): `--state-dir` checkpoints the carried state, `--metrics-port`
serves Prometheus metrics and /healthz, `--mqtt` publishes results, and under systemd
the process reports READY/WATCHDOG/STATUS/STOPPING itself. SIGTERM or SIGINT finishes
the frame in hand, flushes every sink, writes the checkpoint and exits 0 (1 if some
output was lost) within `--stop-timeout` seconds (a second signal exits at once).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from runtime import validation as valid
from runtime.backends import BACKENDS, open_engines
from runtime.errors import EXIT_FAILED, EXIT_OK, EdgeRunError, UsageError
from runtime.help_format import ArgumentParser
from runtime.mailbox import DropPolicy
from runtime.manifest import BACKBONE, load_manifest
from runtime.native_log import NativeStderr
from runtime.pipeline import Observer, Pipeline, PipelineConfig
from runtime.recording import Recorder, replay, state_sizes
from runtime.result import EmitMode
from runtime.service import Service, ServiceOptions
from runtime.service.clips import EventClips
from runtime.service.metrics import engine_info
from runtime.service.notify import Notifier
from runtime.service.preview import DEFAULT_FPS, Preview
from runtime.service.streams import SourcesFile, read_sources_file
from runtime.service.swap import EngineReloader
from runtime.sinks import JsonLinesSink
from runtime.sinks.mqtt import DEFAULT_QUEUE, MqttConfig, MqttSink
from runtime.sources import camera_source, open_source

log = logging.getLogger("edge_run")
DEFAULT_PREVIEW_PORT = 9108  # the port deploy/ documents for /metrics


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="edge-run",
        description="Streaming temporal inference: camera/file/stream frames -> CNN features -> GRU -> JSON lines.",
        epilog="Examples:  edge-run --source demo --max-frames 300   |   edge-run --camera 0   |   "
        "edge-run --source clip.mp4 --emit both --out results.jsonl   |   edge-run --source demo --preview --record rec/   |   "
        "edge-run replay rec/ (see edge-run replay --help)",
    )
    src = parser.add_argument_group("input")
    src.add_argument("--camera", type=valid.CAMERA, action="append", default=[], metavar="N", help="OpenCV camera index (repeatable)")
    src.add_argument(
        "--source", action="append", default=[], metavar="URI",
        help="video file, image folder, rtsp:// or http:// URL, GStreamer pipeline, csi://N, or 'demo' (repeatable); "
        "default: demo when no --camera is given",
    )
    src.add_argument("--sources-file", metavar="FILE",
                     help="a file of source URIs, one per line (blank lines and # comments skipped); each is a stream "
                     "after the --camera and --source ones. Edits to it (and SIGHUP) add and remove streams while the run goes on")
    src.add_argument("--width", type=valid.FRAME_SIDE, help="capture width for cameras (default: the camera's own)")
    src.add_argument("--height", type=valid.FRAME_SIDE, help="capture height for cameras (default: the camera's own)")
    src.add_argument("--fps", type=valid.FPS, help="capture rate for cameras (default: the camera's own)")
    src.add_argument("--realtime", action="store_true", help="pace file and demo sources at their native fps (they then drop like a camera)")
    src.add_argument("--max-frames", type=valid.MAX_FRAMES, metavar="N", help="stop each stream after N frames (default: no limit)")

    eng = parser.add_argument_group("engines")
    eng.add_argument("--engines", default="engines", metavar="DIR", help="folder holding manifest.json (edge-export's --out)")
    eng.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: native TensorRT plans (built at start when needed) where tensorrt, "
                     "pycuda and a GPU are present, else the TensorRT EP, the CUDA EP, the CPU")
    eng.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="backbone variant (default: the fastest for the backend)")
    eng.add_argument("--watch-engines", action="store_true",
                     help="switch to the engines folder's new engines when its manifest changes (SIGHUP always does), "
                     "keeping the carried state when it stays meaningful")
    eng.add_argument("--threads", type=valid.THREADS, help="onnxruntime intra-op threads for the backbone (default: half the cores for one stream, "
                     "all for several; at most 4)")

    tmp = parser.add_argument_group("temporal")
    tmp.add_argument("--emit", choices=[m.value for m in EmitMode], default="step", help="per-step results, per-window results, or both")
    tmp.add_argument("--window", type=valid.WINDOW, help="window length W in frames (default: the manifest's)")
    tmp.add_argument("--stride", type=valid.STRIDE, help="frames between window decisions S (default: the manifest's)")
    tmp.add_argument("--reset-gap-ms", type=valid.RESET_GAP_MS, default=1000.0, help="reset a live stream's state after a capture gap this long")

    sch = parser.add_argument_group("scheduling")
    sch.add_argument("--budget-ms", type=valid.BUDGET_MS, help="per-frame latency budget (default: 1000 / source fps)")
    sch.add_argument("--drop-policy", choices=[p.value for p in DropPolicy],
                     help="newest: drop stale frames (live default); none: process every frame")
    sch.add_argument("--serial", action="store_true", help="read sources in the inference thread (no capture threads)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="FILE", help="append JSON lines to FILE instead of stdout")
    out.add_argument("--score", action="store_true", help="compare labels with the source's ground truth (demo) and print accuracy")
    out.add_argument("--quiet", action="store_true", help="no JSON lines on stdout (summary only)")
    out.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress bar on stderr for file sources")
    out.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    out.add_argument("--mqtt", metavar="URL", help="also publish results to an MQTT broker: mqtt://host[:port] or mqtts://host[:port] "
                     "(credentials and TLS files only from the environment: EDGE_RUN_MQTT_USERNAME, EDGE_RUN_MQTT_PASSWORD, "
                     "EDGE_RUN_MQTT_CA_FILE, EDGE_RUN_MQTT_CERT_FILE, EDGE_RUN_MQTT_KEY_FILE)")
    out.add_argument("--mqtt-prefix", metavar="TOPIC", help="topic prefix; results go to PREFIX/<stream> (default: edge-run/<hostname>)")
    out.add_argument("--mqtt-queue", type=valid.MQTT_QUEUE, default=DEFAULT_QUEUE, metavar="N",
                     help="messages held while the broker is away; beyond that results are dropped and counted")

    svc = parser.add_argument_group("service")
    svc.add_argument("--state-dir", metavar="DIR", default=_default_state_dir(),
                     help="checkpoint the carried state here and restore it at start (default: $STATE_DIRECTORY, set by systemd)")
    svc.add_argument("--checkpoint-every", type=valid.CHECKPOINT_EVERY, default=30.0, metavar="SEC", help="seconds between state checkpoints")
    svc.add_argument("--checkpoint-max-age", type=valid.CHECKPOINT_MAX_AGE, default=300.0, metavar="SEC",
                     help="restore a checkpoint only if younger than this")
    svc.add_argument("--no-restore", action="store_true", help="start fresh even if a usable checkpoint exists")
    svc.add_argument("--metrics-port", type=valid.PORT, metavar="PORT", help="serve Prometheus /metrics and /healthz on this port")
    svc.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDR", help="address the metrics endpoint listens on")
    svc.add_argument("--stall-after", type=valid.STALL_AFTER, default=5.0, metavar="SEC", help="/healthz answers 503 after this long without a frame")
    svc.add_argument("--stop-timeout", type=valid.STOP_TIMEOUT, default=15.0, metavar="SEC",
                     help="on SIGTERM/SIGINT, exit (code 1) if flushing and checkpointing take longer than this")
    svc.add_argument("--no-rebuild-plans", action="store_true",
                     help="refuse stale TensorRT plans instead of rebuilding them from their ONNX")

    see = parser.add_argument_group("see and record (README: Live preview, recording, replay and event clips)")
    see.add_argument("--preview", action="store_true",
                     help=f"serve a live page per stream (frames, label, class bars, history, counters) on the metrics server "
                     f"(--metrics-port, {DEFAULT_PREVIEW_PORT} when not given; --metrics-host decides who can see the frames)")
    see.add_argument("--preview-fps", type=valid.PREVIEW_FPS, default=DEFAULT_FPS, metavar="N",
                     help="frames a second encoded for a watched stream (none while nobody watches)")
    see.add_argument("--record", metavar="DIR", help="write each stream's CNN features, states and results to DIR in chunks "
                     "(read them back with numpy, or `edge-run replay DIR`)")
    see.add_argument("--record-max-mb", type=valid.STORAGE_MB, default=1000.0, metavar="MB",
                     help="the recording's size bound; the oldest chunks are removed first")
    see.add_argument("--record-chunk", type=valid.RECORD_CHUNK, default=300, metavar="N",
                     help="steps per chunk (a crash loses at most the chunk in progress)")
    see.add_argument("--clip-on", type=valid.label_set, metavar="LABEL[,LABEL]",
                     help="write a video clip around each event: an emitted label entering this set")
    see.add_argument("--clip-pre", type=valid.CLIP_SECONDS, default=5.0, metavar="SEC", help="seconds of video before the event")
    see.add_argument("--clip-post", type=valid.CLIP_SECONDS, default=5.0, metavar="SEC", help="seconds of video after the event")
    see.add_argument("--clip-dir", default="clips", metavar="DIR", help="where clips (.avi) and their sidecars (.json) go")
    see.add_argument("--clip-min-score", type=valid.CLIP_MIN_SCORE, default=0.5, metavar="P",
                     help="an event needs at least this probability")
    see.add_argument("--clip-holdoff", type=valid.CLIP_HOLDOFF, default=10.0, metavar="SEC",
                     help="seconds after an event before the same stream can trigger another")
    see.add_argument("--clip-max-mb", type=valid.STORAGE_MB, default=1000.0, metavar="MB",
                     help="the clip folder's size bound; the oldest clips are removed first")
    return parser


def _default_state_dir() -> Optional[str]:
    # systemd's StateDirectory= exports the path(s), colon-separated; the first is ours.
    value = os.environ.get("STATE_DIRECTORY")
    return value.split(":")[0] if value else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["replay"]:  # `edge-run replay DIR`: edge-run itself takes no positional argument
            logging.basicConfig(level="WARNING", format="edge-run: %(levelname)s %(message)s", stream=sys.stderr)
            return replay.main(argv[1:])
        # Every flag is checked here, before anything is opened or created (the --out file included).
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=args.log_level, format="edge-run: %(levelname)s %(message)s", stream=sys.stderr)
        with NativeStderr():  # FFmpeg's, GStreamer's and OpenCV's own lines through the logger too
            return _run(args)
    except EdgeRunError as exc:
        return _fail(exc.exit_code, str(exc))


def _fail(code: int, message: str) -> int:
    print(f"edge-run: error: {message}", file=sys.stderr)
    return code


def _open_sources(args) -> tuple[list, dict[int, str]]:
    """The run's first sources, and {stream number: URI} of those the sources file listed."""
    sources = [camera_source(index, args.width, args.height, args.fps, stream=i) for i, index in enumerate(args.camera)]
    listed = read_sources_file(args.sources_file) if args.sources_file else []
    fixed = args.source or ([] if args.camera or args.sources_file else ["demo"])
    from_file: dict[int, str] = {}
    for uri in fixed + listed:
        if len(sources) >= len(args.camera) + len(fixed):
            from_file[len(sources)] = uri
        sources.append(_open_uri(args, uri, len(sources)))
    return sources, from_file


def _open_uri(args, uri: str, stream: int):
    return open_source(uri, width=args.width, height=args.height, fps=args.fps, realtime=args.realtime, stream=stream)


def _config(args) -> PipelineConfig:
    return PipelineConfig(
        open_ended=bool(args.sources_file),
        emit=EmitMode(args.emit),
        stride=args.stride,
        budget=args.budget_ms / 1e3 if args.budget_ms is not None else None,
        reset_gap=args.reset_gap_ms / 1e3,
        max_frames=args.max_frames,
        drop_policy=DropPolicy(args.drop_policy) if args.drop_policy else None,
        threaded=not args.serial,
        score=args.score,
    )


def _run(args) -> int:
    stopper = _Stopper(args.stop_timeout)
    previous = stopper.install()
    notifier = Notifier.from_environment()
    try:
        return _serve(args, notifier, stopper)
    finally:
        notifier.close()
        _restore_signal_handlers(previous)


def _serve(args, notifier: Notifier, stopper: "_Stopper") -> int:
    mqtt_config = MqttConfig.from_url(args.mqtt, args.mqtt_prefix, args.mqtt_queue) if args.mqtt else None
    notifier.status("loading engines")
    manifest = load_manifest(args.engines)
    sinks = []
    # --out before any source: a missing folder or a read-only disk must not open a camera first.
    if args.out:
        sinks.append(JsonLinesSink.to_path(args.out, manifest.labels))
    elif not args.quiet:
        sinks.append(JsonLinesSink.to_stdout(manifest.labels))
    sources: list = []
    engines = None
    service = None
    mqtt = None
    progress = None
    try:
        sources, from_file = _open_sources(args)
        # With a sources file, streams may be added later: the engines are opened for as many as they take.
        streams = _engines_capacity(manifest) if args.sources_file else len(sources)

        def open_set(found, on_rebuild=notifier.status):
            return open_engines(found, args.backend, args.precision, num_streams=streams, window=args.window,
                                threads=args.threads, rebuild_plans=not args.no_rebuild_plans, on_rebuild=on_rebuild)

        engines = open_set(manifest, lambda status: notifier.extend_timeout(15 * 60, status))
        manifest = engines.manifest  # rewritten if stale TensorRT plans were rebuilt
        log.info("engines: backend %s, backbone %s", engines.backend, engines.precision)
        if mqtt_config is not None:
            mqtt = MqttSink.connect(mqtt_config, manifest.labels)
            sinks.append(mqtt)
        pipeline = Pipeline(engines, sources, _config(args))
        reloader = EngineReloader(pipeline, args.engines, open_set, watch=args.watch_engines)
        watchers = [reloader]
        if args.sources_file:
            watchers.append(SourcesFile(args.sources_file, pipeline, from_file, lambda uri, number: _open_uri(args, uri, number)))
        service = Service(
            pipeline, sinks, _service_options(args), notifier, identity=manifest.identity(),
            engine_info=engine_info(engines.backend, engines.precision, manifest.identity()),
            observers=_observers(args, pipeline, engines, sources), watchers=watchers,
        )
        reloader.on_swap = service.engines_swapped
        stopper.target = service
        stopper.reload = [watcher.request for watcher in watchers]
        progress = _progress_bar(args, sources)
        if progress is not None:
            service.on_result = lambda _result: progress.update(pipeline.stats.total("frames") - progress.n)
        service.run()
    finally:
        if progress is not None:
            progress.close()
        for source in sources:  # a failure before the pipeline owned them
            try:
                source.close()
            except Exception:  # noqa: BLE001
                pass
        if service is None:  # failed before the service owned the sinks
            for sink in sinks:
                try:
                    sink.close()
                except Exception:  # noqa: BLE001
                    pass
        if service is not None:
            engines = service.pipeline.engines  # the set in use at the end (the others were closed at their swap)
        if engines is not None:
            engines.close()
    for line in pipeline.stats.summary_lines():
        print(f"edge-run: {line}", file=sys.stderr)
    lost = service.output_lost()
    if lost is not None:  # processed but never delivered: not a successful run
        return _fail(lost.exit_code, str(lost))
    return EXIT_OK


def _engines_capacity(manifest) -> int:
    """The most streams the manifest's backbone was built for (edge-export --max-batch)."""
    return max((entry.max_batch for entry in manifest.engines if entry.role == BACKBONE), default=1)


def _observers(args, pipeline: Pipeline, engines, sources) -> list[Observer]:
    """The preview, the recorder and event clips the flags ask for."""
    manifest = engines.manifest
    names = [source.name for source in sources]
    mode = "window" if args.emit == "window" else "step"
    observers: list[Observer] = []
    if args.preview:
        observers.append(Preview(manifest.labels, pipeline.stats, names, mode, fps=args.preview_fps))
    if args.record:
        if args.emit == "window":
            raise UsageError("--record records per-step features and states: use --emit step or both")
        observers.append(Recorder(args.record, manifest.labels, manifest.feature_size, state_sizes(engines.gru_step), len(sources),
                                  max_bytes=int(args.record_max_mb * 1e6), chunk_frames=args.record_chunk))
    if args.clip_on:
        observers.append(EventClips(args.clip_dir, manifest.labels, args.clip_on, names, [s.fps for s in sources],
                                    pre=args.clip_pre, post=args.clip_post, min_score=args.clip_min_score,
                                    holdoff=args.clip_holdoff, max_bytes=int(args.clip_max_mb * 1e6), mode=mode))
    return observers



def _service_options(args) -> ServiceOptions:
    return ServiceOptions(
        state_dir=Path(args.state_dir) if args.state_dir else None,
        checkpoint_every=args.checkpoint_every,
        checkpoint_max_age=args.checkpoint_max_age,
        restore=not args.no_restore,
        metrics_host=args.metrics_host,
        metrics_port=DEFAULT_PREVIEW_PORT if args.metrics_port is None and args.preview else args.metrics_port,
        stall_after=args.stall_after,
        flush_timeout=max(1.0, args.stop_timeout / 2),
    )


def _progress_bar(args, sources):
    wanted = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    if not wanted or any(s.live for s in sources):
        return None
    totals = [getattr(s, "frame_count", None) for s in sources]
    total = sum(totals) if all(totals) else None
    if args.max_frames is not None and total:
        total = min(total, args.max_frames * len(sources))
    elif args.max_frames is not None:
        total = args.max_frames * len(sources)
    return tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True)


class _Stopper:
    """SIGTERM/SIGINT: ask the service to finish the frame in hand, and bound how long that may take.

    Installed before the engines load, so a signal during a long start (a TensorRT
    rebuild) still ends the run cleanly once the service exists. If flushing and
    checkpointing overrun `timeout`, or a second signal arrives, the process exits with
    code 1 at once rather than hang until systemd's SIGKILL.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.requested = threading.Event()
        self._target = None
        self.reload: list = []  # what SIGHUP asks: reload the engines folder and the sources file

    @property
    def target(self):
        return self._target

    @target.setter
    def target(self, service) -> None:
        self._target = service
        if self.requested.is_set():
            service.stop()

    def install(self):
        previous = {}
        handlers = {signal.SIGINT: self._handle, signal.SIGTERM: self._handle, signal.SIGHUP: self._reload}
        for signum, handler in handlers.items():
            try:
                previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread (embedded use): the caller owns signals
                pass
        return previous

    def _reload(self, _signum, _frame) -> None:
        for request in self.reload:  # each only sets an event: its own thread does the work
            request()

    def _handle(self, signum, _frame) -> None:
        if self.requested.is_set():
            log.error("second signal %d: exiting now", signum)
            os._exit(EXIT_FAILED)
        self.requested.set()
        log.warning("signal %d: finishing the frame in hand, flushing sinks, writing the checkpoint", signum)
        timer = threading.Timer(self.timeout, self._overrun)
        timer.daemon = True
        timer.start()
        if self._target is not None:
            self._target.stop()
        else:  # still starting: nothing to flush yet
            raise SystemExit(EXIT_OK)

    def _overrun(self) -> None:
        log.error("shutdown took longer than %.0f s (a sink or engine is stuck): exiting now", self.timeout)
        logging.shutdown()
        os._exit(EXIT_FAILED)


def _restore_signal_handlers(previous) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
