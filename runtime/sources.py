"""Where frames come from: cameras, network streams, GStreamer pipelines, files, folders, demo.

A source is addressed by a URI, as in jetson-inference, and `open_source` picks the class:

| URI                                        | source                         | live |
|--------------------------------------------|--------------------------------|------|
| `demo`, `demo:SEED`                        | `runtime.demo.DemoSource`      | no   |
| `0`, `camera:0`, `/dev/video0`             | `CameraSource` (V4L2 via cv2)  | yes  |
| `csi://0`                                  | Jetson CSI camera (GStreamer)  | yes  |
| `rtsp://…`, `http(s)://…`, `rtmp://…`      | `StreamSource` (cv2 + FFmpeg)  | yes  |
| `a ! b ! appsink` (contains ` ! `)         | `StreamSource` (cv2 + GStreamer)| yes |
| an existing folder (or one image file)     | `ImageFolderSource`            | no   |
| an existing video file (`file://` allowed) | `VideoFileSource`              | no   |

Lifecycle: `open()` (raises `CameraUnavailable` or `SourceError` with a readable
message), `read(out=None)` many times, `close()`; a source is a context manager and may be
re-opened after `close()` (that is how a live source is reconnected; the frame index
restarts at 0). `open_source` and `camera_source` return sources that are already open.

Running modes, explicit:

- **live** (`live=True`: cameras, network streams, GStreamer, and any source opened with
  `realtime=True`): frames arrive on the source's clock whether or not anyone reads them;
  the pipeline drops stale frames when it falls behind (newest frame wins). A read
  failure raises `SourceReadError` (the caller reconnects with backoff); a live source
  never reaches "end of stream" except paced files and folders.
- **file** (`live=False`: video files, image folders, the demo scene): every frame is
  produced, in order, as fast as it is read; `read` returns None at the end.

A file opened with `realtime=True` emulates a camera: frame k becomes available at
`t0 + k / fps` (t0 = open time); `read` waits for the next one, and if the reader is late
it skips the frames a camera would have overwritten, so the frame index jumps (a gap in
`Frame.index` is a drop, as `runtime.frame` says). Its timestamp is that emulated capture
instant, so end-to-end latency includes the time a frame waited. `dropped` counts them.

Hot path: `read(out)` decodes into `out` when it is a C-contiguous HxWx3 uint8 array of
the frame's shape (cv2's `retrieve(image)` reuses the buffer), so steady-state reading
allocates no image per frame. The returned `Frame.image` is then `out` itself: the
caller owns it and must not hand the same buffer to the next read while still using it.

Sources do not validate every frame; a capture that yields an empty image (a decode
failure after a successful grab) is still returned as a Frame, so its index is counted,
and the pipeline uses `is_valid_image` to count and skip it.

Sources are not thread-safe: one thread reads (and closes) a given source.
"""
from __future__ import annotations

import logging
import math
import os
import re
import stat
import sys
import time
from abc import ABC, abstractmethod
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from runtime.frame import Frame

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
DEFAULT_CSI_SIZE = (1280, 720)
DEFAULT_CSI_FPS = 30.0
NETWORK_TIMEOUT_MS = 5000
_LINUX = sys.platform.startswith("linux")

_EMPTY_IMAGE = np.empty((0, 0, 3), np.uint8)
_EMPTY_IMAGE.flags.writeable = False

_HINT = "use `--source demo` for the synthetic scene, or pass a video file or image folder"


class SourceError(RuntimeError):
    """A source that cannot be opened or read, with a message that says which and why."""


class CameraUnavailable(SourceError):
    """A camera (V4L2, CSI or network) that cannot be opened. The CLI exits with code 2."""


class SourceReadError(SourceError):
    """A live source whose read failed (unplugged camera, dropped stream): reconnect."""


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


