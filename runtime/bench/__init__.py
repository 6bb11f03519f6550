"""`edge-bench`: the figures that judge an edge box, in one run, on one machine, same models.

    edge-export --out engines            # MobileNet-V3-Small FP32 + INT8, GRU H=256, window engine
    edge-bench --engines engines         # writes results/bench.md, bench.json, bench.png
    edge-bench --engines engines --backend tensorrt     # the same on a Jetson

Sections (each a key of the JSON file and a table of the Markdown file):

1. `floor`: every stage alone, median and p99: decode (a 640x480 MJPG frame), preprocess,
   the backbone per precision, the GRU step (engine and the same step in numpy), the
   per-window decision (sequence engine against W steps).
2. `pipeline`: the runtime on a generated 640x480 video, as fast as it goes, serial
   (`threaded=False`) and pipelined (capture threads), per backbone precision.
3. `naive`: the loop a user writes first (OpenCV read, resize/normalise, `session.run` for
   the CNN, `session.run` for the GRU with a numpy state), same models, same video.
4. `live`: the video paced at 30 fps like a camera: end-to-end p99 against the budget,
   drops and deadline misses, on the INT8 backbone where there is one.
5. `streams`: 1, 2, 4, 8 streams of that video, batched against one engine call per stream.
6. `memory`: resident set size after warm-up and after 10,000 more frames (the video looped).
7. `targets`: the ratios the design is held to, each met or not, from the figures above.

CPU time per frame (process time over frames) is reported next to frames/s: on a box whose
clock and power are fixed it is the frames-per-watt figure. The machine and how loaded it
was (load average, CPU used by other processes during the run) are part of the report:
absolute times are only comparable on the same machine, ratios within one run.

The runtime never imports the export stage, and neither does this: the numpy GRU reads its
weights from the step engine's ONNX file, and engines come from `edge-export`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from runtime.backends import BACKENDS, default_precision, open_engines, resolve_backend
from runtime.backends.engine import EngineError
from runtime.frame import Frame
from runtime.help_format import HelpFormatter
from runtime.mailbox import DropPolicy
from runtime.manifest import BACKBONE, GRU_STEP, Manifest, ManifestError, load_manifest, rebuild_hint
from runtime.pipeline import Pipeline, PipelineConfig
from runtime.preprocess import Preprocessor
from runtime.result import EmitMode
from runtime.sources import Source, SourceError, VideoFileSource, open_source
from runtime.temporal import WindowRunner

VIDEO_SIZE = (640, 480)
LIVE_FPS = 30.0
NO_DEADLINE = 1.0  # seconds: the budget of as-fast-as-possible runs, where a deadline means nothing
PRECISION_ORDER = ("fp32", "fp16", "int8")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENGINES = 0, 1, 2, 3


@dataclass
class BenchOptions:
    engines: Path = Path("engines")
    out: Path = Path("results")
    backend: str = "cpu"
    threads: Optional[int] = None
    frames: int = 600  # frames per pipeline / naive run (and the generated video's length)
    stream_frames: int = 300  # frames per stream in the stream-scaling runs
    streams: tuple[int, ...] = (1, 2, 4, 8)
    live_seconds: float = 10.0
    memory_frames: int = 10_000
    memory_warmup: int = 500
    iterations: int = 300  # timed calls per floor measurement (more for the microsecond ones)
    repeats: int = 2  # runs of each compared variant, interleaved (A B B A) against drifting load
    video: Optional[Path] = None  # default: a generated 640x480 demo video
    plot: str = "auto"  # auto: matplotlib when installed, else OpenCV drawing; or "opencv"
    quick: bool = False

    @classmethod
    def reduced(cls, **overrides: Any) -> "BenchOptions":
        """A run of a few seconds that exercises every section (the test-suite's mode)."""
        values = dict(frames=40, stream_frames=12, streams=(1, 2), live_seconds=1.0, memory_frames=200,
                      memory_warmup=50, iterations=20, repeats=1, quick=True)
        values.update(overrides)
        return cls(**values)


# Measurement helpers ---------------------------------------------------------------------------
def time_calls(fn: Callable[[], Any], iterations: int, warmup: int = 10) -> np.ndarray:
    """Seconds per call of `fn`, `iterations` samples after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = np.empty(iterations, np.float64)
    clock = time.perf_counter
    for i in range(iterations):
        t0 = clock()
        fn()
        samples[i] = clock() - t0
    return samples


def summary(samples: Sequence[float]) -> dict[str, float]:
    values = np.asarray(samples, np.float64)
    if len(values) == 0:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    return {
        "n": int(len(values)),
        "p50_ms": float(np.percentile(values, 50) * 1e3),
        "p99_ms": float(np.percentile(values, 99) * 1e3),
        "mean_ms": float(values.mean() * 1e3),
    }


def rss_bytes() -> Optional[int]:
    """Resident set size of this process now (Linux /proc; None where it cannot be read)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class LoadMeter:
    """How busy the machine was with other work while the benchmark ran (Linux /proc/stat)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> Optional[tuple[float, float, float]]:
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields) - idle) / ticks, time.perf_counter(), time.process_time()

    def stop(self) -> dict[str, Optional[float]]:
        end = self._sample()
        report: dict[str, Optional[float]] = {"load_average_end": _loadavg(), "other_processes_cpu_percent": None}
        if self.start is not None and end is not None:
            busy = end[0] - self.start[0]
            wall = end[1] - self.start[1]
            own = end[2] - self.start[2]
            cores = os.cpu_count() or 1
            report["other_processes_cpu_percent"] = max(0.0, 100.0 * (busy - own) / (wall * cores))
        return report


def _loadavg() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_description(backend: str) -> dict[str, Any]:
    import cv2
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name") or line.startswith("Model"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo") as info:
            memory_gib = round(int(info.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
        "backend": backend,
        "load_average_start": _loadavg(),
    }


class LoopedVideo(Source):
    """A video file played over and over as one endless stream, the frame index still counting:
    what a long-running camera looks like to the loop, without a 10,000-frame file on disk.
    Decodes into the loop's frame buffers like the runtime's own file source."""

    def __init__(self, path: Path, stream: int = 0) -> None:
        super().__init__(f"loop:{path}", live=False, fps=LIVE_FPS, stream=stream)
        self.path = Path(path)
        self._cap = None

    def _open(self) -> None:
        import cv2

        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise SourceError(f"cannot open video file {self.path}")

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        import cv2

        for _ in range(2):  # at the end, rewind once
            if self._cap.grab():
                timestamp = time.perf_counter()
                fits = out is not None and out.dtype == np.uint8 and out.flags.c_contiguous
                ok, image = self._cap.retrieve(out) if fits else self._cap.retrieve()
                if ok and image is not None:
                    return self._emit(image, timestamp)
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        raise SourceError(f"cannot read a frame from {self.path}")


# The naive baseline ------------------------------------------------------------------------------
def naive_loop(video: Path, cnn_path: Path, gru_path: Path, manifest: Manifest, providers: list[str],
               max_frames: int, threads: Optional[int] = None) -> tuple[int, np.ndarray]:
    """The loop a user writes first; returns (frames, latency per frame in seconds).

    Latency runs from the frame's grab (the instant the runtime stamps its frames with) to
    the GRU's logits. `grab()` + `retrieve()` is exactly what `VideoCapture.read()` does.
    Sessions have onnxruntime's default options unless `threads` sets the intra-op threads.
    """
    import cv2
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    cnn = ort.InferenceSession(str(cnn_path), options, providers=providers)
    gru = ort.InferenceSession(str(gru_path), options, providers=providers)
    cnn_input = cnn.get_inputs()[0].name
    spec = manifest.input
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    h = np.zeros((1, manifest.hidden_size), np.float32)
    capture = cv2.VideoCapture(str(video))
    latencies = []
    while len(latencies) < max_frames and capture.grab():
        captured = time.perf_counter()
        ok, image = capture.retrieve()
        if not ok:
            break
        x = cv2.resize(image, (spec.width, spec.height))
        if spec.color_order == "RGB":
            x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
        x = (x.astype(np.float32) * spec.scale - mean) / std
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        features = cnn.run(None, {cnn_input: x})[0]
        h, logits = gru.run(["h_next", "logits"], {"x": features, "h": h})
        label = manifest.labels[int(np.argmax(logits[0]))]  # noqa: F841 - what the user would use
        latencies.append(time.perf_counter() - captured)
    capture.release()
    return len(latencies), np.array(latencies)


def numpy_gru_step(gru_onnx: Path) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The GRU step written in numpy (weights transposed once, PyTorch GRUCell equations),
    with its weights read from the step engine's ONNX file so both compute the same step."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(gru_onnx))
    w = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    hidden = w["weight_hh"].shape[1]
    w_ih, w_hh = np.ascontiguousarray(w["weight_ih"].T), np.ascontiguousarray(w["weight_hh"].T)
    b_ih, b_hh = w["bias_ih"], w["bias_hh"]
    w_out, b_out = np.ascontiguousarray(w["head.weight"].T), w["head.bias"]

    def step(x: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gi = x @ w_ih
        gi += b_ih
        gh = h @ w_hh
        gh += b_hh
        rz = gi[:, : 2 * hidden] + gh[:, : 2 * hidden]
        rz = 0.5 * (1.0 + np.tanh(0.5 * rz))  # sigmoid without overflow
        n = np.tanh(gi[:, 2 * hidden :] + rz[:, :hidden] * gh[:, 2 * hidden :])
        h_next = n + rz[:, hidden:] * (h - n)
        return h_next, h_next @ w_out + b_out

    return step


# The benchmark ---------------------------------------------------------------------------------
class Bench:
    def __init__(self, options: BenchOptions, log: Callable[[str], None] = lambda line: None) -> None:
        self.options = options
        self.log = log
        self.manifest = load_manifest(options.engines)
        self.backend = resolve_backend(options.backend)
        self.fmt = "tensorrt" if self.backend == "tensorrt" else "onnx"
        available = self.manifest.precisions(BACKBONE, self.fmt)
        self.precisions = [p for p in PRECISION_ORDER if p in available]
        if not self.precisions:
            raise ManifestError(f"the manifest in {options.engines} lists no {self.fmt} backbone; "
                                f"{rebuild_hint(self.manifest.folder)}" + (" --trt" if self.fmt == "tensorrt" else ""))
        self.default_precision = default_precision(self.manifest, self.backend)
        self.live_precision = "int8" if "int8" in self.precisions else self.default_precision
        self.results: dict[str, Any] = {}
        self.samples: dict[str, np.ndarray] = {}  # latency samples (seconds) for the plot

    def engines(self, precision: Optional[str] = None, streams: int = 1, window_engine: str = "auto",
                threads: Optional[int] = None):
        """Open engines and run every batch size once, so no timed call pays a first-call cost."""
        engines = open_engines(self.manifest, self.backend, precision or self.default_precision, num_streams=streams,
                               threads=threads or self.options.threads, window_engine=window_engine)
        for batch in range(1, streams + 1):
            for _ in range(2):
                engines.backbone.run(batch)
                engines.gru_step.step(batch)
        engines.gru_window.run(1)
        return engines

    def run(self, video: Path) -> dict[str, Any]:
        meter = LoadMeter()
        self.results["machine"] = machine_description(self.backend)
        self.results["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.options).items()}
        self.results["models"] = {
            "backbone": self.manifest.backbone_arch,
            "input": f"{self.manifest.input.width}x{self.manifest.input.height}",
            "feature_size": self.manifest.feature_size,
            "hidden_size": self.manifest.hidden_size,
            "window": self.manifest.window,
            "precisions": self.precisions,
            "default_precision": self.default_precision,
            "int8_gate": self.manifest.quantization.get("gate"),
            "int8_cosine_mean": self.manifest.quantization.get("cosine_mean"),
        }
        for name, section in (("floor", self.floor), ("throughput", self.throughput), ("live", self.live),
                              ("streams", self.streams), ("memory", self.memory)):
            self.log(f"{name} ...")
            t0 = time.perf_counter()
            section(video)
            self.log(f"{name} done in {time.perf_counter() - t0:.1f} s")
        self.results["machine"].update(meter.stop())
        self.results["targets"] = targets(self.results)
        return self.results

    # 1. Every stage alone -------------------------------------------------------------------------
    def floor(self, video: Path) -> None:
        n = self.options.iterations
        floor: dict[str, Any] = {}
        source = open_source(str(video))
        frames = [frame.image for frame in (source.read() for _ in range(8)) if frame is not None]
        buffer = frames[-1].copy()

        def decode() -> None:
            nonlocal source
            if source.read(buffer) is None:  # the end of the file: start again
                source.close()
                source = open_source(str(video))
                source.read(buffer)

        floor["decode"] = summary(time_calls(decode, max(n, 8), warmup=2))
        source.close()
        preprocess = Preprocessor(self.manifest.input)
        row = np.zeros(preprocess.input_shape, np.float32)
        cycle = iter(range(1 << 62))
        floor["preprocess"] = summary(time_calls(lambda: preprocess(frames[next(cycle) % len(frames)], row), n))

        window = self.manifest.window
        rng = np.random.default_rng(0)
        for precision in self.precisions:
            engines = self.engines(precision)
            try:
                engines.backbone.input(engines.backbone.input_names[0])[0] = row
                floor[f"cnn_{precision}"] = summary(time_calls(lambda engines=engines: engines.backbone.run(1), max(20, n // 2)))
                if precision == self.default_precision:
                    features = np.array(engines.backbone.output(engines.backbone.output_names[0])[0])
                    step = engines.gru_step
                    step.input("x")[0] = features
                    floor["gru_step"] = summary(time_calls(lambda step=step: step.step(1), n * 8, warmup=50))
                    floor["window_sequence" if engines.window_is_sequence else "window_steps"] = self._window(
                        engines, window, rng, n)
            finally:
                engines.close()
        if "window_steps" not in floor:  # the other way of deciding a window, for the comparison
            engines = self.engines(window_engine="step")
            try:
                floor["window_steps"] = self._window(engines, window, rng, n)
            finally:
                engines.close()
        gru_onnx = self.manifest.path_of(self.manifest.find(GRU_STEP, "onnx"))
        step_numpy = numpy_gru_step(gru_onnx)
        x = rng.standard_normal((1, self.manifest.feature_size)).astype(np.float32)
        h = np.zeros((1, self.manifest.hidden_size), np.float32)
        floor["gru_step_numpy"] = summary(time_calls(lambda: step_numpy(x, h), n * 8, warmup=50))
        floor["window_engine_used"] = "sequence" if "window_sequence" in floor and (
            floor["window_sequence"]["p50_ms"] <= floor["window_steps"]["p50_ms"]) else "steps"
        self.results["floor"] = floor
        self.results["floor_interleaved"] = self._interleaved(video)

    def _interleaved(self, video: Path) -> dict[str, Any]:
        """The same stages timed one by one in the order the serial pipeline runs them, frame after
        frame, with no pipeline around them: each stage finds the caches as the others left them
        (alone, in a loop of its own, it keeps its weights and buffers cached)."""
        engines = self.engines()
        source = open_source(str(video))
        preprocess = Preprocessor(self.manifest.input)
        cnn_in = engines.backbone.input(engines.backbone.input_names[0])
        cnn_out = engines.backbone.output(engines.backbone.output_names[0])
        x = engines.gru_step.input("x")
        buffer: Optional[np.ndarray] = None
        names = ("decode", "preprocess", f"cnn_{self.default_precision}", "gru_step")
        samples = {name: [] for name in names}
        clock = time.perf_counter
        try:
            for _ in range(self.options.frames):
                t0 = clock()
                frame = source.read(buffer)
                t1 = clock()
                if frame is None:
                    break
                buffer = frame.image
                preprocess(frame.image, cnn_in[0])
                t2 = clock()
                engines.backbone.run(1)
                t3 = clock()
                x[0] = cnn_out[0]
                engines.gru_step.step(1)
                t4 = clock()
                for name, seconds in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    samples[name].append(seconds)
        finally:
            source.close()
            engines.close()
        return {name: summary(values) for name, values in samples.items()}

    @staticmethod
    def _window(engines, window: int, rng, n: int) -> dict[str, float]:
        runner = WindowRunner(engines.gru_window, window, engines.window_is_sequence)
        features = rng.standard_normal((window, runner.x.shape[-1])).astype(np.float32)
        return summary(time_calls(lambda: runner.run([features]), max(20, n // 2)))

    # 2-3. The runtime on the video, and the naive loop, interleaved ------------------------------
    def throughput(self, video: Path) -> None:
        from runtime.backends.onnxrt import PROVIDERS, available_providers
        have = set(available_providers())
        backend = self.backend if self.backend in PROVIDERS else "trt-ep"
        providers = [p for p in PROVIDERS[backend] if p in have] or ["CPUExecutionProvider"]
        gru_path = self.manifest.path_of(self.manifest.find(GRU_STEP, "onnx"))
        frames = self.options.frames
        variants: dict[str, Callable[[], Run]] = {}
        engines = {precision: self.engines(precision) for precision in self.precisions}

        def runtime_run(precision: str, threaded: bool) -> Callable[[], Run]:
            config = PipelineConfig(threaded=threaded, max_frames=frames, budget=NO_DEADLINE)
            return lambda: run_pipeline(self.manifest, engines[precision], [open_source(str(video))], config)

        def naive_run(path: Path, threads: Optional[int]) -> Callable[[], Run]:
            def go() -> Run:
                cpu0, t0 = time.process_time(), time.perf_counter()
                count, latencies = naive_loop(video, path, gru_path, self.manifest, providers, frames, threads)
                return Run(count, time.perf_counter() - t0, time.process_time() - cpu0, latencies)
            return go

        for precision in self.precisions:
            variants[f"serial_{precision}"] = runtime_run(precision, False)
            variants[f"pipelined_{precision}"] = runtime_run(precision, True)
            entry = self.manifest.find(BACKBONE, "onnx", precision)
            if entry is not None:
                # As a user writes it (onnxruntime's defaults: a thread per core, spinning) and, for the
                # default backbone, with one intra-op thread, the runtime's own choice on this machine.
                variants[f"naive_{precision}"] = naive_run(self.manifest.path_of(entry), None)
                if precision == self.default_precision:
                    variants[f"naive_{precision}_1thread"] = naive_run(self.manifest.path_of(entry), 1)
        try:
            runs = round_robin(variants, self.options.repeats)
        finally:
            for opened in engines.values():
                opened.close()
        self.results["pipeline"] = {}
        self.results["naive"] = {"providers": providers}
        for name, done in runs.items():
            self.samples[name.replace("_", " ")] = np.concatenate([run.latency for run in done])
            if name.startswith("naive_"):
                self.results["naive"][name[len("naive_"):]] = pool(done)
            else:
                self.results["pipeline"][name] = pool(done)

    # 4. A live 30 fps source ------------------------------------------------------------------------
    def live(self, video: Path) -> None:
        frames = max(2, int(round(self.options.live_seconds * LIVE_FPS)))
        engines = self.engines(self.live_precision)
        try:
            source = VideoFileSource(video, fps=LIVE_FPS, realtime=True).open()
            config = PipelineConfig(threaded=True, max_frames=frames, budget=1.0 / LIVE_FPS)
            raw = run_pipeline(self.manifest, engines, [source], config)
        finally:
            engines.close()
        self.samples[f"live 30 fps {self.live_precision}"] = raw.latency
        run = pool([raw])
        produced = raw.last_index + 1
        run.update(precision=self.live_precision, budget_ms=1e3 / LIVE_FPS, produced=produced,
                   drops_exact=run["frames"] + run["dropped"] == produced)
        self.results["live"] = run

    # 5. Stream scaling ------------------------------------------------------------------------------
    def streams(self, video: Path) -> None:
        out: dict[str, Any] = {}
        entry = self.manifest.find(BACKBONE, self.fmt, self.default_precision)
        for count in self.options.streams:
            if self.fmt == "tensorrt" and entry is not None and count > entry.max_batch:
                out[str(count)] = {"skipped": f"engines built for at most {entry.max_batch} streams"}
                continue
            opened = [self.engines(streams=count)]
            # The unbatched runs share the batched runs' engines (the runtime's defaults for this many
            # streams). For the 4-stream target also on one intra-op thread, the best setting for the
            # batch of 1 that unbatched runs feed it, where that is not the same engine.
            one_thread = (count == 4 and self.options.threads is None and self.backend != "tensorrt"
                          and opened[0].backbone.session.get_session_options().intra_op_num_threads != 1)
            if one_thread:
                opened.append(self.engines(streams=count, threads=1))

            def variant(batched: bool, engines, count: int = count) -> Callable[[], Run]:
                config = PipelineConfig(threaded=True, max_frames=self.options.stream_frames, budget=NO_DEADLINE,
                                        drop_policy=DropPolicy.NONE, batch_streams=batched)
                return lambda: run_pipeline(self.manifest, engines, [open_source(str(video), stream=i)
                                                                     for i in range(count)], config)

            variants = {"batched": variant(True, opened[0]), "unbatched": variant(False, opened[0])}
            if one_thread:
                variants["unbatched_1thread"] = variant(False, opened[1])
            try:
                runs = round_robin(variants, self.options.repeats)
            finally:
                for engines in opened:
                    engines.close()
            row: dict[str, Any] = {mode: pool(done) for mode, done in runs.items()}
            row["speedup"] = row["batched"]["fps"] / row["unbatched"]["fps"]
            if one_thread:
                row["speedup_vs_unbatched_1thread"] = row["batched"]["fps"] / row["unbatched_1thread"]["fps"]
            out[str(count)] = row
        self.results["streams"] = out

    # 6. Memory --------------------------------------------------------------------------------------
    def memory(self, video: Path) -> None:
        warmup, frames = self.options.memory_warmup, self.options.memory_frames
        engines = self.engines()
        source = LoopedVideo(video).open()
        config = PipelineConfig(emit=EmitMode.BOTH, threaded=True, max_frames=warmup + frames, budget=NO_DEADLINE)
        trace: list[tuple[int, Optional[int]]] = []
        every = max(1, frames // 20)
        steps = 0
        try:
            with Pipeline(engines, [source], config) as pipeline:
                for result in pipeline:
                    if result.mode != "step":
                        continue
                    steps += 1
                    if steps == warmup or (steps > warmup and (steps - warmup) % every == 0):
                        trace.append((steps, rss_bytes()))
        finally:
            engines.close()
        after_warmup = trace[0][1] if trace else None
        after = trace[-1][1] if trace else None
        growth = None if after is None or after_warmup is None else after - after_warmup
        self.results["memory"] = {
            "warmup_frames": warmup,
            "frames_after_warmup": steps - warmup,
            "rss_after_warmup_mib": None if after_warmup is None else after_warmup / 2**20,
            "rss_after_mib": None if after is None else after / 2**20,
            "growth_mib": None if growth is None else growth / 2**20,
            "trace": [(n, None if b is None else round(b / 2**20, 3)) for n, b in trace],
        }


@dataclass
class Run:
    """One timed run, kept raw so that repeated runs can be pooled."""

    frames: int
    wall: float  # seconds
    cpu: float  # process CPU seconds
    latency: np.ndarray  # end-to-end seconds per result
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    stream_latency: list[np.ndarray] = field(default_factory=list)
    batches: int = 0
    dropped: int = 0
    misses: int = 0
    last_index: int = -1


def run_pipeline(manifest: Manifest, engines, sources, config: PipelineConfig) -> Run:
    """Run a pipeline to its end, timed."""
    pipeline = Pipeline(engines, sources, config)
    last_index = -1
    cpu0, t0 = time.process_time(), time.perf_counter()
    with pipeline:
        for result in pipeline:
            if result.frame_index > last_index:
                last_index = result.frame_index
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stats = pipeline.stats
    return Run(
        frames=stats.total("frames"), wall=wall, cpu=cpu,
        latency=np.array(stats.stages["end_to_end"].values()),
        stages={stage: np.array(stats.stages[stage].values()) for stage in ("capture_wait", "preprocess", "cnn", "gru")},
        stream_latency=[np.array(recorder.values()) for recorder in stats.stream_latency],
        batches=stats.batches, dropped=stats.total("dropped"), misses=stats.total("misses"), last_index=last_index,
    )


def round_robin(variants: dict[str, Callable[[], Run]], repeats: int) -> dict[str, list[Run]]:
    """Each variant `repeats` times, in order and then in reverse order (A B C C B A ...), so
    that load drifting during the benchmark weighs on every variant alike."""
    runs: dict[str, list[Run]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(max(1, repeats)):
        for name in (order if repeat % 2 == 0 else order[::-1]):
            runs[name].append(variants[name]())
    return runs


def pool(runs: list[Run]) -> dict[str, Any]:
    """Frames/s over the runs' total time; latency percentiles over all their samples."""
    frames = sum(run.frames for run in runs)
    wall = sum(run.wall for run in runs)
    cpu = sum(run.cpu for run in runs)
    out: dict[str, Any] = {
        "runs": len(runs),
        "frames": frames,
        "fps": frames / wall if wall > 0 else 0.0,
        "ms_per_frame": 1e3 * wall / max(frames, 1),
        "cpu_ms_per_frame": 1e3 * cpu / max(frames, 1),
        "latency": summary(np.concatenate([run.latency for run in runs])),
        "dropped": sum(run.dropped for run in runs),
        "misses": sum(run.misses for run in runs),
    }
    if runs[0].stages:
        out["stages"] = {stage: summary(np.concatenate([run.stages[stage] for run in runs])) for stage in runs[0].stages}
    if runs[0].stream_latency:
        streams = len(runs[0].stream_latency)
        out["per_stream_p99_ms"] = [summary(np.concatenate([run.stream_latency[i] for run in runs]))["p99_ms"]
                                    for i in range(streams)]
    if any(run.batches for run in runs):
        out["mean_batch"] = frames / sum(run.batches for run in runs)
    return out


# Targets --------------------------------------------------------------------------------------
def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the design with its measured figure; `met` is None where it was not measured."""
    floor, pipe, naive, models = r["floor"], r["pipeline"], r["naive"], r["models"]
    chosen = models["default_precision"]
    rows: list[dict[str, Any]] = []

    def add(name: str, goal: str, value: Optional[float], met: Optional[bool], detail: str) -> None:
        rows.append({"target": name, "goal": goal, "measured": value, "met": met, "detail": detail})

    stages = ("decode", "preprocess", f"cnn_{chosen}", "gru_step")
    serial = pipe.get(f"serial_{chosen}")
    for name, source, how in (("glue", floor, "each stage alone"),
                              ("glue, stages interleaved", r.get("floor_interleaved", {}), "stages interleaved, no pipeline")):
        if serial and all(s in source for s in stages):
            total = sum(source[s]["mean_ms"] for s in stages)
            ratio = serial["ms_per_frame"] / total
            add(name, f"serial time per frame <= 1.10 x sum of stage times ({how})", ratio, ratio <= 1.10,
                f"serial {serial['ms_per_frame']:.3f} ms/frame vs {total:.3f} ms = "
                + " + ".join(f"{s} {source[s]['mean_ms']:.3f}" for s in stages) + " (means)")
    piped = pipe.get(f"pipelined_{chosen}")
    base = naive.get(chosen)
    if piped and base:
        ratio = piped["fps"] / base["fps"]
        p99_ok = piped["latency"]["p99_ms"] <= base["latency"]["p99_ms"]
        detail = (f"{piped['fps']:.0f} vs {base['fps']:.0f} frames/s; p99 {piped['latency']['p99_ms']:.2f} vs "
                  f"{base['latency']['p99_ms']:.2f} ms")
        tuned = naive.get(f"{chosen}_1thread")
        if tuned:
            detail += (f" (the naive loop with 1 intra-op thread: {tuned['fps']:.0f} frames/s, "
                       f"p99 {tuned['latency']['p99_ms']:.2f} ms, ratio {piped['fps'] / tuned['fps']:.2f})")
        add("pipelined throughput", ">= 1.3 x naive serial loop, p99 latency no worse", ratio, ratio >= 1.3 and p99_ok, detail)
    cnn = {p: floor[f"cnn_{p}"]["p50_ms"] for p in models["precisions"] if f"cnn_{p}" in floor}
    eligible = {p: t for p, t in cnn.items() if p != "int8" or str(models.get("int8_gate") or "").startswith("passed")}
    if eligible:
        fastest = min(eligible, key=eligible.get)
        add("backbone variant", "the runtime's default is the fastest variant that passes the quality gate", None,
            chosen == fastest, ", ".join(f"{p} {t:.2f} ms" for p, t in cnn.items())
            + f"; INT8 gate: {models.get('int8_gate')}; default: {chosen}")
    if "gru_step" in floor and "gru_step_numpy" in floor:
        ratio = floor["gru_step"]["p50_ms"] / floor["gru_step_numpy"]["p50_ms"]
        add("GRU step", "<= 1.3 x the same step in numpy", ratio, ratio <= 1.3,
            f"engine {floor['gru_step']['p50_ms'] * 1e3:.0f} us vs numpy {floor['gru_step_numpy']['p50_ms'] * 1e3:.0f} us (medians)")
    four = r["streams"].get("4")
    if four and "speedup" in four:
        detail = f"{four['batched']['fps']:.0f} vs {four['unbatched']['fps']:.0f} frames/s (same engines)"
        if "unbatched_1thread" in four:
            detail += (f"; vs unbatched on 1 intra-op thread: {four['unbatched_1thread']['fps']:.0f} frames/s, "
                       f"ratio {four['speedup_vs_unbatched_1thread']:.2f}")
        add("batching", "4 streams batched >= 1.3 x unbatched, aggregate frames/s", four["speedup"], four["speedup"] >= 1.3,
            detail)
    memory = r["memory"]
    if memory.get("growth_mib") is not None:
        long_enough = memory["frames_after_warmup"] >= 10_000  # a shorter run says nothing either way
        add("memory", "RSS growth from warm-up over 10,000 frames <= 2 MiB", memory["growth_mib"],
            memory["growth_mib"] <= 2.0 if long_enough else None,
            f"{memory['rss_after_warmup_mib']:.1f} -> {memory['rss_after_mib']:.1f} MiB over "
            f"{memory['frames_after_warmup']} frames")
    live = r["live"]
    add("live 30 fps", "p99 end-to-end within the budget on INT8; drops counted exactly", live["latency"]["p99_ms"],
        live["latency"]["p99_ms"] <= live["budget_ms"] and live["drops_exact"] and live["precision"] == "int8",
        f"{live['precision']}: p99 {live['latency']['p99_ms']:.2f} ms vs {live['budget_ms']:.1f} ms budget; "
        f"{live['frames']} processed + {live['dropped']} dropped = {live['produced']} produced; {live['misses']} misses")
    return rows


# Reports ----------------------------------------------------------------------------------------
def _f(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    m, models = r["machine"], r["models"]
    lines = [
        "# edge-bench",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {_f(m['memory_gib'], 1)} GiB; {m['os']}; Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}, OpenCV {m['opencv']}, numpy {m['numpy']}; backend `{m['backend']}`.",
        f"Load: load average {m['load_average_start']} at start, {m.get('load_average_end')} at end; other processes "
        f"used {_f(m.get('other_processes_cpu_percent'), 0)}% of the machine's CPU during the run.",
        f"Models: {models['backbone']} {models['input']} ({', '.join(models['precisions'])}; INT8 gate: "
        f"{models['int8_gate']}), GRU H={models['hidden_size']}, window W={models['window']}; default backbone "
        f"`{models['default_precision']}`." + (" Reduced (quick) run." if r["options"].get("quick") else ""),
        "",
        "## 1. Floor: each stage alone (batch 1)",
        "",
        "| stage | p50 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|",
    ]
    for name, value in r["floor"].items():
        if isinstance(value, dict):
            lines.append(f"| {name} | {_f(value['p50_ms'], 3)} | {_f(value['p99_ms'], 3)} | {_f(value['mean_ms'], 3)} |")
    interleaved = r.get("floor_interleaved", {})
    if interleaved:
        lines.append("")
        lines.append("The serial loop's stages timed in its order, frame after frame, with no pipeline around them "
                     "(each finds the caches as the others left them):")
        lines.append("")
        lines.append("| stage (interleaved) | p50 ms | p99 ms | mean ms |")
        lines.append("|---|---:|---:|---:|")
        for name, value in interleaved.items():
            lines.append(f"| {name} | {_f(value['p50_ms'], 3)} | {_f(value['p99_ms'], 3)} | {_f(value['mean_ms'], 3)} |")
    lines.append(f"\nPer-window decision: the {r['floor']['window_engine_used']} way is faster here.")
    lines += [
        "",
        f"## 2-3. Pipeline on a generated {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} video, as fast as it goes, and the naive loop",
        "",
        "| run | frames/s | ms/frame | CPU ms/frame | latency p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, run in r["pipeline"].items():
        lines.append(f"| {name.replace('_', ' ')} | {_f(run['fps'], 0)} | {_f(run['ms_per_frame'], 3)} | "
                     f"{_f(run['cpu_ms_per_frame'], 3)} | {_f(run['latency']['p50_ms'])} | {_f(run['latency']['p99_ms'])} |")
    for precision, run in r["naive"].items():
        if isinstance(run, dict):
            lines.append(f"| naive {precision.replace('_', ' ')} | {_f(run['fps'], 0)} | {_f(1e3 / run['fps'] if run['fps'] else None, 3)} | "
                         f"{_f(run['cpu_ms_per_frame'], 3)} | {_f(run['latency']['p50_ms'])} | {_f(run['latency']['p99_ms'])} |")
    live = r["live"]
    lines += [
        "",
        f"## 4. Live source at 30 fps ({live['precision']} backbone)",
        "",
        "| processed | dropped | produced | drops exact | deadline misses | budget ms | p50 ms | p99 ms |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
        f"| {live['frames']} | {live['dropped']} | {live['produced']} | {'yes' if live['drops_exact'] else 'NO'} | "
        f"{live['misses']} | {_f(live['budget_ms'], 1)} | {_f(live['latency']['p50_ms'])} | {_f(live['latency']['p99_ms'])} |",
        "",
        "## 5. Streams: batched (one CNN and one GRU call per batch) against one call per stream",
        "",
        "| streams | batched frames/s | unbatched frames/s | speed-up | mean batch | per-stream p99 ms (batched, worst) | "
        "(unbatched, worst) | CPU ms/frame (batched) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count, row in r["streams"].items():
        if "skipped" in row:
            lines.append(f"| {count} | {row['skipped']} | | | | | | |")
            continue
        b, u = row["batched"], row["unbatched"]
        lines.append(f"| {count} | {_f(b['fps'], 0)} | {_f(u['fps'], 0)} | {_f(row['speedup'])} | {_f(b['mean_batch'], 1)} | "
                     f"{_f(max(b['per_stream_p99_ms']))} | {_f(max(u['per_stream_p99_ms']))} | {_f(b['cpu_ms_per_frame'], 3)} |")
    four = r["streams"].get("4", {})
    if "unbatched_1thread" in four:
        lines.append(f"\n4 streams unbatched on one intra-op thread (the best setting for batches of 1): "
                     f"{_f(four['unbatched_1thread']['fps'], 0)} frames/s; batched is "
                     f"{_f(four['speedup_vs_unbatched_1thread'])}x that.")
    memory = r["memory"]
    lines += [
        "",
        "## 6. Memory (resident set size)",
        "",
        "| after warm-up MiB | after N more frames MiB | N | growth MiB |",
        "|---:|---:|---:|---:|",
        f"| {_f(memory['rss_after_warmup_mib'], 1)} | {_f(memory['rss_after_mib'], 1)} | {memory['frames_after_warmup']} | "
        f"{_f(memory['growth_mib'], 3)} |",
        "",
        "## Targets",
        "",
        "| target | goal | measured | met | detail |",
        "|---|---|---:|---|---|",
    ]
    for row in r["targets"]:
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['target']} | {row['goal']} | {_f(row['measured'])} | {met} | {row['detail']} |")
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], samples: dict[str, np.ndarray], path: Path, engine: str = "auto") -> str:
    """Latency distributions (CDF) and stream scaling, side by side; returns what drew it."""
    curves = {name: np.sort(values) * 1e3 for name, values in samples.items() if len(values)}
    counts = [int(c) for c, row in r["streams"].items() if "skipped" not in row]
    scaling = {mode: [r["streams"][str(c)][mode]["fps"] for c in counts] for mode in ("batched", "unbatched")}
    if engine == "auto":
        try:
            import matplotlib  # noqa: F401 - the optional `bench` extra
        except ImportError:
            engine = "opencv"
        else:
            engine = "matplotlib"
    if engine == "matplotlib":
        _plot_matplotlib(curves, counts, scaling, path, r["machine"])
    else:
        _plot_opencv(curves, counts, scaling, path)
    return engine


def _plot_matplotlib(curves, counts, scaling, path: Path, machine: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, values in curves.items():
        left.plot(values, np.arange(1, len(values) + 1) / len(values), label=name)
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("end-to-end latency per frame (ms)")
    left.set_ylabel("fraction of frames")
    left.set_title("latency distribution")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    for mode, values in scaling.items():
        right.plot(counts, values, marker="o", label=mode)
    right.set_xticks(counts)
    right.set_xlabel("streams")
    right.set_ylabel("aggregate frames/s")
    right.set_title("stream scaling")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"edge-bench: {machine['cpu']}, {machine['cores']} cores, backend {machine['backend']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
            (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]  # BGR


def _plot_opencv(curves, counts, scaling, path: Path) -> None:
    """The same two panels drawn with OpenCV, for machines without matplotlib."""
    import cv2

    image = np.full((480, 1200, 3), 255, np.uint8)

    def panel(x0: int, title: str, xlabel: str, series: dict[str, tuple[np.ndarray, np.ndarray]], xmax: float,
              ymax: float, markers: bool) -> None:
        left, top, width, height = x0 + 60, 40, 500, 360
        cv2.rectangle(image, (left, top), (left + width, top + height), (0, 0, 0), 1)
        cv2.putText(image, title, (left, top - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(image, xlabel, (left, top + height + 36), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for frac in (0.0, 0.5, 1.0):
            cv2.putText(image, f"{xmax * frac:.3g}", (left + int(frac * width) - 10, top + height + 16),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(image, f"{ymax * frac:.3g}", (x0 + 5, top + height - int(frac * height) + 4),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for i, (name, (xs, ys)) in enumerate(series.items()):
            colour = _COLOURS[i % len(_COLOURS)]
            px = left + np.clip(xs / max(xmax, 1e-9), 0, 1) * width
            py = top + height - np.clip(ys / max(ymax, 1e-9), 0, 1) * height
            points = np.stack([px, py], axis=1).round().astype(np.int32)
            cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
            if markers:
                for point in points:
                    cv2.circle(image, tuple(int(v) for v in point), 4, colour, -1, cv2.LINE_AA)
            cv2.putText(image, name, (left + 10, top + 18 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)

    if curves:
        xmax = max(float(np.percentile(values, 99.5)) for values in curves.values())
        series = {name: (values, np.arange(1, len(values) + 1) / len(values)) for name, values in curves.items()}
        panel(0, "latency distribution (fraction of frames)", "end-to-end latency per frame (ms)", series, xmax, 1.0, False)
    if counts:
        ymax = max(max(values) for values in scaling.values()) * 1.1
        series = {mode: (np.array(counts, float), np.array(values, float)) for mode, values in scaling.items()}
        panel(600, "stream scaling (aggregate frames/s)", "streams", series, float(max(counts)), ymax, True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def write_outputs(r: dict[str, Any], samples: dict[str, np.ndarray], out: Path, plot_engine: str = "auto") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "bench.md", "json": out / "bench.json", "plot": out / "bench.png"}
    r["plot"] = plot(r, samples, paths["plot"], plot_engine)
    paths["json"].write_text(json.dumps(r, indent=2, default=_json_default) + "\n")
    paths["markdown"].write_text(markdown(r))
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# CLI --------------------------------------------------------------------------------------------
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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        streams = tuple(int(v) for v in str(args.streams).split(",") if v.strip())
    except ValueError:
        print(f"edge-bench: error: --streams takes counts like 1,2,4,8, not {args.streams!r}", file=sys.stderr)
        return EXIT_USAGE
    chosen = dict(engines=args.engines, out=args.out, backend=args.backend, threads=args.threads, video=args.video,
                  plot=args.plot)
    if args.quick:
        options = BenchOptions.reduced(**chosen)
    else:
        options = BenchOptions(frames=args.frames, stream_frames=args.stream_frames, streams=streams,
                               live_seconds=args.live_seconds, memory_frames=args.memory_frames, repeats=args.repeats,
                               **chosen)
    try:
        paths = run(options, log=lambda line: print(f"edge-bench: {line}", file=sys.stderr, flush=True))
    except (ManifestError, EngineError) as exc:
        print(f"edge-bench: error: {exc}", file=sys.stderr)
        return EXIT_ENGINES
    for path in paths.values():
        print(f"edge-bench: wrote {path}", file=sys.stderr)
    print(paths["markdown"].read_text())
    return EXIT_OK


def run(options: BenchOptions, log: Callable[[str], None] = lambda line: None) -> dict[str, Path]:
    """The whole benchmark; returns the paths of the Markdown, JSON and PNG outputs."""
    bench = Bench(options, log)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as scratch:
        video = options.video
        if video is None:
            from runtime.sources.demo import write_demo_video

            video = Path(scratch) / f"demo-{VIDEO_SIZE[0]}x{VIDEO_SIZE[1]}.avi"
            length = max(options.frames, options.stream_frames, int(options.live_seconds * LIVE_FPS) + 2)
            log(f"writing a {length}-frame {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} demo video")
            write_demo_video(video, length, seed=1, width=VIDEO_SIZE[0], height=VIDEO_SIZE[1], fps=LIVE_FPS)
        results = bench.run(Path(video))
    return write_outputs(results, bench.samples, options.out, options.plot)


if __name__ == "__main__":
    sys.exit(main())
