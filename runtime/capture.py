"""Capture threads: read a source, hand frames to the loop, survive live-source faults.

One thread per source decodes into a small pool of reusable frame buffers and posts
frames into the stream's mailbox, so decoding overlaps inference (OpenCV and
onnxruntime release the GIL). A live source that fails is reopened with exponential
backoff and jitter, logged once per episode; a file that ends closes the mailbox.
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

from .frame import Frame
from .mailbox import Mailbox
from .sources import Source, SourceError, is_valid_image

log = logging.getLogger("edge_run.capture")


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.2  # +/- fraction, so several cameras do not retry in lock-step

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
            except SourceError as exc:
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
            self.produced += 1
            while not self.mailbox.put(frame, timeout=0.1):
                if self.stop_event.is_set() or self.mailbox.closed:
                    return

    def _recover(self, reason: str) -> None:
        """Reopen a failed live source with backoff until it works or the run stops."""
        log.warning("source %s lost (%s); reconnecting with backoff", self.source.name, reason)
        self.reconnects += 1
        attempt = 0
        while not self.stop_event.is_set():
            try:
                self.source.close()
            except Exception:  # noqa: BLE001 - a broken device may fail to close too
                pass
            if self.stop_event.wait(self.backoff.delay(attempt, self._rng)):
                return
            try:
                self.source.open()
            except SourceError as exc:
                attempt += 1
                log.debug("reopen %s attempt %d failed: %s", self.source.name, attempt, exc)
                continue
            log.warning("source %s back after %d attempt(s)", self.source.name, attempt + 1)
            return

    def release(self, frame: Frame) -> None:
        self.pool.give(frame.image)