class Source(ABC):
    """A stream of `Frame`s. See the module docstring for the live / file contract.

    Attributes: `name` (URI-ish, for logs; credentials masked), `live`, `fps` (native or
    nominal rate, None if unknown), `labels` (ground-truth class names, None if the source
    has none), `stream` (the stream id put on every Frame), `dropped` (frames skipped by
    realtime pacing since open).
    """

    name: str
    live: bool
    fps: Optional[float]
    labels: Optional[tuple[str, ...]] = None

    def __init__(self, name: str, *, live: bool, fps: Optional[float] = None,
                 labels: Optional[tuple[str, ...]] = None, stream: int = 0) -> None:
        self.name = name
        self.live = live
        self.fps = fps
        self.labels = labels
        self.stream = stream
        self.dropped = 0
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

    def _emit(self, image: np.ndarray, timestamp: float, label: Optional[str] = None,
              index: Optional[int] = None) -> Frame:
        """Wrap `image` as the next Frame (or the frame at `index`, after skipped ones)."""
        if index is None:
            index = self._next_index
        self._next_index = index + 1
        return Frame(image=image, index=index, timestamp=timestamp, stream=self.stream,
                     label=label)


# ---------------------------------------------------------------------------------------
# OpenCV VideoCapture based sources
# ---------------------------------------------------------------------------------------
class _CaptureSource(Source):
    """Shared grab / timestamp / retrieve logic over a cv2.VideoCapture."""

    def __init__(self, name: str, *, live: bool, fps: Optional[float], stream: int) -> None:
        super().__init__(name, live=live, fps=fps, stream=stream)
        self._cap = None

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _grab_retrieve(self, out: Optional[np.ndarray]) -> Optional[tuple[np.ndarray, float]]:
        """(image, capture time) or None when grab fails. A failed decode gives an empty image."""
        if not self._cap.grab():
            return None
        timestamp = time.perf_counter()
        if out is not None and out.dtype == np.uint8 and out.flags.c_contiguous:
            ok, image = self._cap.retrieve(out)
        else:
            ok, image = self._cap.retrieve()
        if not ok or image is None:
            image = _EMPTY_IMAGE
        return image, timestamp


class CameraSource(_CaptureSource):
    """A local camera through cv2.VideoCapture (V4L2 on Linux). Live.

    `device` is an index (`/dev/video{index}`) or a device path. Requested width, height and
    fps are set as capture properties; the camera may pick the nearest mode it supports,
    so `width`, `height` and `fps` are read back after opening. The capture queue is asked
    for one buffer so a read returns a fresh frame, not one queued behind others.
    """

    def __init__(self, device: int | str, *, width: Optional[int] = None,
                 height: Optional[int] = None, fps: Optional[float] = None,
                 stream: int = 0) -> None:
        self.device = device
        path = f"/dev/video{device}" if isinstance(device, int) else str(device)
        name = f"camera:{device}" if isinstance(device, int) else path
        super().__init__(name, live=True, fps=fps, stream=stream)
        self._path = path
        self.requested = (width, height, fps)
        self.width = width
        self.height = height

    def _unavailable(self, why: str) -> CameraUnavailable:
        return CameraUnavailable(f"camera {self.device!s} ({self._path}) {why}; {_HINT}")

    def _open(self) -> None:
        import cv2

        # On Linux a missing device node fails here, fast and without OpenCV's warnings.
        if _LINUX and not os.path.exists(self._path):
            raise self._unavailable("is not present (no such device)")
        if isinstance(self.device, int):
            cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2 if _LINUX else cv2.CAP_ANY)
        else:
            cap = cv2.VideoCapture(self._path, cv2.CAP_V4L2 if _LINUX else cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            raise self._unavailable(
                "could not be opened (busy, no permission, or not a capture device)")
        width, height, fps = self.requested
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(width))
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(height))
        if fps:
            cap.set(cv2.CAP_PROP_FPS, float(fps))
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1.0)
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or width
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or height
        self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or fps
        self._cap = cap
        log.info("opened %s at %sx%s @ %s fps", self.name, self.width, self.height, self.fps)

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        got = self._grab_retrieve(out)
        if got is None:
            raise SourceReadError(f"{self.name}: capture failed (camera unplugged or stalled?)")
        return self._emit(*got)


