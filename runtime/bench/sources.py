"""The benchmark's own source: a video looped into an endless stream for the memory run."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from runtime.bench.options import LIVE_FPS
from runtime.frame import Frame
from runtime.sources import Source, SourceError


class LoopedVideo(Source):
    """A video file played over and over as one endless stream, the frame index still counting:
    what a long-running camera looks like to the loop, without a 10,000-frame file on disk.
    Decodes into the loop's frame buffers like the runtime's own file source."""

    def __init__(self, path: Path, stream: int = 0) -> None:
        super().__init__(f"loop:{path}", live=False, fps=LIVE_FPS, stream=stream)
        self.path = Path(path)
        self._cap = None

    def _open(self) -> None:
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise SourceError(f"cannot open video file {self.path}")

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        for _ in range(2):  # at the end, rewind once
            if self._cap.grab():
                timestamp = time.perf_counter()
                fits = out is not None and out.dtype == np.uint8 and out.flags.c_contiguous
                ok, image = self._cap.retrieve(out) if fits else self._cap.retrieve()
                if ok and image is not None:
                    return self._emit(image, timestamp)
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        raise SourceError(f"cannot read a frame from {self.path}")
