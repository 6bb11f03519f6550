"""The scheduling loop: sources -> preprocess -> CNN -> ring buffers / GRU -> results.

`Pipeline` is the Python API the CLI is a thin layer over: iterate it to get `Result`s.

    with Pipeline(open_engines(load_manifest("engines")), [open_source("demo")], PipelineConfig()) as run:
        for result in run:
            print(result.label)

Per iteration the loop takes the frames that are ready (one per stream at most, a batch
formed within `collect_timeout`), preprocesses them into the CNN's input rows, runs the
CNN once for the batch, steps the GRU once for the batch ([N,H] state, one row per
stream), and emits results. Capture threads decode the next frames meanwhile. Frames a
live source produced while the loop was busy are dropped (newest wins), counted, and
reported on the next result; under `DropPolicy.NONE` the capture thread waits for room in
its stream's queue *before* decoding the next frame (back-pressure), so every frame is
processed, memory stays bounded, and no decoded frame ages in a queue.

Hot path (per frame): no logging, no per-pixel Python, no allocation beyond the `Result`
itself and a few small Python objects; engine buffers, preprocessing planes, softmax and
finite-check scratch are all preallocated. `batch_streams=False` runs one engine call per
stream instead (the baseline the benchmark compares batching against).

Observers (`add_observer`: the live preview, the recorder, event clips) see each frame
before its image is reused, each step with its features and state (`StepRecord`), and each
result, in the loop thread; with none attached the loop only iterates an empty tuple.

Why one file of ~540 lines: it holds the loop and every piece of state the loop owns
(`_Stream`, the ring buffers, the carried GRU state, the reset and continuity policy).
Keeping them together is what lets nothing outside reach into them: observers get
`export_state()`/`import_state()` and `stats`. The parts that are not the loop's state
live beside it (capture pacing in capture.py, deadline tracking in stats.py).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

from runtime import validation as valid
from runtime.backends import EngineSet
from runtime.capture import Backoff, Capture, FeedPool, LoopClock
from runtime.errors import PipelineError, SourceError, SourceReadError, UsageError
from runtime.frame import Frame
from runtime.mailbox import Closed, DropPolicy, Mailbox
from runtime.preprocess import Preprocessor
from runtime.result import EmitMode, Result
from runtime.sources import Source, is_valid_image
from runtime.stats import DeadlineMisses, RunStats
from runtime.temporal import StepRunner, StreamWindows, WindowRunner

log = logging.getLogger("edge_run.pipeline")

DEFAULT_FPS = 30.0


@dataclass(frozen=True)
class PipelineConfig:
    emit: EmitMode = EmitMode.STEP
    stride: Optional[int] = None  # default: the manifest's
    budget: Optional[float] = None  # seconds per frame; default 1 / source fps
    reset_gap: float = 1.0  # seconds between captures of a live source that reset its state
    max_frames: Optional[int] = None  # per stream
    drop_policy: Optional[DropPolicy] = None  # default: NEWEST for live sources, NONE for files
    collect_timeout: float = 0.004  # how long a ready frame waits for the other streams
    threaded: bool = True  # capture threads (pipelined); False reads sources inline (serial)
    # FIFO depth per stream under DropPolicy.NONE. One decoded frame waiting while the loop
    # works on the previous one is enough to overlap decoding with inference; each extra
    # slot adds a frame time of latency when the loop is the bottleneck.
    queue_frames: int = 1
    batch_streams: bool = True  # one CNN call and one GRU call per batch; False: one per stream
    paced_decode: bool = True  # threaded, file sources under DropPolicy.NONE: decode just in time (FeedPool)
    score: bool = False  # compare labels with the source's ground truth
    backoff: Backoff = Backoff()

    def __post_init__(self) -> None:
        # The same ranges as edge-run's flags (runtime.validation): a bad value is exit 2 here, not a loop that misbehaves.
        valid.check_enum("PipelineConfig.emit", self.emit, EmitMode)
        valid.check_enum("PipelineConfig.drop_policy", self.drop_policy, DropPolicy, optional=True)
        valid.check_fields(self, {
            "stride": valid.STRIDE, "budget": valid.BUDGET, "reset_gap": valid.RESET_GAP, "max_frames": valid.MAX_FRAMES,
            "collect_timeout": valid.COLLECT_TIMEOUT, "queue_frames": valid.QUEUE_FRAMES,
        }, optional=("stride", "budget", "max_frames"))


@dataclass(frozen=True)
class StreamState:
    """One stream's carried state and position, everything needed to resume it elsewhere."""

    name: str  # the source's name (credentials already masked by the source)
    live: bool
    position: int  # frames of the source consumed: last processed index + 1
    finished: bool  # the source had ended (a file played to its end; not a stop by max_frames)
    ring: np.ndarray  # buffered features [n <= W, F], oldest first
    pushed: int  # features pushed since the last reset: keeps the window schedule