def _redact(uri: str) -> str:
    """The URI with any password masked, for logs and messages."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", uri)


def gstreamer_available() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines."""
    import cv2

    match = re.search(r"GStreamer:\s*(\S+)", cv2.getBuildInformation())
    return bool(match) and match.group(1).upper() not in ("NO", "OFF")


def csi_pipeline(sensor_id: int = 0, width: Optional[int] = None, height: Optional[int] = None,
                 fps: Optional[float] = None) -> str:
    """The standard nvarguscamerasrc pipeline for a Jetson CSI camera, ending in BGR appsink.

    `drop=true max-buffers=1` on the appsink keeps only the newest frame (never a queue).
    """
    width = int(width or DEFAULT_CSI_SIZE[0])
    height = int(height or DEFAULT_CSI_SIZE[1])
    rate = Fraction(fps or DEFAULT_CSI_FPS).limit_denominator(1001)
    return (
        f"nvarguscamerasrc sensor-id={int(sensor_id)} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
        f"format=(string)NV12, framerate=(fraction){rate.numerator}/{rate.denominator} ! "
        f"nvvidconv flip-method=0 ! "
        f"video/x-raw, width=(int){width}, height=(int){height}, format=(string)BGRx ! "
        f"videoconvert ! video/x-raw, format=(string)BGR ! "
        f"appsink drop=true max-buffers=1 sync=false"
    )


class StreamSource(_CaptureSource):
    """A live stream: a network URL through FFmpeg, or a GStreamer pipeline string. Live.

    `backend` is "ffmpeg" or "gstreamer". A failed open raises CameraUnavailable (the
    stream is someone's camera); a failed read raises SourceReadError.
    """

    def __init__(self, uri: str, *, backend: str = "ffmpeg", name: Optional[str] = None,
                 fps: Optional[float] = None, stream: int = 0) -> None:
        if backend not in ("ffmpeg", "gstreamer"):
            raise ValueError(f"backend must be 'ffmpeg' or 'gstreamer', got {backend!r}")
        super().__init__(name or _redact(uri), live=True, fps=fps, stream=stream)
        self.uri = uri
        self.backend = backend
        self._requested_fps = fps

    def _open(self) -> None:
        import cv2

        if self.backend == "gstreamer":
            if not gstreamer_available():
                raise SourceError(
                    f"{self.name}: this OpenCV build has no GStreamer support "
                    "(cv2.getBuildInformation() shows 'GStreamer: NO'); on Jetson use the "
                    f"JetPack OpenCV (python3-opencv), not the pip wheel; or {_HINT}")
            cap = cv2.VideoCapture(self.uri, cv2.CAP_GSTREAMER)
        else:
            params = []
            for prop in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
                if hasattr(cv2, prop):
                    params += [getattr(cv2, prop), NETWORK_TIMEOUT_MS]
            cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise CameraUnavailable(
                f"stream {self.name} could not be opened via {self.backend} "
                f"(unreachable, wrong URL or pipeline, or unsupported codec); {_HINT}")
        self.fps = self._requested_fps or (float(cap.get(cv2.CAP_PROP_FPS)) or None)
        self._cap = cap
        log.info("opened %s via %s @ %s fps", self.name, self.backend, self.fps)

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        got = self._grab_retrieve(out)
        if got is None:
            raise SourceReadError(f"{self.name}: stream read failed (disconnected or ended)")
        return self._emit(*got)


