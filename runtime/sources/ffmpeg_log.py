"""FFmpeg's own log lines (decoder complaints about a corrupt file) follow the project's log level.

OpenCV's FFmpeg writes them raw to stderr, one per damaged macroblock row: about a hundred
for one corrupt file, out of the logger's format and control. What they mean for a run is
said by the sources at WARNING instead (frames missing at the end of a file, corrupt
frames counted), so `route_ffmpeg_log`, called before a capture opens, silences them
unless the project's logger is at DEBUG, where they stay as FFmpeg prints them.

Silencing uses OpenCV's switch (`OPENCV_FFMPEG_LOGLEVEL=-8`, read when OpenCV first opens
an FFmpeg capture; child processes inherit it) and, in case that already happened, `av_log_set_level`
in the libavutil OpenCV loaded (found in /proc/self/maps). Either way FFmpeg's C code
drops the lines: nothing per frame.

Why the lines are not re-emitted through the logger: OpenCV's switch prints them to
stdout (which carries the JSON lines) at any level above quiet, and an `av_log` callback
written in Python (ctypes) deadlocks: FFmpeg's decoder threads call it while the thread
that holds the GIL waits for them inside OpenCV. A user's own `OPENCV_FFMPEG_LOGLEVEL` or
`OPENCV_FFMPEG_DEBUG` is left alone. Only the FFmpeg OpenCV uses is covered: warnings
OpenCV itself prints (GStreamer, V4L2) are not.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from typing import Optional

import cv2  # noqa: F401 - loads the libavutil OpenCV links, so /proc/self/maps shows it

log = logging.getLogger("edge_run.ffmpeg")

AV_LOG_QUIET = -8

_lock = threading.Lock()
_decided: Optional[str] = None  # "quiet" or "untouched", once per process


def route_ffmpeg_log() -> str:
    """Silence FFmpeg's log below DEBUG, once per process, before a capture opens; says what was done.

    Returns "quiet" (silenced) or "untouched" (the logger is at DEBUG, or the user set
    OpenCV's own switch).
    """
    global _decided
    with _lock:
        if _decided is None:
            _decided = _decide()
        return _decided


def _decide() -> str:
    if "OPENCV_FFMPEG_LOGLEVEL" in os.environ or "OPENCV_FFMPEG_DEBUG" in os.environ:
        return "untouched"
    if log.isEnabledFor(logging.DEBUG):
        return "untouched"
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = str(AV_LOG_QUIET)
    _set_av_log_level(AV_LOG_QUIET)
    return "quiet"


def _set_av_log_level(level: int) -> bool:
    """`av_log_set_level` in the libavutil this process mapped; False where there is none."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.rsplit(None, 1)[-1] for line in maps if "/libavutil" in line}
    except OSError:
        return False
    done = False
    for path in sorted(paths):
        try:
            set_level = ctypes.CDLL(path).av_log_set_level
        except (OSError, AttributeError):
            continue
        set_level.argtypes = [ctypes.c_int]
        set_level.restype = None
        set_level(level)
        done = True
    return done
