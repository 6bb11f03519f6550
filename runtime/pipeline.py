"""The scheduling loop: sources -> preprocess -> CNN -> ring buffers / GRU -> results.

`Pipeline` is the Python API the CLI is a thin layer over: iterate it to get `Result`s.

    with Pipeline(manifest, engines, [open_source("demo")], PipelineConfig()) as run:
        for result in run:
            print(result.label)

Per iteration the loop takes the frames that are ready (one per stream at most, a batch
formed within `collect_timeout`), preprocesses them into the CNN's input rows, runs the
CNN once for the batch, steps the GRU once for the batch, and emits results. Capture
threads decode the next frames meanwhile. Frames a live source produced while the loop
was busy are dropped (newest wins), counted, and reported on the next result.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from .capture import Backoff, Capture, FramePool
from .engine_set import EngineSet
from .frame import Frame
from .mailbox import Closed, DropPolicy, Mailbox
from .manifest import Manifest
from .preprocess import Preprocessor
from .result import EmitMode, Result
from .sources import Source
from .stats import RunStats
from .temporal import StepRunner, StreamWindows, WindowRunner

log = logging.getLogger("edge_run.pipeline")

DEFAULT_FPS = 30.0
MISS_WINDOW = 100  # results over which a sustained deadline-miss rate is judged
MISS_WARN_RATE = 0.5


class PipelineError(RuntimeError):
    """A run that cannot continue (a source failed for good, an engine error)."""


@dataclass(frozen=True)
class PipelineConfig:
    emit: EmitMode = EmitMode.STEP
    window: Optional[int] = None  # default: the manifest's
    stride: Optional[int] = None  # default: the manifest's
    budget: Optional[float] = None  # seconds per frame; default 1 / source fps
    reset_gap: float = 1.0  # seconds between captures of a live source that reset its state
    max_frames: Optional[int] = None  # per stream
    drop_policy: Optional[DropPolicy] = None  # default: NEWEST for live sources, NONE for files
    collect_timeout: float = 0.004  # how long a ready frame waits for the other streams
    threaded: bool = True  # capture threads (pipelined); False reads sources inline (serial)
    queue_frames: int = 4  # FIFO depth per stream under DropPolicy.NONE
    score: bool = False  # compare labels with the source's ground truth
    backoff: Backoff = Backoff()


class _Stream:
    """Per-stream bookkeeping the loop needs between frames."""

    def __init__(self, index: int, source: Source) -> None:
        self.index = index
        self.source = source
        self.mailbox: Optional[Mailbox] = None
        self.capture: Optional[Capture] = None
        self.pool = FramePool(8)
        self.last_index = -1
        self.last_timestamp: Optional[float] = None
        self.pending_drops = 0  # frames skipped since this stream's last result
        self.frames = 0
        self.since_reset = 0
        self.label_run = 0
        self.last_label: Optional[str] = None
        self.finished = False

    def total_drops(self) -> int:
        """Frames replaced in the mailbox plus frames a paced (realtime) source skipped itself."""
        return (self.mailbox.dropped if self.mailbox is not None else 0) + self.source.dropped


class Pipeline:
    def __init__(self, manifest: Manifest, engines: EngineSet, sources: Sequence[Source], config: PipelineConfig = PipelineConfig()) -> None:
        if not sources:
            raise ValueError("a pipeline needs at least one source")
        self.manifest = manifest
        self.engines = engines
        self.config = config
        self.labels = manifest.labels
        self.window = config.window or manifest.window
        self.stride = config.stride or manifest.stride
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"window ({self.window}) and stride ({self.stride}) must be at least 1")
        self.streams = [_Stream(i, source) for i, source in enumerate(sources)]
        n = len(self.streams)
        self.stats = RunStats(n)
        self.preprocess = Preprocessor(manifest.input)
        self.cnn = engines.backbone
        self.cnn_in = self.cnn.input(self.cnn.input_names[0])
        self.cnn_out = self.cnn.output(self.cnn.output_names[0])
        if self.cnn_out.shape[1] != manifest.feature_size:
            raise PipelineError(f"backbone gives {self.cnn_out.shape[1]} features, manifest says {manifest.feature_size}")
        if self.cnn_in.shape[1:] != self.preprocess.input_shape:
            raise PipelineError(f"backbone input {self.cnn_in.shape[1:]} does not match the manifest's {self.preprocess.input_shape}")
        self.steps = StepRunner(engines.gru_step, n)
        self.window_runner = WindowRunner(engines.gru_window, self.window, engines.window_is_sequence)
        self.rings = StreamWindows(n, self.window, self.stride, manifest.feature_size)
        self.budget = config.budget or 1.0 / DEFAULT_FPS  # refined from the sources' fps in start()
        self._stop = threading.Event()
        self._doorbell = threading.Event()
        self._reset_requests: set[Optional[int]] = set()
        self._reset_lock = threading.Lock()
        self._epoch_offset = time.time() - time.perf_counter()
        # Preallocated per-batch scratch: row sums for the finite check, softmax output.
        self._rowsum = np.zeros(n, np.float32)
        self._finite = np.zeros(n, bool)
        self._probs = np.zeros((n, manifest.num_classes), np.float32)
        self._miss_flags = np.zeros(MISS_WINDOW, bool)
        self._miss_next = 0
        self._warned_misses = False
        self._started = False

    # Public API -------------------------------------------------------------------------
    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Result]:
        self.start()
        try:
            while not self._stop.is_set():
                batch = self._collect()
                if batch is None:
                    break
                if batch:
                    yield from self._process(batch)
        finally:
            self.close()

    def start(self) -> None:
        """Open every source (raising CameraUnavailable/SourceError) and start capture threads."""
        if self._started:
            return
        self._started = True
        for stream in self.streams:
            if not stream.source.is_open:
                stream.source.open()
        if self.config.budget is None:
            self.budget = 1.0 / (self._source_fps() or DEFAULT_FPS)
        for stream in self.streams:
            policy = self.config.drop_policy or (DropPolicy.NEWEST if stream.source.live else DropPolicy.NONE)
            stream.mailbox = Mailbox(policy, self.config.queue_frames, on_drop=self._dropper(stream), doorbell=self._doorbell)
            if self.config.threaded:
                stream.capture = Capture(stream.source, stream.mailbox, stream.pool, self._stop, self.config.backoff, self.config.max_frames)
                stream.capture.start()

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and end (safe from any thread or signal handler)."""
        self._stop.set()
        self._doorbell.set()

    def request_reset(self, stream: Optional[int] = None) -> None:
        """Reset one stream's carried state (all streams when None) before the next batch."""
        with self._reset_lock:
            self._reset_requests.add(stream)

    def close(self) -> None:
        self._stop.set()
        for stream in self.streams:
            if stream.mailbox is not None:
                stream.mailbox.close()
        for stream in self.streams:
            if stream.capture is not None:
                stream.capture.join(timeout=5.0)
            self._fold_capture_counters(stream)
            try:
                stream.source.close()
            except Exception:  # noqa: BLE001 - closing a broken device must not mask the real error
                pass

    @property
    def num_streams(self) -> int:
        return len(self.streams)

    # State for checkpoints --------------------------------------------------------------
    def export_state(self) -> dict:
        """Hidden state [N,H] and each stream's buffered window, as plain arrays."""
        return {
            "hidden": self.steps.state(),
            "rings": [ring.snapshot() for ring in self.rings.rings],
        }

    def import_state(self, state: dict) -> None:
        hidden = np.asarray(state["hidden"], np.float32)
        if hidden.shape != (self.num_streams, self.manifest.hidden_size):
            raise ValueError(f"state has shape {hidden.shape}, expected {(self.num_streams, self.manifest.hidden_size)}")
        self.steps.load(hidden)
        for ring, rows in zip(self.rings.rings, state["rings"]):
            ring.restore(np.asarray(rows, np.float32))

    # Collection -------------------------------------------------------------------------
    def _collect(self) -> Optional[list[tuple[_Stream, Frame]]]:
        """Ready frames, at most one per stream; [] on a quiet poll; None when every source ended."""
        if not self.config.threaded:
            return self._read_inline()
        deadline = None
        while not self._stop.is_set():
            self._doorbell.clear()
            self._apply_capture_errors()
            active = [s for s in self.streams if not s.finished]
            if not active:
                return None
            ready = [s for s in active if s.mailbox.ready()]
            for stream in active:
                if not ready or stream not in ready:
                    if stream.mailbox.closed and not stream.mailbox.ready():
                        stream.finished = True
            now = time.perf_counter()
            waiting = [s for s in active if not s.finished and s not in ready]
            if ready and (not waiting or (deadline is not None and now >= deadline)):
                return self._take(ready)
            if ready and deadline is None:
                deadline = now + self.config.collect_timeout
            if not ready and deadline is None and all(s.finished for s in active):
                return None
            self._doorbell.wait(0.1 if deadline is None else max(0.0, deadline - now))
        return None

    def _take(self, ready: list[_Stream]) -> list[tuple[_Stream, Frame]]:
        batch = []
        for stream in ready:
            try:
                frame = stream.mailbox.get(timeout=0)
            except Closed:
                stream.finished = True
                continue
            if frame is not None:
                batch.append((stream, frame))
        return batch

    def _read_inline(self) -> Optional[list[tuple[_Stream, Frame]]]:
        from .sources import is_valid_image

        batch = []
        for stream in self.streams:
            if stream.finished:
                continue
            if self.config.max_frames is not None and stream.frames >= self.config.max_frames:
                stream.finished = True
                continue
            frame = stream.source.read(stream.pool.take())
            if frame is None:
                stream.finished = True
            elif not is_valid_image(frame.image):
                self.stats.streams[stream.index].corrupt += 1
            else:
                batch.append((stream, frame))
        if not batch and all(s.finished for s in self.streams):
            return None
        return batch

    def _apply_capture_errors(self) -> None:
        for stream in self.streams:
            capture = stream.capture
            if capture is not None and capture.error is not None and not stream.finished:
                error, capture.error = capture.error, None
                raise PipelineError(f"source {stream.source.name} failed: {error}") from error

    def _dropper(self, stream: _Stream):
        return lambda frame: stream.pool.give(frame.image)

    # Processing -------------------------------------------------------------------------
    def _process(self, batch: list[tuple[_Stream, Frame]]) -> Iterator[Result]:
        self._apply_reset_requests()
        stats = self.stats
        t_start = time.perf_counter()
        for row, (stream, frame) in enumerate(batch):
            self._check_continuity(stream, frame)
            stats.stages["capture_wait"].add(t_start - frame.timestamp)
            t0 = time.perf_counter()
            self.preprocess(frame.image, self.cnn_in[row])
            stats.stages["preprocess"].add(time.perf_counter() - t0)
            stream.pool.give(frame.image)
        n = len(batch)
        t0 = time.perf_counter()
        self.cnn.run(n)
        t_cnn = time.perf_counter() - t0
        features = self.cnn_out
        good = self._finite_rows(features, n)
        now = time.perf_counter()
        stats.last_frame_time = now
        if stats.started is None:
            stats.started = now
        for row, (stream, frame) in enumerate(batch):
            stats.stages["cnn"].add(t_cnn)
            stats.streams[stream.index].frames += 1
            stream.frames += 1
            if not good[row]:
                self._nonfinite(stream)
            self._fold_capture_counters(stream)
            if self.config.max_frames is not None and stream.frames >= self.config.max_frames:
                stream.finished = True
        rows = [row for row in range(n) if good[row]]
        if not rows:
            return
        if self.config.emit.steps:
            yield from self._emit_steps(batch, rows, features)
        if self.config.emit.windows:
            yield from self._emit_windows(batch, rows, features)

    def _emit_steps(self, batch, rows: list[int], features: np.ndarray) -> Iterator[Result]:
        x = self.steps.x
        if len(rows) == len(batch):
            x[: len(rows)] = features[: len(rows)]
        else:
            for i, row in enumerate(rows):
                x[i] = features[row]
        t0 = time.perf_counter()
        logits = self.steps.step([batch[row][0].index for row in rows])
        t_gru = time.perf_counter() - t0
        probs = self._softmax(logits)
        ok = self._finite_rows(logits, len(rows))
        for i, row in enumerate(rows):
            stream, frame = batch[row]
            self.stats.stages["gru"].add(t_gru)
            if not ok[i]:
                self._nonfinite(stream)
                continue
            scored = stream.label_run >= self.window and stream.since_reset >= self.window
            yield self._result(stream, frame, "step", probs[i], scored)

    def _emit_windows(self, batch, rows: list[int], features: np.ndarray) -> Iterator[Result]:
        due = [row for row in rows if self.rings.push(batch[row][0].index, features[row])]
        for start in range(0, len(due), self.window_runner.max_batch):
            chunk = due[start : start + self.window_runner.max_batch]
            windows = [self.rings.rings[batch[row][0].index].window() for row in chunk]
            t0 = time.perf_counter()
            logits = self.window_runner.run(windows)
            t_gru = time.perf_counter() - t0
            probs = self._softmax(logits)
            ok = self._finite_rows(logits, len(chunk))
            for i, row in enumerate(chunk):
                stream, frame = batch[row]
                self.stats.stages["gru"].add(t_gru)
                if not ok[i]:
                    self._nonfinite(stream)
                    continue
                yield self._result(stream, frame, "window", probs[i], stream.label_run >= self.window)

    def _result(self, stream: _Stream, frame: Frame, mode: str, probs: np.ndarray, scorable: bool) -> Result:
        best = int(np.argmax(probs))
        label = self.labels[best]
        counters = self.stats.streams[stream.index]
        dropped, stream.pending_drops = stream.pending_drops, 0
        counters.dropped = stream.total_drops()
        latency = time.perf_counter() - frame.timestamp
        self.stats.stages["end_to_end"].add(latency)
        counters.results += 1
        self._track_deadline(latency, counters)
        if self.config.score and frame.label is not None and scorable:
            self.stats.score(mode, label == frame.label)
        return Result(
            stream=stream.index,
            frame_index=frame.index,
            capture_time=frame.timestamp + self._epoch_offset,
            mode=mode,
            label=label,
            score=float(probs[best]),
            probabilities=tuple(float(p) for p in probs),
            latency=latency,
            dropped=dropped,
            true_label=frame.label,
            source=stream.source.name,
        )

    # Policies ---------------------------------------------------------------------------
    def _check_continuity(self, stream: _Stream, frame: Frame) -> None:
        """Reset a stream whose source restarted or whose live capture clock jumped."""
        if frame.index <= stream.last_index:
            stream.pending_drops += frame.index  # frames since the reopen that never reached us
            self.reset_stream(stream.index, "source restart")
        elif (
            stream.source.live
            and stream.last_timestamp is not None
            and frame.timestamp - stream.last_timestamp > self.config.reset_gap
        ):
            self.reset_stream(stream.index, "timestamp gap")
        if frame.index > stream.last_index:
            # Index gaps are the frames dropped in between: replaced in the mailbox or skipped by pacing.
            stream.pending_drops += frame.index - stream.last_index - 1
        stream.last_index = frame.index
        stream.last_timestamp = frame.timestamp
        stream.since_reset += 1
        if frame.label is not None and frame.label == stream.last_label:
            stream.label_run += 1
        else:
            stream.label_run = 1
        stream.last_label = frame.label

    def reset_stream(self, index: int, reason: str) -> None:
        """Zero the carried state and empty the window of one stream (loop thread only)."""
        self.steps.reset(index)
        self.rings.reset(index)
        stream = self.streams[index]
        stream.since_reset = 0
        resets = self.stats.streams[index].resets
        resets[reason] = resets.get(reason, 0) + 1

    def _apply_reset_requests(self) -> None:
        if not self._reset_requests:
            return
        with self._reset_lock:
            requests, self._reset_requests = self._reset_requests, set()
        targets = range(self.num_streams) if None in requests else sorted(r for r in requests if r is not None)
        for index in targets:
            self.reset_stream(index, "api")
            self.streams[index].label_run = 0

    def _nonfinite(self, stream: _Stream) -> None:
        self.stats.streams[stream.index].nonfinite += 1
        self.reset_stream(stream.index, "non-finite output")

    def _finite_rows(self, values: np.ndarray, n: int) -> np.ndarray:
        # NaN and Inf survive a sum, so one reduction per row checks the whole row.
        np.sum(values[:n], axis=1, out=self._rowsum[:n])
        np.isfinite(self._rowsum[:n], out=self._finite[:n])
        return self._finite[:n]

    def _softmax(self, logits: np.ndarray) -> np.ndarray:
        n = len(logits)
        probs = self._probs[:n]
        with np.errstate(invalid="ignore", over="ignore"):
            np.subtract(logits, logits.max(axis=1, keepdims=True), out=probs)
            np.exp(probs, out=probs)
            probs /= probs.sum(axis=1, keepdims=True)
        return probs

    def _track_deadline(self, latency: float, counters) -> None:
        missed = latency > self.budget
        if missed:
            counters.misses += 1
        self._miss_flags[self._miss_next] = missed
        self._miss_next = (self._miss_next + 1) % MISS_WINDOW
        total = self.stats.total("results")
        if not self._warned_misses and total >= MISS_WINDOW and self._miss_flags.mean() > MISS_WARN_RATE:
            self._warned_misses = True
            stage = max(("preprocess", "cnn", "gru", "capture_wait"), key=lambda s: self.stats.stages[s].recent_mean(MISS_WINDOW))
            log.warning(
                "%.0f%% of the last %d results missed the %.1f ms budget; %s dominates (%.1f ms recent mean)",
                100 * self._miss_flags.mean(), MISS_WINDOW, self.budget * 1e3, stage,
                self.stats.stages[stage].recent_mean(MISS_WINDOW) * 1e3,
            )

    def _fold_capture_counters(self, stream: _Stream) -> None:
        counters = self.stats.streams[stream.index]
        counters.dropped = stream.total_drops()
        if stream.capture is not None:
            counters.corrupt = stream.capture.corrupt
            counters.reconnects = stream.capture.reconnects

    def _source_fps(self) -> Optional[float]:
        rates = [s.source.fps for s in self.streams if s.source.fps]
        return max(rates) if rates else None