class VideoFileSource(_CaptureSource):
    """A video file decoded with cv2. Not live: every frame, in order, None at the end.

    `fps` is the file's own rate (CAP_PROP_FPS) unless given. With `realtime=True` the
    file is paced at that rate like a camera and marked live (see the module docstring).
    Opening decodes the first frame, so a file cv2 cannot decode fails at open, naming it.
    """

    def __init__(self, path: str | os.PathLike, *, fps: Optional[float] = None,
                 realtime: bool = False, stream: int = 0) -> None:
        self.path = Path(path)
        super().__init__(str(self.path), live=realtime, fps=fps, stream=stream)
        self.realtime = realtime
        self._requested_fps = fps
        self._pacer: Optional[FramePacer] = None
        self._first: Optional[np.ndarray] = None  # frame 0, decoded at open
        self._position = 0  # position in the file of the next frame to deliver
        self._grabbed = 0  # frames the capture has consumed

    def _open(self) -> None:
        import cv2

        if not self.path.is_file():
            raise SourceError(f"no such file: {self.path}")
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open video file {self.path}: OpenCV does not recognise it "
                              "as a video (wrong format or corrupt)")
        ok, first = cap.read()
        if not ok or not is_valid_image(first):
            cap.release()
            raise SourceError(f"cannot decode video file {self.path}: no readable frame")
        native = float(cap.get(cv2.CAP_PROP_FPS))
        self.fps = self._requested_fps or (native if native > 0 and math.isfinite(native) else None)
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        self._cap = cap
        self._first = first
        self._position = 0
        self._grabbed = 1
        self._pacer = FramePacer(self.fps or 30.0) if self.realtime else None

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        position, timestamp = self._position, None
        if self._pacer is not None:
            position, timestamp = self._pacer.next(self._position)
        if position > self._position:  # a late realtime reader: skip what a camera overwrote
            if self._first is not None:
                self._first = None
                self.dropped += 1
            while self._grabbed < position:
                if not self._cap.grab():
                    return None
                self._grabbed += 1
                self.dropped += 1
        if self._first is not None:  # frame 0, decoded by open()
            image, self._first = self._first, None
            if buffer_fits(out, image.shape):
                np.copyto(out, image)
                image = out
            got = (image, time.perf_counter())
        else:
            got = self._grab_retrieve(out)
            if got is None:
                return None
            self._grabbed += 1
        self._position = position + 1
        return self._emit(got[0], got[1] if timestamp is None else timestamp, index=position)


