"""Where frames come from: cameras, network streams, GStreamer pipelines, files, folders, demo.

A source is addressed by a URI, as in jetson-inference, and `open_source` picks the class:

| URI                                        | source                         | live |
|--------------------------------------------|--------------------------------|------|
| `demo`, `demo:SEED`                        | `runtime.sources.demo.DemoSource`      | no   |
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
  failure raises `SourceReadError` (the caller reconnects with backoff).
- **file** (`live=False`: video files, image folders, the demo scene): every frame is
  produced, in order, as fast as it is read; `read` returns None at the end.

Ends, explicit: `finite` sources (files, folders, the demo, paced or not) end the stream
when `read` returns None; a live source that is not finite (a camera, a network stream)
returning None has failed, and the capture thread reopens it like after a read error.

What a file loses is said, not hidden: an image of a folder that does not decode is
skipped (an empty Frame at its index, counted as corrupt, its name logged once), and the
folder fails at open only when none of its images decodes; a video whose decoder stops
before the frame count its container declares logs both numbers at its end and keeps
the shortfall in `VideoFileSource.missing_frames`.

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

import os
import re
import stat
from pathlib import Path
from typing import Optional

from runtime.errors import UsageError
from runtime.sources.base import (
    HINT,
    CameraUnavailable,
    FramePacer,
    Source,
    SourceError,
    SourceReadError,
    buffer_fits,
    is_valid_image,
)
from runtime.sources.demo import DemoSource
from runtime.sources.folder import IMAGE_EXTENSIONS, ImageFolderSource
from runtime.sources.opencv import (
    DEFAULT_CSI_FPS,
    CameraSource,
    StreamSource,
    VideoFileSource,
    csi_pipeline,
    gstreamer_available,
    redact,
)

__all__ = [
    "IMAGE_EXTENSIONS", "CameraSource", "CameraUnavailable", "DemoSource", "FramePacer", "ImageFolderSource", "Source",
    "SourceError", "SourceReadError", "StreamSource", "VideoFileSource", "buffer_fits", "camera_source", "csi_pipeline",
    "gstreamer_available", "is_valid_image", "open_source",
]

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", re.DOTALL)
_DEMO = re.compile(r"^demo(?::(.*))?$", re.DOTALL)
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
    camera or stream that cannot be opened, UsageError for a demo seed that is not a
    non-negative integer, SourceError for anything else.
    """
    text = (os.fspath(uri) if isinstance(uri, os.PathLike) else str(uri)).strip()
    if not text:
        raise SourceError("empty source URI; " + HINT)

    demo = _DEMO.match(text)
    if demo and not (demo.group(1) is not None and Path(text).exists()):  # a file may be named demo:x
        kwargs = {}
        if width:
            kwargs["width"] = int(width)
        if height:
            kwargs["height"] = int(height)
        if fps:
            kwargs["fps"] = float(fps)
        return DemoSource(seed=_demo_seed(text, demo.group(1), seed),
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
            raise SourceError(f"unknown source scheme {kind!r} in {redact(text)!r}; expected "
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


def _demo_seed(uri: str, given: Optional[str], default: int) -> int:
    """The seed of `demo:SEED` (or `default` for plain `demo`); numpy seeds are integers >= 0."""
    text = given.strip() if given is not None else str(default)
    if not (text.isascii() and text.isdigit()):  # no sign: negative seeds are refused too
        where = f"source {uri!r}" if given is not None else f"seed {default!r} for source {uri!r}"
        raise UsageError(f"demo seed must be an integer >= 0, got {where} (use demo or demo:SEED, e.g. demo:3)")
    return int(text)
