"""Real `Source` subclasses for tests: a live camera stand-in at a fixed rate, with scripted faults."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from runtime.demo import DemoScene
from runtime.frame import Frame
from runtime.sources import Source, SourceError, SourceReadError


class PacedLiveSource(Source):
    """Renders the demo scene at `fps` like a camera: frames come when their time comes.

    `pause_at` (frame index -> seconds) stalls before that frame, like a camera hiccup;
    `fail_at` indices raise SourceReadError once each (device unplugged); `end_after`
    ends the stream (returns None) after that many frames; `dark` indices are black frames.
    """

    def __init__(self, fps: float = 200.0, total: Optional[int] = None, seed: int = 0, pause_at=None,
                 fail_at=(), dark=(), reopen_fails: int = 0, size=(160, 120), stream: int = 0) -> None:
        super().__init__(f"paced:{seed}", live=True, fps=fps, stream=stream)
        self.total = total
        self.pause_at = dict(pause_at or {})
        self.fail_at = set(fail_at)
        self.dark = set(dark)
        self.reopen_fails = reopen_fails
        self.opens = 0
        self.produced = 0
        self.scene = DemoScene(seed, *size)
        self._next_time = None

    def _open(self) -> None:
        self.opens += 1
        if 1 < self.opens <= 1 + self.reopen_fails:
            raise SourceError("device busy")
        self._next_time = time.perf_counter()

    def _close(self) -> None:
        pass

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        if self.total is not None and self.produced >= self.total:
            return None
        index = self.produced
        if index in self.fail_at:
            self.fail_at.discard(index)
            raise SourceReadError("read failed (injected)")
        if index in self.pause_at:
            time.sleep(self.pause_at.pop(index))
            self._next_time = time.perf_counter()
        delay = self._next_time - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        self._next_time = max(self._next_time + 1.0 / self.fps, time.perf_counter() - 1.0 / self.fps)
        image = out if out is not None and out.shape == self.scene.shape else np.empty(self.scene.shape, np.uint8)
        label = self.scene.render_into(image)
        if index in self.dark:
            image[...] = 0
        self.produced += 1
        return self._emit(image, time.perf_counter(), label=label)
