"""Capture threads: read a source, hand frames to the loop, survive live-source faults.

One thread per source decodes into a small pool of reusable frame buffers and posts
frames into the stream's mailbox, so decoding overlaps inference (OpenCV and
onnxruntime release the GIL). A live source that fails (read error, device unplugged,
stream ended) is reopened with exponential backoff and jitter; a finite source (a file, a
folder or the demo, even when paced like a camera) that ends closes the mailbox, which
ends that stream cleanly: replaying it from frame 0 would count a reconnect and process
its frames twice.

An episode is a loss and the reconnects until the source has delivered frames for
`Backoff.stable_after` seconds again. It is logged once when it starts and once when the
source is back; a source that keeps failing right after each reopen stays in the same
episode, so the delay keeps growing instead of restarting at `initial`: a flapping
camera never becomes a tight reconnect loop or a flood of log lines. Every loss is
counted (`reconnects`); the loop resets the stream's state when the reopened source's
frame index restarts.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from runtime.frame import Frame
from runtime.mailbox import Mailbox
from runtime.preprocess import Preprocessor
from runtime.sources import Source, is_valid_image
from runtime.stats import StreamCounters

log = logging.getLogger("edge_run.capture")


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.2  # +/- fraction, so several cameras do not retry in lock-step
    stable_after: float = 10.0  # seconds of frames after a reopen that end an episode

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.maximum, self.initial * self.factor ** attempt)
        return base * (1.0 + rng.uniform(-self.jitter, self.jitter))


class FramePool:
    """Free frame buffers handed back by the loop once a frame is preprocessed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: "queue.SimpleQueue[np.ndarray]" = queue.SimpleQueue()

    def take(self) -> Optional[np.ndarray]:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return None  # the source allocates; the buffer joins the pool when released

    def give(self, image: np.ndarray) -> None:
        if self._free.qsize() < self.capacity:
            self._free.put(image)


class LoopClock:
    """When the loop will next come for frames: the time it took its last batch plus its
    smoothed busy time per batch (processing and result hand-out, not waiting for frames,
    so a late frame does not push the estimate later still)."""

    SMOOTHING = 0.1  # weight of the newest sample in the running estimate

    def __init__(self) -> None:
        self.took: Optional[float] = None  # perf_counter when the loop took its last batch
        self.busy = 0.0

    def batch_taken(self, now: float) -> None:
        self.took = now

    def batch_done(self, now: float) -> None:
        if self.took is not None:
            sample = now - self.took
            self.busy = sample if not self.busy else self.busy + self.SMOOTHING * (sample - self.busy)
            self.took = None  # the loop is waiting for frames now: nobody should hold back

    def next_need(self) -> Optional[float]:
        """Read from capture threads: one read of `took`, which the loop thread may clear meanwhile."""
        took, busy = self.took, self.busy
        return None if took is None or not busy else took + busy


class FeedPool(FramePool):
    """A stream's frame buffers; under DropPolicy.NONE, also when its capture thread may decode.

    The capture thread calls `take` before each read. When the stream back-pressures
    (`mailbox` set), `take` first waits for room in the mailbox, so the source is held back
    before it decodes rather than after: at most `queue_frames` decoded frames exist ahead
    of the loop. With a `clock` (paced decoding), it then waits until the next frame's
    decode would end just before the loop comes for it, so a frame does not age for a whole
    loop cycle between its capture and its processing: decoding still overlaps inference,
    and latency stays near the serial loop's. A source slower than the loop is never delayed.
    """

    SMOOTHING = 0.1
    MARGIN = 0.0005  # seconds of slack, plus a quarter of the decode time, against jitter

    def __init__(self, capacity: int, stop: threading.Event) -> None:
        super().__init__(capacity)
        self.mailbox: Optional[Mailbox] = None  # set for capture threads under DropPolicy.NONE
        self.clock: Optional[LoopClock] = None  # set for paced decoding
        self._stop = stop
        self._decode = 0.0  # smoothed time from `take` returning to the next `take` (read + hand-over)
        self._returned: Optional[float] = None

    def take(self) -> Optional[np.ndarray]:
        mailbox = self.mailbox
        if mailbox is not None:
            if self._returned is not None:
                work = time.perf_counter() - self._returned
                self._decode = work if not self._decode else self._decode + self.SMOOTHING * (work - self._decode)
            while not mailbox.wait_for_room(0.1):
                if mailbox.closed or self._stop.is_set():
                    break
            need = self.clock.next_need() if self.clock is not None else None
            if need is not None:
                delay = need - 1.25 * self._decode - self.MARGIN - time.perf_counter()
                if delay > 0:
                    self._stop.wait(min(delay, self.clock.busy))
            self._returned = time.perf_counter()
        return super().take()


