"""systemd's readiness and watchdog protocol (sd_notify), spoken directly.

A message is one datagram of `KEY=value` lines sent to the unix socket named by
`$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), so no C library is
needed. Outside systemd the variable is unset and every call does nothing.

`Heartbeat` is the policy on top: READY=1 once the first frame has been processed,
WATCHDOG=1 from the result loop at most every WatchdogSec/2 (so when the source stalls
or an engine hangs, the loop stops reaching it and systemd restarts the service), a
STATUS= line with the recent fps (`RecentRate`, over the last few seconds) and drops every
few seconds, and STOPPING=1 at shutdown.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Mapping, Optional

from runtime.stats import RecentRate, RunStats

log = logging.getLogger("edge_run.notify")

STATUS_EVERY = 5.0  # seconds between STATUS= updates while frames flow


class Notifier:
    """Sends sd_notify messages; a no-op when `address` is None (not under systemd)."""

    def __init__(self, address: Optional[str], watchdog_interval: Optional[float] = None) -> None:
        self.address = address
        # systemd asks for a ping every WATCHDOG_USEC; half of it leaves room for a slow frame.
        self.watchdog_interval = watchdog_interval
        self._socket: Optional[socket.socket] = None
        self._lock = threading.Lock()  # the loop, the monitor thread and signal handlers all send
        self._last_watchdog = float("-inf")
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "Notifier":
        address = environ.get("NOTIFY_SOCKET") or None
        interval = None
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process systemd watches; a child that inherited the
        # variables must not ping on its parent's behalf.
        if usec and (not pid or pid == str(os.getpid())):
            try:
                interval = int(usec) / 1e6 / 2
            except ValueError:
                log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        return cls(address, interval if interval and interval > 0 else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one message made of `fields` (e.g. "READY=1", "STATUS=..."); False if not sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        payload = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.sendto(payload, target)
                return True
            except OSError as exc:
                # A notification that cannot be delivered must never stop the service.
                if not self._warned:
                    self._warned = True
                    log.warning("cannot notify systemd via %s (%s); continuing without", self.address, exc)
                return False

    def ready(self, status: Optional[str] = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def extend_timeout(self, seconds: float, status: Optional[str] = None) -> bool:
        """Ask for more start/stop time (a TensorRT plan rebuild takes minutes on a Jetson)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", *([f"STATUS={status}"] if status else []))

    def watchdog(self, now: Optional[float] = None) -> bool:
        """Ping the watchdog if WatchdogSec/2 has passed since the last ping."""
        if self.address is None or self.watchdog_interval is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_watchdog < self.watchdog_interval:
            return False
        self._last_watchdog = now
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


class Heartbeat:
    """What the result loop tells systemd: ready after the first frame, alive while frames flow."""

    def __init__(self, notifier: Notifier, stats: RunStats, status_every: float = STATUS_EVERY,
                 rate: Optional[RecentRate] = None) -> None:
        """`rate`: the recent frame rate STATUS= shows; without one (or before it has two
        samples) it shows the rate since the first frame."""
        self.notifier = notifier
        self.stats = stats
        self.status_every = status_every
        self.rate = rate
        self.ready = False
        self._last_status = float("-inf")
        self._stalled = False

    def beat(self) -> None:
        """Called by the loop thread after each result (cheap when not under systemd)."""
        if not self.notifier.enabled:
            return
        now = time.monotonic()
        if not self.ready:
            self.ready = True
            self._last_status = now
            self.notifier.ready(self.describe())
            log.info("told systemd READY after the first processed frame")
        self.notifier.watchdog(now)
        if now - self._last_status >= self.status_every or self._stalled:
            self._last_status = now
            self._stalled = False
            self.notifier.status(self.describe())

    def report_stall(self, seconds: float) -> None:
        """Called from a monitor thread when no frame came for `seconds`: STATUS only, never WATCHDOG."""
        if self.notifier.enabled and self.ready:
            self._stalled = True
            self.notifier.status(f"stalled: no frame for {seconds:.0f} s, {self.stats.total('reconnects')} reconnects")

    def describe(self) -> str:
        stats = self.stats
        recent = self.rate.rate() if self.rate is not None else None
        fps = stats.fps() if recent is None else recent
        return (f"{fps:.1f} fps, {stats.total('frames')} frames, {stats.total('dropped')} dropped, "
                f"{stats.total('misses')} late, {stats.total('reconnects')} reconnects")
