"""The one file watcher of the service: a thread that acts when a file changes or when asked.

`--sources-file` (`streams.SourcesFile`) and `--watch-engines` (`swap.EngineReloader`) both
look at a file every second and also act on SIGHUP, whose handler may only set a flag:
`request()` is that flag. A change is a new (inode, mtime, size) stamp, so a file replaced
by rename (how edge-export writes manifest.json) counts even within one mtime tick.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional

Stamp = Optional[tuple[int, int, int]]


def file_stamp(path: Path) -> Stamp:
    """(inode, mtime in ns, size) of `path`, or None while it does not exist."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class FileWatch:
    """Calls `on_change(asked)` on its own thread when `path` changes (looked at every `every`
    seconds; never when `every` is None) or when `request()` was called (`asked` True).

    `settle_after`: the callback may rewrite the file itself (a TensorRT rebuild rewrites
    manifest.json during a reload), so the file is looked at again after it and that write is
    not taken for the next change.
    """

    def __init__(self, name: str, path: Path, on_change: Callable[[bool], None], every: Optional[float],
                 settle_after: bool = False, join_timeout: float = 10.0) -> None:
        self.path = path
        self.on_change = on_change
        self.every = every
        self.settle_after = settle_after
        self.join_timeout = join_timeout
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "FileWatch":
        self._thread.start()
        return self

    def request(self) -> None:
        """Act now (safe from a signal handler: it only sets an event)."""
        self._wake.set()

    def close(self) -> None:
        self.stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.join_timeout)

    def _run(self) -> None:
        seen = file_stamp(self.path)
        while not self.stopping.is_set():
            asked = self._wake.wait(self.every)
            if self.stopping.is_set():
                return
            self._wake.clear()
            stamp = file_stamp(self.path) if self.every is not None else seen
            if asked or stamp != seen:
                seen = stamp
                self.on_change(asked)
                if self.settle_after:
                    seen = file_stamp(self.path)
