"""The source contract: a `Source` yields `Frame`s; frame checks and realtime pacing shared by every source.

See the package docstring (`runtime.sources`) for the live / file running modes.
"""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np

from runtime.errors import CameraUnavailable, SourceError, SourceReadError
from runtime.frame import Frame

__all__ = [
    "EMPTY_IMAGE", "DecodedFrame", "CameraUnavailable", "FramePacer", "PlaybackSource", "Source", "SourceError", "SourceReadError",
    "buffer_fits", "is_valid_image",
]

HINT = "use `--source demo` for the synthetic scene, or pass a video file or image folder"
# A file or folder that states no rate is paced like a typical camera.
FALLBACK_PACING_FPS = 30.0

# What a source delivers for a frame it grabbed but could not decode: the frame keeps its
# index (so the gap is visible) and the reader counts it as corrupt (`is_valid_image`).
EMPTY_IMAGE = np.empty((0, 0, 3), np.uint8)
EMPTY_IMAGE.flags.writeable = False


def is_valid_image(img: object) -> bool:
    """True when `img` is what a Frame must carry: a non-empty HxWx3 uint8 array."""
    return (
        isinstance(img, np.ndarray)
        and img.dtype == np.uint8
        and img.ndim == 3
        and img.shape[2] == 3
        and img.shape[0] > 0
        and img.shape[1] > 0
    )


def buffer_fits(out: Optional[np.ndarray], shape: Sequence[int]) -> bool:
    """Whether `out` can receive an image of `shape` in place."""
    return (
        out is not None
        and out.shape == tuple(shape)
        and out.dtype == np.uint8
        and out.flags.c_contiguous
        and out.flags.writeable
    )


class FramePacer:
    """The clock of an emulated camera running at `fps`: which frame is due, and when.

    Frame k is captured at `t0 + k / fps`. `next(position)` sleeps until the frame at
    `position` is due if the reader is early, or returns the newest frame already due if
    the reader is late (frames in between are the ones a camera would have overwritten).
    Returns `(position_to_deliver, capture_time)`.
    """

    def __init__(self, fps: float) -> None:
        if not fps or not math.isfinite(fps) or fps <= 0:
            raise SourceError(f"realtime pacing needs a positive frame rate, got {fps!r}")
        self.fps = float(fps)
        self.t0 = time.perf_counter()

    def next(self, position: int) -> tuple[int, float]:
        now = time.perf_counter()
        newest = int(math.floor((now - self.t0) * self.fps + 1e-9))
        if newest <= position:
            due = self.t0 + position / self.fps
            delay = due - now
            if delay > 0:
                time.sleep(delay)
            return position, due
        return newest, self.t0 + newest / self.fps


class DecodedFrame(NamedTuple):
    """One frame as a source hands it to the base class, before it becomes a `Frame`."""

    image: np.ndarray
    timestamp: float  # when it was captured or decoded (time.perf_counter)
    label: Optional[str] = None


