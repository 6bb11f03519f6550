"""Sources read through OpenCV's VideoCapture: cameras (V4L2), network streams, GStreamer pipelines, video files."""
from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from runtime.errors import UsageError
from runtime.frame import Frame
from runtime.sources.base import (
    EMPTY_IMAGE,
    HINT,
    CameraUnavailable,
    DecodedFrame,
    PlaybackSource,
    Source,
    SourceError,
    SourceReadError,
    buffer_fits,
    is_valid_image,
)
from runtime.sources.ffmpeg_log import route_ffmpeg_log

log = logging.getLogger(__name__)

DEFAULT_CSI_SIZE = (1280, 720)
DEFAULT_CSI_FPS = 30.0
NETWORK_TIMEOUT_MS = 5000
_LINUX = sys.platform.startswith("linux")


class _CaptureSource(Source):
    """Shared grab / timestamp / retrieve logic over a cv2.VideoCapture."""

    def __init__(self, name: str, *, live: bool = False, fps: Optional[float], stream: int,
                 realtime: bool = False) -> None:
        super().__init__(name, live=live, fps=fps, stream=stream, realtime=realtime)
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
            image = EMPTY_IMAGE
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
        return CameraUnavailable(f"camera {self.device!s} ({self._path}) {why}; {HINT}")

    def _open(self) -> None:
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


def redact(uri: str) -> str:
    """The URI with any password masked, for logs and messages."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", uri)


def gstreamer_available() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines."""
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
            raise UsageError(f"backend must be 'ffmpeg' or 'gstreamer', got {backend!r}")
        super().__init__(name or redact(uri), live=True, fps=fps, stream=stream)
        self.uri = uri
        self.backend = backend
        self._requested_fps = fps

    def _open(self) -> None:
        if self.backend == "gstreamer":
            if not gstreamer_available():
                raise SourceError(
                    f"{self.name}: this OpenCV build has no GStreamer support "
                    "(cv2.getBuildInformation() shows 'GStreamer: NO'); on Jetson use the "
                    f"JetPack OpenCV (python3-opencv), not the pip wheel; or {HINT}")
            cap = cv2.VideoCapture(self.uri, cv2.CAP_GSTREAMER)
        else:
            route_ffmpeg_log()
            params = []
            for prop in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
                if hasattr(cv2, prop):
                    params += [getattr(cv2, prop), NETWORK_TIMEOUT_MS]
            cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise CameraUnavailable(
                f"stream {self.name} could not be opened via {self.backend} "
                f"(unreachable, wrong URL or pipeline, or unsupported codec); {HINT}")
        self.fps = self._requested_fps or (float(cap.get(cv2.CAP_PROP_FPS)) or None)
        self._cap = cap
        log.info("opened %s via %s @ %s fps", self.name, self.backend, self.fps)

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        got = self._grab_retrieve(out)
        if got is None:
            raise SourceReadError(f"{self.name}: stream read failed (disconnected or ended)")
        return self._emit(*got)


class VideoFileSource(_CaptureSource, PlaybackSource):
    """A video file decoded with cv2. Not live: every frame, in order, None at the end.

    `fps` is the file's own rate (CAP_PROP_FPS) unless given. With `realtime=True` the
    file is paced at that rate like a camera and marked live (see the module docstring).
    Opening decodes the first frame, so a file cv2 cannot decode fails at open, naming it.

    `frame_count` is what the container declares (None if it does not say). A decoder that
    stops before it (a truncated or corrupt file) ends the stream there: one warning at the
    end gives both numbers, and `missing_frames` keeps the shortfall (0 otherwise).
    """

    def __init__(self, path: str | os.PathLike, *, fps: Optional[float] = None,
                 realtime: bool = False, stream: int = 0) -> None:
        self.path = Path(path)
        super().__init__(str(self.path), fps=fps, stream=stream, realtime=realtime)
        self._requested_fps = fps
        self._first: Optional[np.ndarray] = None  # frame 0, decoded at open
        self._grabbed = 0  # frames the capture has consumed
        self.frame_count: Optional[int] = None
        self.missing_frames = 0
        self._end_seen = False

    def _open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"no such file: {self.path}")
        route_ffmpeg_log()
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
        declared = float(cap.get(cv2.CAP_PROP_FRAME_COUNT))  # -1 or 0 when the container does not say
        self.frame_count = int(declared) if declared > 0 and math.isfinite(declared) else None
        self._cap = cap
        self._first = first
        self._grabbed = 1
        self.missing_frames = 0
        self._end_seen = False

    def _skip_frames(self, count: int) -> int:
        target = self._next_index + count
        skipped = 0
        if self._first is not None:
            self._first = None
            skipped += 1
        # grab() without retrieve() passes over a frame without converting it to BGR.
        while self._grabbed < target:
            if not self._cap.grab():
                self._ended()
                return skipped
            self._grabbed += 1
            skipped += 1
        return skipped

    def _read_frame(self, position: int, out: Optional[np.ndarray]) -> Optional[DecodedFrame]:
        if self._first is not None:
            image, self._first = self._first, None
            if buffer_fits(out, image.shape):
                np.copyto(out, image)
                image = out
            return DecodedFrame(image, time.perf_counter())
        got = self._grab_retrieve(out)
        if got is None:
            self._ended()
            return None
        self._grabbed += 1
        return DecodedFrame(*got)

    def _ended(self) -> None:
        """The decoder has no more frames: say once if that is fewer than the container declared."""
        if self._end_seen:
            return
        self._end_seen = True
        if self.frame_count is not None and self._grabbed < self.frame_count:
            self.missing_frames = self.frame_count - self._grabbed
            log.warning("%s: the decoder stopped after %d of the %d frames the file declares; "
                        "%d frames missing (truncated or corrupt file)",
                        self.name, self._grabbed, self.frame_count, self.missing_frames)
