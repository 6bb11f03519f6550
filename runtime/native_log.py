"""What C libraries write to the process's stderr (FFmpeg, GStreamer, OpenCV) goes through the logger.

FFmpeg's decoder, OpenCV's capture back-ends and GStreamer print straight to file
descriptor 2, out of the logger's format, level and destination (journald tags a raw line
as the service's own). `NativeStderr` points descriptor 2 at a pipe whose lines a thread
re-emits through `logging` ("edge-run: WARNING [mpeg4 @ ...] ..."), while Python's
own `sys.stderr` (the logger's handlers, the summary, the progress bar) keeps writing to the
real stderr. FFmpeg itself is kept quiet below DEBUG where its lines start
(`runtime.sources.ffmpeg_log`), so at the default level nothing crosses the pipe per frame.

Only the edge-run CLI turns this on, and only in a process of its own (not when a caller,
such as a test harness, has replaced `sys.stderr`). The reader drains the pipe whatever
happens to a record, so a C library never blocks on a full pipe.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Optional, TextIO

log = logging.getLogger("edge_run.native")


class NativeStderr:
    """Route descriptor 2 through `logger` at `level` between `start()` and `stop()`."""

    def __init__(self, logger: logging.Logger = log, level: int = logging.WARNING) -> None:
        self.logger = logger
        self.level = level
        self.lines = 0  # lines re-emitted so far
        self._saved_fd: Optional[int] = None
        self._python_stderr: Optional[TextIO] = None
        self._reader: Optional[threading.Thread] = None

    def start(self) -> bool:
        """Take over descriptor 2; False (nothing done) where sys.stderr is not the process's own."""
        if sys.stderr is not sys.__stderr__ or self._saved_fd is not None:
            return False
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._python_stderr = sys.stderr
        sys.stderr = open(self._saved_fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        self._repoint_handlers(self._python_stderr, sys.stderr)
        self._reader = threading.Thread(target=self._pump, args=(read_fd,), name="native-stderr", daemon=True)
        self._reader.start()
        return True

    def stop(self) -> None:
        """Give descriptor 2 back; lines still in the pipe are logged first."""
        if self._saved_fd is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)  # the pipe's last writer is gone: the reader sees its end
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        replacement, sys.stderr = sys.stderr, self._python_stderr
        self._repoint_handlers(replacement, sys.stderr)
        replacement.close()
        os.close(self._saved_fd)
        self._saved_fd = None

    def __enter__(self) -> "NativeStderr":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _pump(self, read_fd: int) -> None:
        with open(read_fd, "rb") as pipe:
            for raw in pipe:
                text = raw.decode("utf-8", errors="replace").rstrip()
                if not text:
                    continue
                try:
                    self.logger.log(self.level, "%s", text)
                    self.lines += 1
                except Exception:  # noqa: BLE001 - a record that cannot be emitted must not stop the draining
                    pass

    @staticmethod
    def _repoint_handlers(old: TextIO, new: TextIO) -> None:
        # basicConfig's handler holds the stream object it was given: left on descriptor 2 it
        # would feed its own records back into the pipe.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)
