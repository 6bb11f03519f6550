"""Capture threads: read a source, hand frames to the loop, survive live-source faults.

One thread per source decodes into a small pool of reusable frame buffers and posts
frames into the stream's mailbox, so decoding overlaps inference (OpenCV and
onnxruntime release the GIL). A live source that fails (read error, device unplugged,
stream ended) is reopened with exponential backoff and jitter; a file that ends closes
the mailbox, which ends that stream cleanly.

An episode is a loss and the reconnects until the source has delivered frames for
`Backoff.stable_after` seconds again. It is logged once when it starts and once when the
source is back; a source that keeps failing right after each reopen stays in the same
episode, so the delay keeps growing instead of restarting at `initial`: a flapping
camera never becomes a tight reconnect loop or a flood of log lines. Every loss is
counted (`reconnects`); the loop resets the stream's state when the reopened source's
frame index restarts.
"""
from __future__ import annotations

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
from runtime.sources import Source, is_valid_image

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


class Capture(threading.Thread):
    def __init__(
        self,
        source: Source,
        mailbox: Mailbox,
        pool: FramePool,
        stop: threading.Event,
        backoff: Backoff = Backoff(),
        max_frames: Optional[int] = None,
    ) -> None:
        super().__init__(name=f"capture-{source.name}", daemon=True)
        self.source = source
        self.mailbox = mailbox
        self.pool = pool
        self.stop_event = stop
        self.backoff = backoff
        self.max_frames = max_frames
        self.corrupt = 0
        self.reconnects = 0
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
                if not self.source.live:
                    raise
                self._recover(f"read failed: {exc}")
                continue
            if frame is None:
                if not self.source.live:
                    return
                self._recover("stream ended")
                continue
            if not is_valid_image(frame.image):
                self.corrupt += 1
                continue
            self._settle()
            self.produced += 1
            while not self.mailbox.put(frame, timeout=0.1):
                if self.stop_event.is_set() or self.mailbox.closed:
                    return

    def _recover(self, reason: str) -> None:
        """Reopen a failed live source with backoff until it works or the run stops."""
        self.reconnects += 1
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