@dataclass(frozen=True)
class PipelineState:
    """The loop's only long-lived state: the recurrent states and each stream's window and position.

    `states` maps each state input name of the head (`h`; `h`, `c`, `h_l1`, `c_l1` for a
    two-layer LSTM) to its rows [N, H], row i for stream i; it is read and written by name only.
    """

    states: dict[str, np.ndarray]
    streams: tuple[StreamState, ...]


@dataclass(frozen=True)
class StepRecord:
    """What one per-step result was made from, handed to observers (`Pipeline.add_observer`).

    The arrays are views into the loop's buffers, valid only during the call: an observer
    copies what it keeps.
    """

    result: Result
    features: np.ndarray  # [F] the CNN's features of this frame
    states: Mapping[str, np.ndarray]  # the recurrent state after this step, by state input name, each [H]
    fresh: bool  # the state was zero before this step (the stream's first step, or a reset)
    scorable: bool  # counted by --score (the last W frames show one clip and no reset in between)
    model: str  # the engines' identity (Manifest.identity())


class Observer:
    """Sees the loop's frames and results in the loop thread. Each call must return at once:
    copy what is needed into preallocated memory and leave the rest to a thread of its own.

    `begin` is called once when the run starts, with the state it starts from (a restored
    checkpoint's, or zeros); `frame` for every frame before its image goes back to the
    capture pool; `step` for every per-step result; `result` for every result (step and
    window), after `step`.
    """

    def begin(self, state: "PipelineState") -> None:
        """The run starts from `state`."""

    def frame(self, stream: int, frame: Frame) -> None:
        """A frame the loop took (its image is reused after the call)."""

    def step(self, record: StepRecord) -> None:
        """A per-step result with its features and state."""

    def result(self, result: Result) -> None:
        """Any result, as the sinks will get it."""


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name} {shape}" for name, shape in sorted(shapes.items())) or "no states"


def _softmax_into(logits: np.ndarray, probs: np.ndarray, rowmax: np.ndarray, rowtotal: np.ndarray) -> None:
    np.maximum.reduce(logits, axis=1, keepdims=True, out=rowmax)
    np.subtract(logits, rowmax, out=probs)
    np.exp(probs, out=probs)
    np.add.reduce(probs, axis=1, keepdims=True, out=rowtotal)
    np.divide(probs, rowtotal, out=probs)


class _Stream:
    """Per-stream bookkeeping the loop needs between frames."""

    def __init__(self, index: int, source: Source, stop: threading.Event) -> None:
        self.index = index
        self.source = source
        self.mailbox: Optional[Mailbox] = None
        self.capture: Optional[Capture] = None
        self.pool = FeedPool(8, stop)
        self.last_index = -1
        self.last_timestamp: Optional[float] = None
        self.pending_drops = 0  # frames skipped since this stream's last result
        self.frames = 0
        self.since_reset = 0
        self.label_run = 0
        self.last_label: Optional[str] = None
        self.finished = False
        self.fresh = True  # the carried state is zero (nothing stepped since the start or a reset)

    def total_drops(self) -> int:
        """Frames replaced in the mailbox plus frames a paced (realtime) source skipped itself."""
        return (self.mailbox.dropped if self.mailbox is not None else 0) + self.source.dropped