class ImageFolderSource(Source):
    """The images of a folder (*.jpg, *.jpeg, *.png, *.bmp, any case), sorted by file name.

    Not live; `fps` is None unless given (a nominal rate, used for realtime pacing, which
    falls back to 30). A single image file is a one-frame folder. An empty folder fails at
    open; a file that does not decode fails at its read, naming the file.
    """

    def __init__(self, path: str | os.PathLike, *, fps: Optional[float] = None,
                 realtime: bool = False, stream: int = 0) -> None:
        self.path = Path(path)
        super().__init__(str(self.path), live=realtime, fps=fps, stream=stream)
        self.realtime = realtime
        self.files: list[Path] = []
        self._pacer: Optional[FramePacer] = None
        self._position = 0

    def _open(self) -> None:
        if self.path.is_dir():
            files = sorted(
                (p for p in self.path.iterdir()
                 if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                key=lambda p: p.name)
            if not files:
                raise SourceError(f"image folder {self.path} holds no "
                                  f"{'/'.join(IMAGE_EXTENSIONS)} files")
        elif self.path.is_file():
            files = [self.path]
        else:
            raise SourceError(f"no such file or folder: {self.path}")
        self.files = files
        self._position = 0
        self._pacer = FramePacer(self.fps or 30.0) if self.realtime else None

    def _close(self) -> None:
        pass

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        import cv2

        position, timestamp = self._position, None
        if self._pacer is not None:
            position, timestamp = self._pacer.next(self._position)
            self.dropped += max(0, min(position, len(self.files)) - self._position)
        if position >= len(self.files):
            self._position = len(self.files)
            return None
        path = self.files[position]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None or not is_valid_image(image):
            raise SourceError(f"cannot read image {path} (corrupt or not an image)")
        if buffer_fits(out, image.shape):
            np.copyto(out, image)
            image = out
        self._position = position + 1
        return self._emit(image, timestamp if timestamp is not None else time.perf_counter(),
                          index=position)


# ---------------------------------------------------------------------------------------
# URI dispatch
# ---------------------------------------------------------------------------------------
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", re.DOTALL)
_DEMO = re.compile(r"^demo(?::(-?\d+))?$")
_CAMERA = re.compile(r"^(?:camera:)?(\d+)$|^/dev/video(\d+)$")


def camera_source(index: int, width: Optional[int] = None, height: Optional[int] = None,
                  fps: Optional[float] = None, *, stream: int = 0) -> CameraSource:
    """An opened camera `index` (`--camera N`); raises CameraUnavailable."""
    return CameraSource(int(index), width=width, height=height, fps=fps, stream=stream).open()


def open_source(uri: str | os.PathLike, *, width: Optional[int] = None,
                height: Optional[int] = None, fps: Optional[float] = None,
                realtime: bool = False, seed: int = 0, stream: int = 0) -> Source:
    """An opened source for `uri` (see the table in the module docstring).

    `width`/`height`/`fps` are requests to cameras and the demo scene's render size and
    nominal rate; for files `fps` overrides the native rate (used by `realtime` pacing).
    `realtime=True` paces a file, folder or the demo scene at its rate and marks it live.
    `seed` seeds the demo scene (`demo:SEED` overrides it). Raises CameraUnavailable for a
    camera or stream that cannot be opened, SourceError for anything else.
    """
    text = (os.fspath(uri) if isinstance(uri, os.PathLike) else str(uri)).strip()
    if not text:
        raise SourceError("empty source URI; " + _HINT)

    demo = _DEMO.match(text)
    if demo:
        from runtime.demo import DemoSource  # lazy: runtime.demo imports this module

        kwargs = {}
        if width:
            kwargs["width"] = int(width)
        if height:
            kwargs["height"] = int(height)
        if fps:
            kwargs["fps"] = float(fps)
        return DemoSource(seed=int(demo.group(1)) if demo.group(1) else seed,
                          realtime=realtime, stream=stream, **kwargs).open()

    if " ! " in text:
        return StreamSource(text, backend="gstreamer", name=f"gstreamer:{text.split(' ! ')[0]}",
                            fps=fps, stream=stream).open()

    camera = _CAMERA.match(text)
    if camera:
        return camera_source(int(camera.group(1) or camera.group(2)), width, height, fps,
                             stream=stream)

    scheme = _SCHEME.match(text)
    if scheme:
        kind, rest = scheme.group(1).lower(), scheme.group(2)
        if kind == "csi":
            if not rest.isdigit():
                raise SourceError(f"csi source must be csi://N (a sensor id), got {text!r}")
            source = StreamSource(csi_pipeline(int(rest), width, height, fps),
                                  backend="gstreamer", name=f"csi://{rest}",
                                  fps=fps or DEFAULT_CSI_FPS, stream=stream)
            try:
                return source.open()
            except CameraUnavailable:
                raise
            except SourceError as exc:  # no GStreamer: still "the camera is unavailable"
                raise CameraUnavailable(f"CSI camera {rest}: {exc}") from None
        if kind in NETWORK_SCHEMES:
            return StreamSource(text, backend="ffmpeg", fps=fps, stream=stream).open()
        if kind == "file":
            text = rest
        else:
            raise SourceError(f"unknown source scheme {kind!r} in {_redact(text)!r}; expected "
                              "demo, camera:N, csi://N, rtsp://, http(s)://, a GStreamer "
                              "pipeline, a video file or an image folder")

    path = Path(text).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, fps=fps, realtime=realtime, stream=stream).open()
    if path.exists() and stat.S_ISCHR(path.stat().st_mode):  # e.g. /dev/v4l/by-id/...
        return CameraSource(str(path), width=width, height=height, fps=fps, stream=stream).open()
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageFolderSource(path, fps=fps, realtime=realtime, stream=stream).open()
        return VideoFileSource(path, fps=fps, realtime=realtime, stream=stream).open()
    raise SourceError(f"no such file: {path} (source URIs: demo, camera:N, csi://N, rtsp://…, "
                      "a video file or an image folder)")
