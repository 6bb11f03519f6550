"""The measured sections, one method each: floor, throughput (pipeline and naive loop), live, streams, memory."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from runtime.backends import EngineSet, default_precision, open_engines, resolve_backend
from runtime.backends.onnxrt import PROVIDERS, available_providers
from runtime.bench.baselines import naive_loop, numpy_gru_step
from runtime.bench.machine import LoadMeter, machine_description, rss_bytes
from runtime.bench.observers import observer_costs
from runtime.bench.options import LIVE_FPS, NO_DEADLINE, PRECISION_ORDER, BenchOptions
from runtime.bench.runs import Run, pool, round_robin, run_pipeline
from runtime.bench.sources import LoopedVideo
from runtime.bench.targets import targets
from runtime.bench.timing import summary, time_calls
from runtime.errors import ManifestError
from runtime.mailbox import DropPolicy
from runtime.manifest import BACKBONE, GRU_STEP, load_manifest, rebuild_hint
from runtime.pipeline import Pipeline, PipelineConfig
from runtime.preprocess import Preprocessor
from runtime.result import EmitMode
from runtime.sources import VideoFileSource, open_source
from runtime.temporal import WindowRunner


class Bench:
    """One benchmark run: each section opens the engines it needs, closes them, and adds its figures
    to `results` (and its latency samples, for the plot, to `samples`)."""

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
                threads: Optional[int] = None) -> EngineSet:
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
                              ("streams", self.streams), ("memory", self.memory), ("observers", self.observers)):
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
        if (self.manifest.cell, self.manifest.layers) == ("gru", 1):  # the numpy baseline is the one-layer GRU's
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
    def _window(engines: EngineSet, window: int, rng: np.random.Generator, n: int) -> dict[str, float]:
        runner = WindowRunner(engines.gru_window, window, engines.window_is_sequence)
        features = rng.standard_normal((window, runner.x.shape[-1])).astype(np.float32)
        return summary(time_calls(lambda: runner.run([features]), max(20, n // 2)))

    # 8. What the preview, the recorder and event clips cost the loop ---------------------------
    def observers(self, video: Path) -> None:
        engines = self.engines()
        try:
            self.results["observers"] = observer_costs(engines, video, self.options.frames, self.options.repeats)
        finally:
            engines.close()

    # 2-3. The runtime on the video, and the naive loop, interleaved ------------------------------
    def throughput(self, video: Path) -> None:
        have = set(available_providers())
        backend = self.backend if self.backend in PROVIDERS else "trt-ep"
        providers = [p for p in PROVIDERS[backend] if p in have] or ["CPUExecutionProvider"]
        gru_path = self.manifest.path_of(self.manifest.find(GRU_STEP, "onnx"))
        frames = self.options.frames
        variants: dict[str, Callable[[], Run]] = {}
        engines = {precision: self.engines(precision) for precision in self.precisions}

        def runtime_run(precision: str, threaded: bool) -> Callable[[], Run]:
            config = PipelineConfig(threaded=threaded, max_frames=frames, budget=NO_DEADLINE)
            return lambda: run_pipeline(engines[precision], [open_source(str(video))], config)

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
            raw = run_pipeline(engines, [source], config)
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

            def variant(batched: bool, engines: EngineSet, count: int = count) -> Callable[[], Run]:
                config = PipelineConfig(threaded=True, max_frames=self.options.stream_frames, budget=NO_DEADLINE,
                                        drop_policy=DropPolicy.NONE, batch_streams=batched)
                return lambda: run_pipeline(engines, [open_source(str(video), stream=i) for i in range(count)], config)

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
