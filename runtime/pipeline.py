"""The scheduling loop: sources -> preprocess -> CNN -> ring buffers / GRU -> results.

`Pipeline` is the Python API the CLI is a thin layer over: iterate it to get `Result`s.

    with Pipeline(open_engines(load_manifest("engines")), [open_source("demo")], PipelineConfig()) as run:
        for result in run:
            print(result.label)

Per iteration the loop takes the frames that are ready (one per stream at most, a batch
formed within `collect_timeout`), copies them into the CNN's input rows, runs the CNN
once for the batch (`submit`, then `collect` its features: native TensorRT runs it on its
CUDA stream meanwhile), steps the GRU once for the batch ([N,H] state, one row per
stream), and emits results. Capture threads decode and preprocess the next frames
meanwhile (`capture.CapturePreprocess`), so the loop thread does only engine calls and
bookkeeping; the serial loop (`threaded=False`) preprocesses in the loop thread. Frames a
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

Why one file of ~780 lines: it holds the loop and every piece of state the loop owns
(`_Stream`, the ring buffers, the carried GRU state, the reset and continuity policy),
and the changes to that state made while it runs (`swap_engines` with its probation,
`add_source`, `remove_source`), which other threads only request and the loop applies
between two batches. Keeping them together is what lets nothing outside reach into them:
observers get `export_state()`/`import_state()` and `stats`. The parts that are not the
loop's state live beside it (capture pacing in capture.py, deadline tracking in stats.py;
deciding, loading and smoke-running a new set in service/swap.py, reading the sources
file in service/streams.py).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from runtime import validation as valid
from runtime.backends import EngineSet
from runtime.capture import Backoff, Capture, CapturePreprocess, FeedPool, LoopClock
from runtime.errors import EdgeRunError, PipelineError, SourceError, SourceReadError, UsageError
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
    # Streams come and go while the run goes on (add_source/remove_source): with every stream
    # removed the run waits for one to be added (it still ends when all its streams have ended).
    open_ended: bool = False
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


@dataclass
class _Probation:
    """A swapped-in engine set's first batches, with what switching back needs."""

    old: EngineSet
    states: dict[str, np.ndarray]  # the old set's carried state at the switch
    kept_windows: bool  # the windows went on into the new set (same backbone): they stay on a switch back
    batches_left: int
    on_done: Optional[Callable[[EngineSet, Optional[str]], None]]
    failure: Optional[str] = None
    new: Optional[EngineSet] = None


