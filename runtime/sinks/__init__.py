"""Where results go. A sink is a plain callable taking a `Result`.

Every sink runs behind its own thread and bounded queue (`SinkWorker`), so a slow or
failing sink never stalls the loop: when its queue is full the result is dropped for
that sink and counted; an exception is logged once per kind and counted, never raised
into the loop. `flush` drains the queues at shutdown so no processed frame loses its line.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import queue
import sys
import threading
import time
from typing import Callable, Iterable, Optional, TextIO

from prometheus_client.core import CounterMetricFamily, Metric

from runtime.result import Result

log = logging.getLogger("edge_run.sinks")

Sink = Callable[[Result], None]


class JsonLinesSink:
    """One JSON object per line (schema in README): stdout by default, or a file."""

    def __init__(self, stream: TextIO, labels: tuple[str, ...], close_stream: bool = False) -> None:
        self.stream = stream
        self.labels = labels
        self._close_stream = close_stream

    @classmethod
    def to_path(cls, path: str, labels: tuple[str, ...]) -> "JsonLinesSink":
        return cls(open(path, "a", buffering=1, encoding="utf-8"), labels, close_stream=True)

    @classmethod
    def to_stdout(cls, labels: tuple[str, ...]) -> "JsonLinesSink":
        return cls(sys.stdout, labels)

    def __call__(self, result: Result) -> None:
        self.stream.write(json.dumps(result.to_json(self.labels), separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()
        if self._close_stream:
            try:
                os.fsync(self.stream.fileno())  # at shutdown: the lines must outlive a power cut right after
            except (OSError, ValueError):
                pass
            self.stream.close()


class SinkWorker(threading.Thread):
    _STOP = object()

    def __init__(self, sink: Sink, capacity: int = 4096, name: Optional[str] = None) -> None:
        super().__init__(name=name or f"sink-{type(sink).__name__}", daemon=True)
        self.sink = sink
        self._queue: "queue.Queue[object]" = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self.failed = 0
        self.delivered = 0
        self._errors_seen: set[str] = set()

    def offer(self, result: Result) -> None:
        try:
            self._queue.put_nowait(result)
        except queue.Full:
            self.dropped += 1

    def run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is self._STOP:
                    return
                self._deliver(item)  # type: ignore[arg-type]
            finally:
                self._queue.task_done()

    def _deliver(self, result: Result) -> None:
        try:
            self.sink(result)
            self.delivered += 1
        except Exception as exc:  # noqa: BLE001 - a failing sink must not stop the others
            self.failed += 1
            kind = type(exc).__name__
            if kind not in self._errors_seen:
                self._errors_seen.add(kind)
                log.error("sink %s failed (%s: %s); further failures of this kind are only counted", self.name, kind, exc)

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued so far is delivered; False if `timeout` ran out."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self, timeout: float) -> bool:
        """Deliver what is queued, stop the thread and close the sink, all within `timeout`.

        Returns False when something was left undelivered (the sink too slow or stuck)."""
        deadline = time.monotonic() + timeout
        drained = self.drain(timeout)
        try:
            self._queue.put(self._STOP, timeout=max(0.1, deadline - time.monotonic()))
        except queue.Full:
            return False
        self.join(max(0.1, deadline - time.monotonic()))
        close = getattr(self.sink, "close", None)
        if close is not None:
            try:
                if _takes_timeout(close):  # e.g. MQTT: wait for the broker's acknowledgements
                    drained = close(timeout=max(0.1, deadline - time.monotonic())) is not False and drained
                else:
                    close()
            except Exception as exc:  # noqa: BLE001
                log.error("closing sink %s failed: %s", self.name, exc)
                return False
        return drained


def _takes_timeout(function) -> bool:
    try:
        return "timeout" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


class FanOut:
    """Offers each result to every sink's worker; the loop never waits on a sink."""

    def __init__(self, sinks: list[Sink], capacity: int = 4096) -> None:
        self.workers = [SinkWorker(sink, capacity) for sink in sinks]
        for worker in self.workers:
            worker.start()

    def __call__(self, result: Result) -> None:
        for worker in self.workers:
            worker.offer(result)

    @property
    def dropped(self) -> int:
        return sum(w.dropped for w in self.workers)

    def flush(self, timeout: float = 5.0) -> bool:
        return all(worker.drain(timeout) for worker in self.workers)

    def metrics(self) -> Iterable[Metric]:
        """Per sink: results its full queue turned away, and results it raised on."""
        dropped = CounterMetricFamily("edge_sink_dropped", "Results a sink's full queue turned away.", labels=["sink"])
        failed = CounterMetricFamily("edge_sink_failures", "Results a sink raised on.", labels=["sink"])
        for worker in self.workers:
            dropped.add_metric([worker.name], worker.dropped)
            failed.add_metric([worker.name], worker.failed)
        return [dropped, failed]

    def close(self, timeout: float = 5.0) -> bool:
        """Flush and close every sink, `timeout` seconds for all of them; False if any fell short."""
        deadline = time.monotonic() + timeout
        ok = True
        for worker in self.workers:
            ok = worker.stop(max(0.1, deadline - time.monotonic())) and ok
        return ok