class Pipeline:
    """The loop over `engines` (which carry their manifest and window) fed by `sources`."""

    def __init__(self, engines: EngineSet, sources: Sequence[Source], config: PipelineConfig = PipelineConfig()) -> None:
        if not sources:
            raise UsageError("a pipeline needs at least one source")
        if len(sources) > engines.max_batch:
            raise UsageError(f"the engines were opened for {engines.max_batch} stream(s), {len(sources)} sources given "
                             "(open_engines(..., num_streams=N))")
        manifest = self.manifest = engines.manifest
        self.engines = engines
        self.config = config
        self.labels = manifest.labels
        self.window = engines.window
        self.stride = manifest.stride if config.stride is None else config.stride
        if self.stride < 1:
            raise UsageError(f"the stride must be at least 1 frame, got {self.stride}")
        self._stop = threading.Event()
        self.streams = [_Stream(i, source, self._stop) for i, source in enumerate(sources)]
        n = len(self.streams)
        self.stats = RunStats(n)
        self.preprocess = Preprocessor(manifest.input)
        self.cnn = engines.backbone
        self.cnn_in = self.cnn.input(self.cnn.input_names[0])
        self.cnn_out = self.cnn.output(self.cnn.output_names[0])
        self.steps = StepRunner(engines.gru_step, n)
        self.steps.reset()  # engines outlive pipelines: every run starts from a zero state
        self.window_runner = WindowRunner(engines.gru_window, self.window, engines.window_is_sequence)
        self.rings = StreamWindows(n, self.window, self.stride, manifest.feature_size)
        # Refined from the sources' fps in start() when not given.
        self.budget = 1.0 / DEFAULT_FPS if config.budget is None else config.budget
        self._doorbell = threading.Event()
        self._clock = LoopClock()
        self._reset_requests: set[Optional[int]] = set()
        self._reset_lock = threading.Lock()
        self._epoch_offset = time.time() - time.perf_counter()
        # Preallocated per-batch scratch: row sums for the finite check, softmax output.
        self._rowsum = np.zeros(n, np.float32)
        self._finite = np.zeros(n, bool)
        self._probs = np.zeros((n, manifest.num_classes), np.float32)
        self._rowmax = np.zeros((n, 1), np.float32)
        self._rowtotal = np.zeros((n, 1), np.float32)
        self._stage = self.stats.stages  # recorders by stage name
        self._deadline = DeadlineMisses(self.stats, self.budget)
        self._started = False
        self.model = manifest.identity()
        # Observers (preview, recorder, clips): with none attached the loop only tests this tuple.
        self._observers: tuple[Observer, ...] = ()

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
                    self._apply_capture_errors()  # a source that ended by failing is an error, not an end
                    break
                if self.config.batch_streams or len(batch) == 1:
                    if batch:
                        yield from self._process(batch)
                else:
                    for item in batch:
                        yield from self._process([item])
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
            self.budget = self._deadline.budget = 1.0 / (self._source_fps() or DEFAULT_FPS)
        if self._observers:
            initial = self.export_state()
            for observer in self._observers:
                observer.begin(initial)
        for stream in self.streams:
            policy = self.config.drop_policy or (DropPolicy.NEWEST if stream.source.live else DropPolicy.NONE)
            stream.mailbox = Mailbox(policy, self.config.queue_frames, on_drop=self._dropper(stream), doorbell=self._doorbell)
            if self.config.threaded:
                if policy is DropPolicy.NONE:
                    stream.pool.mailbox = stream.mailbox
                    # Files only: a live source's frames age in its driver while its read is held back,
                    # unseen by the capture timestamp, so a live source is read as soon as there is room.
                    stream.pool.clock = self._clock if self.config.paced_decode and not stream.source.live else None
                stream.capture = Capture(stream.source, stream.mailbox, stream.pool, self._stop, self.config.backoff,
                                         self.config.max_frames, counters=self.stats.streams[stream.index])
                stream.capture.start()

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and end (safe from any thread or signal handler)."""
        self._stop.set()
        self._doorbell.set()

    def add_observer(self, observer: Observer) -> None:
        """Attach an observer (before the run starts): it sees every frame, step and result."""
        if self._started:
            raise UsageError("observers are attached before the run starts")
        self._observers = (*self._observers, observer)

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
            self._fold_drops(stream)
            self.stats.streams[stream.index].missing = stream.source.missing_frames
            try:
                stream.source.close()
            except Exception:  # noqa: BLE001 - closing a broken device must not mask the real error
                pass

    @property
    def num_streams(self) -> int:
        return len(self.streams)

    # State for checkpoints --------------------------------------------------------------
    def export_state(self) -> PipelineState:
        """The carried state now (call from the loop thread, or after the loop ended)."""
        limit = self.config.max_frames
        streams = []
        for stream, ring in zip(self.streams, self.rings.rings):
            # A stream stopped by max_frames has more to read; only a source that ran out has ended.
            ended = stream.finished and (limit is None or stream.frames < limit)
            streams.append(StreamState(
                name=stream.source.name, live=bool(stream.source.live), position=stream.last_index + 1,
                finished=bool(ended), ring=ring.snapshot(), pushed=int(ring.pushed),
            ))
        return PipelineState(self.steps.state(), tuple(streams))

    def import_state(self, state: PipelineState) -> dict[int, int]:
        """Carry on from `state` (before the run starts): every recurrent state, windows, and for each
        file source that had got somewhere, its position (the frames before it are read and skipped).
        Returns {stream: position resumed at} for the file sources that skipped ahead."""
        expected = {name: (self.num_streams, *shape[1:]) for name, shape in self.engines.gru_step.state_shapes().items()}
        states = {name: np.asarray(value, np.float32) for name, value in state.states.items()}
        shapes = {name: value.shape for name, value in states.items()}
        if shapes != expected or len(state.streams) != self.num_streams:
            raise UsageError(f"state has {_describe(shapes)} for {len(state.streams)} stream(s), expected {_describe(expected)}")
        self.steps.load(states)
        resumed: dict[int, int] = {}
        for stream, ring, saved in zip(self.streams, self.rings.rings, state.streams):
            ring.restore(np.asarray(saved.ring, np.float32), saved.pushed)
            stream.fresh = False
            if not saved.live and saved.position > 0:
                skipped = stream.source.skip(saved.position)
                stream.last_index = skipped - 1  # no "dropped" frames for the ones skipped
                resumed[stream.index] = skipped
        return resumed

    # Collection -------------------------------------------------------------------------
    def _collect(self) -> Optional[list[tuple[_Stream, Frame]]]:
        """Ready frames, at most one per stream; [] on a quiet poll; None when every source ended."""
        if not self.config.threaded:
            return self._read_inline()
        self._clock.batch_done(time.perf_counter())
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
        # Before the first get: a capture thread woken by the room it leaves must see this batch's time.
        self._clock.batch_taken(time.perf_counter())
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
            # Finished streams too: a capture thread records its error before closing the mailbox.
            if capture is not None and capture.error is not None:
                error, capture.error = capture.error, None
                # A source that cannot be read keeps its exit code (4); anything else failed the run (1).
                kind = SourceError if isinstance(error, SourceError) and not isinstance(error, SourceReadError) else PipelineError
                raise kind(f"source {stream.source.name} failed: {error}") from error

    def _dropper(self, stream: _Stream):
        return lambda frame: stream.pool.give(frame.image)

    # Processing -------------------------------------------------------------------------
    def _process(self, batch: list[tuple[_Stream, Frame]]) -> Iterator[Result]:
        self._apply_reset_requests()
        stats = self.stats
        wait_stage, preprocess_stage, cnn_stage = self._stage["capture_wait"], self._stage["preprocess"], self._stage["cnn"]
        t_start = time.perf_counter()
        for row, (stream, frame) in enumerate(batch):
            self._check_continuity(stream, frame)
            wait_stage.add(t_start - frame.timestamp)
            t0 = time.perf_counter()
            self.preprocess(frame.image, self.cnn_in[row])
            preprocess_stage.add(time.perf_counter() - t0)
            for observer in self._observers:
                observer.frame(stream.index, frame)
            stream.pool.give(frame.image)
        n = len(batch)
        stats.batches += 1
        t0 = time.perf_counter()
        self.cnn.run(n)
        t_cnn = time.perf_counter() - t0
        features = self.cnn_out
        good = self._finite_rows(features, n)
        now = time.perf_counter()
        stats.last_frame_time = now
        if stats.started is None:
            stats.started = now
        for row, (stream, _frame) in enumerate(batch):
            cnn_stage.add(t_cnn)
            stats.streams[stream.index].frames += 1
            stream.frames += 1
            if not good[row]:
                self._nonfinite(stream)
            self._fold_drops(stream)
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
        ok = self._finite_rows(logits, len(rows))
        probs = self._softmax(logits, ok)
        gru_stage = self._stage["gru"]
        observers = self._observers
        states = self._states_now() if observers else None
        for i, row in enumerate(rows):
            stream, frame = batch[row]
            gru_stage.add(t_gru)
            fresh, stream.fresh = stream.fresh, False
            if not ok[i]:
                self._nonfinite(stream)
                continue
            scored = stream.label_run >= self.window and stream.since_reset >= self.window
            result = self._result(stream, frame, "step", probs[i], scored)
            if observers:
                record = StepRecord(result, features[row], {name: rows_[stream.index] for name, rows_ in states.items()},
                                    fresh, scored, self.model)
                for observer in observers:
                    observer.step(record)
                    observer.result(result)
            yield result

    def _emit_windows(self, batch, rows: list[int], features: np.ndarray) -> Iterator[Result]:
        due = [row for row in rows if self.rings.push(batch[row][0].index, features[row])]
        for start in range(0, len(due), self.window_runner.max_batch):
            chunk = due[start : start + self.window_runner.max_batch]
            windows = [self.rings.rings[batch[row][0].index].window() for row in chunk]
            t0 = time.perf_counter()
            logits = self.window_runner.run(windows)
            t_gru = time.perf_counter() - t0
            ok = self._finite_rows(logits, len(chunk))
            probs = self._softmax(logits, ok)
            for i, row in enumerate(chunk):
                stream, frame = batch[row]
                self.stats.stages["gru"].add(t_gru)
                if not ok[i]:
                    self._nonfinite(stream)
                    continue
                result = self._result(stream, frame, "window", probs[i], stream.label_run >= self.window)
                for observer in self._observers:
                    observer.result(result)
                yield result

    def _result(self, stream: _Stream, frame: Frame, mode: str, probs: np.ndarray, scorable: bool) -> Result:
        values = probs.tolist()
        best = values.index(max(values))
        label = self.labels[best]
        counters = self.stats.streams[stream.index]
        dropped, stream.pending_drops = stream.pending_drops, 0
        counters.dropped = stream.total_drops()
        latency = time.perf_counter() - frame.timestamp
        self._stage["end_to_end"].add(latency)
        self.stats.stream_latency[stream.index].add(latency)
        counters.results += 1
        self._deadline.judge(latency, counters)
        if self.config.score and frame.label is not None and scorable:
            self.stats.score(mode, label == frame.label)
        return Result(
            stream=stream.index,
            frame_index=frame.index,
            capture_time=frame.timestamp + self._epoch_offset,
            mode=mode,
            label=label,
            score=values[best],
            probabilities=tuple(values),
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
        stream.fresh = True
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

    def _states_now(self) -> dict[str, np.ndarray]:
        """The step engine's states [max_batch, H] by input name (views on CPU backends)."""
        return self.steps.engine.state()

    def _nonfinite(self, stream: _Stream) -> None:
        self.stats.streams[stream.index].nonfinite += 1
        self.reset_stream(stream.index, "non-finite output")

    # Per-batch arithmetic on a few rows: the ufuncs are called directly (np.sum and np.max go
    # through Python wrappers that cost more than the arithmetic), into preallocated scratch.
    def _finite_rows(self, values: np.ndarray, n: int) -> np.ndarray:
        # NaN and Inf survive a sum, so one reduction per row checks the whole row.
        np.add.reduce(values[:n], axis=1, out=self._rowsum[:n])
        return np.isfinite(self._rowsum[:n], out=self._finite[:n])

    def _softmax(self, logits: np.ndarray, finite: np.ndarray) -> np.ndarray:
        n = len(logits)
        probs, rowmax, rowtotal = self._probs[:n], self._rowmax[:n], self._rowtotal[:n]
        if finite.all():  # finite rows minus their maximum cannot overflow: no error-state switch needed
            _softmax_into(logits, probs, rowmax, rowtotal)
        else:  # the rows that are not finite are skipped by the caller; compute them quietly
            with np.errstate(invalid="ignore", over="ignore"):
                _softmax_into(logits, probs, rowmax, rowtotal)
        return probs

    def _fold_drops(self, stream: _Stream) -> None:
        # Capture threads count reconnects and corrupt frames into the stats themselves; drops
        # are spread over the mailbox and the source, so they are summed here.
        self.stats.streams[stream.index].dropped = stream.total_drops()

    def _source_fps(self) -> Optional[float]:
        rates = [s.source.fps for s in self.streams if s.source.fps]
        return max(rates) if rates else None