class _Stream:
    """Per-stream bookkeeping the loop needs between frames."""

    def __init__(self, index: int, source: Source, stop: threading.Event, slot: int) -> None:
        self.index = index  # the stream's number: stable for the run, never reused
        self.slot = slot  # its row in the GRU state and its ring buffer: reused after a removal
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
        if not sources and not config.open_ended:
            raise UsageError("a pipeline needs at least one source")
        if len(sources) > engines.max_batch:
            raise UsageError(f"the engines were opened for {engines.max_batch} stream(s), {len(sources)} sources given "
                             "(open_engines(..., num_streams=N))")
        self.config = config
        self._stop = threading.Event()
        self.streams = [_Stream(i, source, self._stop, slot=i) for i, source in enumerate(sources)]
        # Open-ended runs have a slot (a state row) for every stream the engines take; the others one per source.
        self.capacity = engines.max_batch if config.open_ended else len(self.streams)
        self._free_slots = list(range(len(self.streams), self.capacity))
        self._next_number = len(self.streams)
        self.stats = RunStats(len(self.streams))
        self._use_engines(engines)
        self.steps.reset()  # engines outlive pipelines: every run starts from a zero state
        # Refined from the sources' fps in start() when not given.
        self.budget = 1.0 / DEFAULT_FPS if config.budget is None else config.budget
        self._doorbell = threading.Event()
        self._clock = LoopClock()
        self._reset_requests: set[Optional[int]] = set()
        self._reset_lock = threading.Lock()
        self._changes: list[Callable[[], None]] = []  # run-time changes, applied by the loop between batches
        self._changes_lock = threading.Lock()
        self._probation: Optional[_Probation] = None  # a swapped-in set's first batches
        self._epoch_offset = time.time() - time.perf_counter()
        self._stage = self.stats.stages  # recorders by stage name
        self._deadline = DeadlineMisses(self.stats, self.budget)
        self._started = False
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
                if self._changes:
                    self._apply_changes()
                if self._probation is not None:
                    self._judge_probation()
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
            self._start_capture(stream)

    def _start_capture(self, stream: _Stream) -> None:
        policy = self.config.drop_policy or (DropPolicy.NEWEST if stream.source.live else DropPolicy.NONE)
        stream.mailbox = Mailbox(policy, self.config.queue_frames, on_drop=self._dropper(stream), doorbell=self._doorbell)
        if self.config.threaded:
            if policy is DropPolicy.NONE:
                stream.pool.mailbox = stream.mailbox
                # Files only: a live source's frames age in its driver while its read is held back,
                # unseen by the capture timestamp, so a live source is read as soon as there is room.
                stream.pool.clock = self._clock if self.config.paced_decode and not stream.source.live else None
            prepare = CapturePreprocess(Preprocessor(self.manifest.input), self.config.queue_frames + 2)
            stream.capture = Capture(stream.source, stream.mailbox, stream.pool, self._stop, self.config.backoff,
                                     self.config.max_frames, counters=self.stats.streams[stream.index], prepare=prepare)
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
            self._close_stream(stream)

    def _close_stream(self, stream: _Stream) -> None:
        if stream.mailbox is not None:
            stream.mailbox.close()
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
        for stream in self.streams:
            ring = self.rings.rings[stream.slot]
            # A stream stopped by max_frames has more to read; only a source that ran out has ended.
            ended = stream.finished and (limit is None or stream.frames < limit)
            streams.append(StreamState(
                name=stream.source.name, live=bool(stream.source.live), position=stream.last_index + 1,
                finished=bool(ended), ring=ring.snapshot(), pushed=int(ring.pushed),
            ))
        rows = [s.slot for s in self.streams]  # a stream's state row is its slot, not its number
        return PipelineState({name: value[rows] for name, value in self.steps.state().items()}, tuple(streams))

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
        for stream, saved in zip(self.streams, state.streams):
            ring = self.rings.rings[stream.slot]
            ring.restore(np.asarray(saved.ring, np.float32), saved.pushed)
            stream.fresh = False
            if not saved.live and saved.position > 0:
                skipped = stream.source.skip(saved.position)
                stream.last_index = skipped - 1  # no "dropped" frames for the ones skipped
                resumed[stream.index] = skipped
        return resumed

    # Run-time changes: requested from any thread, applied by the loop between two batches -----
    def swap_engines(self, engines: EngineSet, keep_state: bool, why: str,
                     on_done: Optional[Callable[[EngineSet, Optional[str]], None]] = None) -> None:
        """Switch to `engines` before the next batch. With `keep_state` the carried GRU state and
        the windows go on into the new engines (the caller has checked they mean the same there);
        otherwise every stream restarts from a zero state, counted as a reset for `why`.

        The new set is on probation for its first `window` batches: a NaN or Inf from it there
        switches back to the old set, with the state the old set had at the switch.
        `on_done(retired, failure)` runs on the loop thread when that is decided: `failure` None
        and `retired` the old set (the switch holds), or the reason and the new set (rolled back).
        The retired set is the caller's to close."""
        if engines.max_batch != self.engines.max_batch:
            raise UsageError(f"the new engines take {engines.max_batch} stream(s), the running ones {self.engines.max_batch}")
        self._request(lambda: self._swap(engines, keep_state, why, on_done))

    def add_source(self, source: Source, on_refused: Optional[Callable[[int, str], None]] = None) -> int:
        """Add a stream fed by `source` (opened here if it is not yet) before the next batch; returns
        its number, never used before in this run. It starts from a zero state. When every slot the
        engines have is taken, the stream is refused: `on_refused(number, why)` hears why and the run goes on."""
        with self._changes_lock:
            number, self._next_number = self._next_number, self._next_number + 1
        source.stream = number
        self._request(lambda: self._add(number, source, on_refused))
        return number

    def remove_source(self, number: int) -> None:
        """End stream `number` before the next batch: its capture stops, its source closes, its state
        and window are dropped (its slot is zeroed for the next stream). Its counters stay in `stats`."""
        self._request(lambda: self._remove(number))

    @property
    def stream_numbers(self) -> tuple[int, ...]:
        return tuple(s.index for s in self.streams)

    def _request(self, change: Callable[[], None]) -> None:
        with self._changes_lock:
            self._changes.append(change)
        self._doorbell.set()

    def _apply_changes(self) -> None:
        with self._changes_lock:
            changes, self._changes = self._changes, []
        for change in changes:
            change()

    def _use_engines(self, engines: EngineSet, keep_windows: bool = False) -> None:
        """Everything the loop derives from its engines, (re)made for `engines`."""
        manifest = self.manifest = engines.manifest
        self.engines = engines
        self.model = manifest.identity()  # what observers' step records name (a recording chunk holds one model)
        self.model_id = manifest.model_id()
        self.labels = manifest.labels
        self.window = engines.window
        self.stride = manifest.stride if self.config.stride is None else self.config.stride
        if self.stride < 1:
            raise UsageError(f"the stride must be at least 1 frame, got {self.stride}")
        self.preprocess = Preprocessor(manifest.input)
        for stream in self.streams:  # capture threads preprocess for the new input from their next frame on
            if stream.capture is not None and stream.capture.prepare is not None:
                stream.capture.prepare.preprocess = Preprocessor(manifest.input)
        self.cnn = engines.backbone
        self._cnn_input = self.cnn.input_names[0]  # its buffer is asked for per batch: a double-buffered engine alternates
        self.cnn_out = self.cnn.output(self.cnn.output_names[0])
        self.steps = StepRunner(engines.gru_step, self.capacity)
        self.window_runner = WindowRunner(engines.gru_window, self.window, engines.window_is_sequence)
        if not keep_windows:
            self.rings = StreamWindows(self.capacity, self.window, self.stride, manifest.feature_size)
        # Preallocated per-batch scratch: row sums for the finite check, softmax output.
        n = self.capacity
        self._rowsum = np.zeros(n, np.float32)
        self._finite = np.zeros(n, bool)
        self._probs = np.zeros((n, manifest.num_classes), np.float32)
        self._rowmax = np.zeros((n, 1), np.float32)
        self._rowtotal = np.zeros((n, 1), np.float32)

    def _swap(self, engines: EngineSet, keep_state: bool, why: str, on_done) -> None:
        if self._probation is not None:  # a swap during another's probation: that one holds
            self._end_probation(None)
        states = self.steps.state()
        self._probation = _Probation(self.engines, states, keep_state, self.window, on_done, new=engines)
        self._use_engines(engines, keep_windows=keep_state)
        if keep_state:
            self.steps.load(states)
        else:
            self.steps.reset()
            for stream in self.streams:
                self.reset_stream(stream.index, why)

    def _judge_probation(self) -> None:
        probation = self._probation
        if probation.failure is not None:
            self._use_engines(probation.old, keep_windows=probation.kept_windows)
            self.steps.load(probation.states)
            self._end_probation(probation.failure)
        elif probation.batches_left <= 0:
            self._end_probation(None)

    def _end_probation(self, failure: Optional[str]) -> None:
        probation, self._probation = self._probation, None
        retired = probation.new if failure is not None else probation.old
        if probation.on_done is not None:
            probation.on_done(retired, failure)

    def _add(self, number: int, source: Source, on_refused) -> None:
        def refuse(why: str) -> None:
            (on_refused or (lambda _number, text: log.error("%s", text)))(number, why)

        if self._observers:  # the preview, recorder and clips were set up for the streams at start
            refuse(f"stream {number} ({source.name}) not added: streams cannot be added while the live preview, "
                   "recording or event clips run (they were set up for the streams at start)")
            source.close()
            return
        if not self._free_slots:
            refuse(f"stream {number} ({source.name}) not added: the engines take at most {self.capacity} stream(s) "
                   f"at once (edge-export --max-batch N builds them for more)")
            source.close()
            return
        try:
            if not source.is_open:
                source.open()
        except EdgeRunError as exc:
            refuse(f"stream {number} ({source.name}) not added: {exc}")
            return
        slot = self._free_slots.pop(0)
        stream = _Stream(number, source, self._stop, slot)
        self.steps.reset(slot)
        self.rings.reset(slot)
        while len(self.stats.streams) <= number:  # numbers of refused streams keep their (empty) counters
            self.stats.add_stream()
        self.streams.append(stream)
        if self._started:
            self._start_capture(stream)
        log.warning("stream %d added: %s", number, source.name)

    def _remove(self, number: int) -> None:
        stream = next((s for s in self.streams if s.index == number), None)
        if stream is None:
            return
        self.streams.remove(stream)
        self._close_stream(stream)
        self.steps.reset(stream.slot)
        self.rings.reset(stream.slot)
        self._free_slots.append(stream.slot)
        self._free_slots.sort()
        log.warning("stream %d removed: %s", number, stream.source.name)

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
            if self._changes:
                return []  # the loop applies them before it waits again
            active = [s for s in self.streams if not s.finished]
            if not self.streams and self.config.open_ended:
                self._doorbell.wait(0.1)  # every stream was removed: wait for one to be added, or for stop()
                return []
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
        if not batch and all(s.finished for s in self.streams) and (self.streams or not self.config.open_ended):
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
        return lambda frame: self._release(stream, frame)

    @staticmethod
    def _release(stream: _Stream, frame: Frame) -> None:
        """Hand a frame's buffers back to the stream's capture thread."""
        stream.pool.give(frame.image)
        if frame.tensor is not None and stream.capture is not None and stream.capture.prepare is not None:
            stream.capture.prepare.pool.give(frame.tensor)

    # Processing -------------------------------------------------------------------------
    def _process(self, batch: list[tuple[_Stream, Frame]]) -> Iterator[Result]:
        self._apply_reset_requests()
        stats = self.stats
        wait_stage, preprocess_stage, cnn_stage = self._stage["capture_wait"], self._stage["preprocess"], self._stage["cnn"]
        t_start = time.perf_counter()
        cnn_in = self.cnn.input(self._cnn_input)
        for row, (stream, frame) in enumerate(batch):
            self._check_continuity(stream, frame)
            wait_stage.add(t_start - frame.timestamp)
            if frame.tensor is not None and frame.prepared_for == self.preprocess.spec:  # preprocessed by its capture thread
                np.copyto(cnn_in[row], frame.tensor)
                preprocess_stage.add(frame.preprocess_seconds)
            else:
                t0 = time.perf_counter()
                self.preprocess(frame.image, cnn_in[row])
                preprocess_stage.add(time.perf_counter() - t0)
            for observer in self._observers:
                observer.frame(stream.index, frame)
            self._release(stream, frame)
        n = len(batch)
        stats.batches += 1
        if self._probation is not None:
            self._probation.batches_left -= 1
        t0 = time.perf_counter()
        self.cnn.submit(n)
        self.cnn.collect()
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
        logits = self.steps.step([batch[row][0].slot for row in rows])
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
                record = StepRecord(result, features[row], {name: rows_[stream.slot] for name, rows_ in states.items()},
                                    fresh, scored, self.model)
                for observer in observers:
                    observer.step(record)
                    observer.result(result)
            yield result

    def _emit_windows(self, batch, rows: list[int], features: np.ndarray) -> Iterator[Result]:
        due = [row for row in rows if self.rings.push(batch[row][0].slot, features[row])]
        for start in range(0, len(due), self.window_runner.max_batch):
            chunk = due[start : start + self.window_runner.max_batch]
            windows = [self.rings.rings[batch[row][0].slot].window() for row in chunk]
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
            model=self.model_id,
            labels=self.labels,
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
        """Zero the carried state and empty the window of stream number `index` (loop thread only)."""
        stream = next(s for s in self.streams if s.index == index)
        self.steps.reset(stream.slot)
        self.rings.reset(stream.slot)
        stream.since_reset = 0
        stream.fresh = True
        resets = self.stats.streams[index].resets
        resets[reason] = resets.get(reason, 0) + 1

    def _apply_reset_requests(self) -> None:
        if not self._reset_requests:
            return
        with self._reset_lock:
            requests, self._reset_requests = self._reset_requests, set()
        numbers = {s.index for s in self.streams}
        targets = sorted(numbers) if None in requests else sorted(r for r in requests if r in numbers)
        for index in targets:
            self.reset_stream(index, "api")
            next(s for s in self.streams if s.index == index).label_run = 0

    def _states_now(self) -> dict[str, np.ndarray]:
        """The step engine's states [max_batch, H] by input name (views on CPU backends)."""
        return self.steps.engine.state()

    def _nonfinite(self, stream: _Stream) -> None:
        if self._probation is not None and self._probation.failure is None:
            self._probation.failure = f"non-finite output on stream {stream.index} in its first {self.window} batches"
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