class Source(ABC):
    """A stream of `Frame`s. See the module docstring for the live / file contract.

    Attributes: `name` (URI-ish, for logs; credentials masked), `live`, `finite`, `fps`
    (native or nominal rate, None if unknown), `labels` (ground-truth class names, None if
    the source has none), `stream` (the stream id put on every Frame), `realtime` (paced at
    its rate like a camera, which makes it live), `dropped` (frames skipped by realtime
    pacing since open).

    `finite` says what the end of the stream (`read` returning None) means: for a finite
    source (a file, a folder, the demo, paced or not) it is the end of the run's stream;
    for the others (cameras, network streams) it is a fault, and the capture thread
    reopens the source. By default a source is finite unless it was declared live (pacing
    with `realtime=True` makes a source live, not endless).

    With `realtime=True` the source owns a `FramePacer`, started at each `open()`;
    `PlaybackSource` is the base for sources that use it.
    """

    name: str
    live: bool
    fps: Optional[float]
    labels: Optional[tuple[str, ...]] = None

    def __init__(self, name: str, *, live: bool = False, fps: Optional[float] = None,
                 labels: Optional[tuple[str, ...]] = None, stream: int = 0,
                 realtime: bool = False, finite: Optional[bool] = None) -> None:
        self.name = name
        self.live = live or realtime
        self.finite = (not live) if finite is None else bool(finite)
        self.fps = fps
        self.labels = labels
        self.stream = stream
        self.realtime = realtime
        self.dropped = 0
        self.missing_frames = 0  # frames the source declared but never delivered (a video's decoder giving up)
        self._pacer: Optional[FramePacer] = None
        self._next_index = 0
        self._opened = False

    # -- lifecycle -------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._opened

    def open(self) -> "Source":
        """Open (or re-open) the source; the frame index restarts at 0. Returns self."""
        if self._opened:
            self.close()
        self._open()
        # The emulated camera starts when the source is ready, so frame 0 is due at once.
        self._pacer = FramePacer(self._pacing_fps()) if self.realtime else None
        self._next_index = 0
        self.dropped = 0
        self._opened = True
        return self

    def close(self) -> None:
        """Release the device or file. Safe to call twice."""
        if self._opened:
            self._opened = False
            self._close()

    def read(self, out: Optional[np.ndarray] = None) -> Optional[Frame]:
        """The next frame, or None at the end of a file-like stream.

        When `out` fits the frame (HxWx3 uint8, C-contiguous), the image is decoded into
        it and `frame.image is out`. Raises SourceReadError when a live source fails.
        """
        if not self._opened:
            raise SourceError(f"{self.name}: read() before open() (or after close())")
        return self._read(out)

    def skip(self, frames: int) -> int:
        """Read and discard the next `frames` frames (resuming a file); how many there were."""
        buffer = None
        for count in range(frames):
            frame = self.read(buffer)
            if frame is None:
                return count
            buffer = frame.image
        return frames

    def __enter__(self) -> "Source":
        if not self._opened:
            self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        """Frames until the end of the stream (reads with a fresh buffer each time)."""
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def __repr__(self) -> str:
        state = "open" if self._opened else "closed"
        return f"<{type(self).__name__} {self.name} live={self.live} fps={self.fps} {state}>"

    # -- for subclasses --------------------------------------------------------
    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]: ...

    @abstractmethod
    def _close(self) -> None: ...

    def _pacing_fps(self) -> Optional[float]:
        """The rate realtime pacing runs at (known once `_open` has run)."""
        return self.fps or FALLBACK_PACING_FPS

    def _emit(self, image: np.ndarray, timestamp: float, label: Optional[str] = None,
              index: Optional[int] = None) -> Frame:
        """Wrap `image` as the next Frame (or the frame at `index`, after skipped ones)."""
        if index is None:
            index = self._next_index
        self._next_index = index + 1
        return Frame(image=image, index=index, timestamp=timestamp, stream=self.stream,
                     label=label)


class PlaybackSource(Source):
    """A source whose frames exist whether or not they are read: a video file, an image folder, the demo.

    Always finite: its end is the end of the stream, also when paced like a camera.

    It plays them back in order as fast as they are read, or, with `realtime=True`, as a
    camera running at `fps` would show them: `_read` asks the pacer which frame is due,
    skips the ones a late reader missed (each one a drop, counted in `dropped`, and a gap
    in `Frame.index`), and stamps the frame with its emulated capture instant. A subclass
    supplies only `_skip_frames` and `_read_frame`.
    """

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        position, paced_at = self._next_index, None
        if self._pacer is not None:
            position, paced_at = self._pacer.next(self._next_index)
        behind = position - self._next_index
        if behind > 0:
            skipped = self._skip_frames(behind)
            self.dropped += skipped
            if skipped < behind:  # the end came first
                self._next_index += skipped
                return None
        # The position moves only when a frame is delivered or the end is found: a read that
        # raises (an image that does not decode) leaves it where it was.
        capture = self._read_frame(position, out)
        if capture is None:
            self._next_index = position
            return None
        return self._emit(capture.image, capture.timestamp if paced_at is None else paced_at,
                          label=capture.label, index=position)

    @abstractmethod
    def _skip_frames(self, count: int) -> int:
        """Pass over the next `count` frames without delivering them; how many there were.

        Fewer than `count` means the stream ended; the frames counted are drops.
        """

    @abstractmethod
    def _read_frame(self, position: int, out: Optional[np.ndarray]) -> Optional[DecodedFrame]:
        """The frame at `position` (the one after those read or skipped), or None at the end.

        Decodes into `out` when `buffer_fits(out, shape)`; the timestamp is the
        capture instant when not paced (the pacer's clock replaces it when paced).
        """