class CapturePreprocess:
    """Preprocessing in a stream's capture thread: each decoded frame leaves with its network input.

    The inference thread then only copies the finished row into the engine's input (and runs
    the engines), while capture threads decode and preprocess the next frames in parallel:
    OpenCV releases the GIL in both. One per stream (a Preprocessor's scratch planes are its
    own); input buffers come from a pool the loop refills as it consumes them. The frame
    carries how long its preprocessing took, so the loop records it for the frames it
    processes, as when it preprocessed them itself (a dropped frame's time is not a stage's),
    and the input it was made for: after a hot swap to engines with another input, the loop
    preprocesses the frames still in flight itself (`preprocess` is replaced for the next).
    """

    def __init__(self, preprocess: Preprocessor, capacity: int) -> None:
        self.preprocess = preprocess
        self.pool = FramePool(capacity)

    def __call__(self, frame: Frame) -> Frame:
        tensor = self.pool.take()
        if tensor is None or tensor.shape != self.preprocess.input_shape:  # the first frames, or after a swap of input size
            tensor = np.empty(self.preprocess.input_shape, np.float32)
        started = time.perf_counter()
        self.preprocess(frame.image, tensor)
        return dataclasses.replace(frame, tensor=tensor, preprocess_seconds=time.perf_counter() - started,
                                   prepared_for=self.preprocess.spec)


class Capture(threading.Thread):
    def __init__(
        self,
        source: Source,
        mailbox: Mailbox,
        pool: FramePool,
        stop: threading.Event,
        backoff: Backoff = Backoff(),
        max_frames: Optional[int] = None,
        counters: Optional[StreamCounters] = None,
        prepare: Optional[CapturePreprocess] = None,
    ) -> None:
        """`counters`: the stream's counters in the run's stats; this thread adds its reconnects and
        corrupt frames there as they happen, so every reader sees them without asking the thread.
        `prepare`: preprocess each frame here, before it is handed to the loop."""
        super().__init__(name=f"capture-{source.name}", daemon=True)
        self.source = source
        self.mailbox = mailbox
        self.pool = pool
        self.stop_event = stop
        self.backoff = backoff
        self.max_frames = max_frames
        self.counters = counters if counters is not None else StreamCounters()
        self.prepare = prepare
        self.produced = 0
        self.error: Optional[BaseException] = None  # a fatal error, re-raised by the loop
        self._rng = random.Random(hash(source.name) & 0xFFFF)
        self._attempt = 0  # backoff step the next reopen waits at (carried within an episode)
        self._back_at: Optional[float] = None  # monotonic time the source last came back
        self._episode_losses = 0

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop thread, not lost
            self.error = exc
        finally:
            self.mailbox.close()

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            if self.max_frames is not None and self.produced >= self.max_frames:
                return
            try:
                frame = self.source.read(self.pool.take())
            except Exception as exc:
                if self.source.finite:
                    raise
                self._recover(f"read failed: {exc}")
                continue
            if frame is None:
                if self.source.finite:
                    return
                self._recover("stream ended")
                continue
            if not is_valid_image(frame.image):
                self.counters.corrupt += 1
                continue
            if self.prepare is not None:
                frame = self.prepare(frame)
            self._settle()
            self.produced += 1
            while not self.mailbox.put(frame, timeout=0.1):
                if self.stop_event.is_set() or self.mailbox.closed:
                    return

    def _recover(self, reason: str) -> None:
        """Reopen a failed live source with backoff until it works or the run stops."""
        self.counters.reconnects += 1
        self._episode_losses += 1
        if self._episode_losses == 1:
            self._attempt = 0
            log.warning("source %s lost (%s); reconnecting with backoff", self.source.name, reason)
        else:  # failed again soon after coming back: same episode, keep backing off
            log.debug("source %s lost again (%s), %d losses this episode", self.source.name, reason, self._episode_losses)
        self._back_at = None
        started = time.monotonic()
        while not self.stop_event.is_set():
            try:
                self.source.close()
            except Exception:  # noqa: BLE001 - a broken device may fail to close too
                pass
            delay = self.backoff.delay(self._attempt, self._rng)
            self._attempt += 1
            if self.stop_event.wait(delay):
                return
            try:
                self.source.open()
            except Exception as exc:  # noqa: BLE001 - SourceError, or whatever a driver raises
                log.debug("reopen %s attempt %d failed: %s", self.source.name, self._attempt, exc)
                continue
            self._back_at = time.monotonic()
            if self._episode_losses == 1:
                log.warning("source %s back after %.1f s", self.source.name, self._back_at - started)
            return

    def _settle(self) -> None:
        """A good frame: after `stable_after` seconds of them the episode is over."""
        if self._back_at is not None and time.monotonic() - self._back_at >= self.backoff.stable_after:
            if self._episode_losses > 1:
                log.warning("source %s stable again after %d losses", self.source.name, self._episode_losses)
            self._back_at = None
            self._episode_losses = 0
            self._attempt = 0

    def release(self, frame: Frame) -> None:
        self.pool.give(frame.image)
