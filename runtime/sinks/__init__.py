"""Where results go. A sink is a plain callable taking a `Result`.

Every sink runs behind its own thread and bounded queue (`SinkWorker`), so a slow or
failing sink never stalls the loop: when its queue is full the result is dropped for
that sink and counted; an exception is logged once per kind and counted, never raised
into the loop. `flush` drains the queues at shutdown so no processed frame loses its line.

No result is lost silently: what a sink could not deliver (its queue was full, it raised,
its write failed, it was still undelivered when the stop timeout ran out, or, for MQTT,
the broker never acknowledged it) is counted per sink as lost (`FanOut.losses`,
`edge_sink_lost_total{sink}`), and a run that lost output ends with exit 1 (`OutputLost`).
A sink that knows about losses of its own exposes `lost` (a count) and `lost_why` (a phrase
with its counts, e.g. "752 not acknowledged by the broker by the stop timeout").
"""
from __future__ import annotations

import inspect
import io
import json
import logging
import os
import queue
import stat
import sys
import threading
import time
from typing import IO, Callable, Iterable, Optional

from prometheus_client.core import CounterMetricFamily, Metric

from runtime.errors import PipelineError, UsageError
from runtime.result import Result
from runtime.stats import SinkLoss

log = logging.getLogger("edge_run.sinks")

Sink = Callable[[Result], None]


class OutputLost(PipelineError):
    """Results the run processed but a sink could not deliver (exit 1): the message says how many, where, and why."""

    @classmethod
    def from_losses(cls, losses: Iterable[SinkLoss]) -> "OutputLost":
        losses = list(losses)
        total = sum(loss.count for loss in losses)
        where = "; ".join(f"{loss.sink}: {loss.why}" for loss in losses)
        return cls(f"{total} result(s) lost: {where}")


class JsonLinesSink:
    """One JSON object per line (schema in README): stdout by default, or a file.

    A line is written whole or not at all: the bytes go straight to the file descriptor
    (no hidden buffer that a later flush could finish after an error), and when a write
    fails part-way (disk full, file too large, I/O error, closed pipe) the partial line is
    cut off again (for a regular file) and nothing more is written. The results that did
    not make it are counted in `lost` and the reason is in `lost_why`; a file never ends
    in half a line.
    """

    def __init__(self, stream: IO, labels: tuple[str, ...], close_stream: bool = False, name: Optional[str] = None) -> None:
        """`stream`: a binary file object whose `write` returns the bytes it took (an unbuffered
        `open(..., "ab", buffering=0)`), or any text stream (written and flushed line by line)."""
        self.stream = stream
        self.labels = labels
        self.name = name or str(getattr(stream, "name", type(stream).__name__))
        self.written = 0  # lines written whole
        self.lost = 0  # results not written: the one whose write failed and every later one
        self.error = ""  # why the write failed
        self._binary = not isinstance(stream, io.TextIOBase)
        self._close_stream = close_stream

    @classmethod
    def to_path(cls, path: str, labels: tuple[str, ...]) -> "JsonLinesSink":
        """Append to `path`; a folder that does not exist, a directory or a read-only place is a `UsageError`."""
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UsageError(f"--out {path}: the folder {folder} does not exist")
        if os.path.isdir(path):
            raise UsageError(f"--out {path}: is a directory, not a file")
        try:
            stream = open(path, "ab", buffering=0)
        except OSError as exc:
            raise UsageError(f"--out {path}: cannot write there: {exc.strerror or exc}") from None
        return cls(stream, labels, close_stream=True, name=path)

    @classmethod
    def to_stdout(cls, labels: tuple[str, ...]) -> "JsonLinesSink":
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # replaced by a stream without a descriptor (embedding, tests)
            return cls(sys.stdout, labels, name="stdout")
        sys.stdout.flush()  # whatever was printed before comes first
        return cls(open(fd, "wb", buffering=0, closefd=False), labels, name="stdout")

    def __call__(self, result: Result) -> None:
        if self.lost:  # a failed write stops the file where its last whole line ends
            self.lost += 1
            return
        line = json.dumps(result.to_json(self.labels), separators=(",", ":")) + "\n"
        try:
            if self._binary:
                self._write_whole(line.encode("utf-8"))
            else:
                self.stream.write(line)
                self.stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            self.lost = 1
            self.error = str(getattr(exc, "strerror", None) or exc)
            log.error("results to %s: write failed (%s); no further results are written there", self.name, self.error)
            return
        self.written += 1

    @property
    def lost_why(self) -> str:
        return f"{self.lost} not written after a failed write: {self.error}" if self.lost else ""

    def _write_whole(self, data: bytes) -> None:
        done = 0
        try:
            while done < len(data):
                count = self.stream.write(data[done:] if done else data)
                if not count:  # a non-blocking descriptor that took nothing: as good as failed
                    raise OSError(0, "the output accepted no bytes")
                done += count
        except OSError:
            if done:
                self._cut_partial_line(done)
            raise

    def _cut_partial_line(self, partial: int) -> None:
        """Remove the `partial` bytes of an unfinished line from the end of a regular file."""
        try:
            fd = self.stream.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return  # a pipe or device: what went out cannot be taken back
            # O_APPEND or not, the position is right after the bytes this write put there.
            end = os.lseek(fd, 0, os.SEEK_CUR) - partial
            os.ftruncate(fd, end)
            os.lseek(fd, end, os.SEEK_SET)
        except (OSError, ValueError) as exc:
            log.error("results to %s: could not remove a partial last line: %s", self.name, exc)

    def flush(self) -> None:
        if not self._binary and not self.lost:
            self.stream.flush()

    def close(self) -> None:
        try:
            self.flush()
        except (OSError, ValueError):
            pass
        if self._close_stream:
            try:
                os.fsync(self.stream.fileno())  # at shutdown: the lines must outlive a power cut right after
            except (OSError, ValueError):
                pass
            self.stream.close()


class SinkWorker(threading.Thread):
    _STOP = object()

    def __init__(self, sink: Sink, capacity: int = 4096, name: Optional[str] = None) -> None:
        # What the summary and the metrics call it: the sink's own name (a path, a broker URL), else its function or class.
        self.label = name or str(getattr(sink, "name", "") or getattr(sink, "__name__", "") or type(sink).__name__)
        super().__init__(name=f"sink-{self.label}", daemon=True)
        self.sink = sink
        self._queue: "queue.Queue[object]" = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self.failed = 0
        self.delivered = 0
        self.undelivered = 0  # still queued when the stop timeout ran out
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

    @property
    def lost(self) -> int:
        """Results this sink will never deliver: turned away, raised on, left queued, or lost inside the sink."""
        return self.dropped + self.failed + self.undelivered + int(getattr(self.sink, "lost", 0) or 0)

    def loss(self) -> Optional[SinkLoss]:
        """What was lost and why, or None when everything offered was delivered."""
        reasons = [f"{count} {why}" for count, why in (
            (self.dropped, "turned away by its full queue"),
            (self.failed, "raised on"),
            (self.undelivered, "still queued at the stop timeout"),
        ) if count]
        own = int(getattr(self.sink, "lost", 0) or 0)
        if own:
            reasons.append(getattr(self.sink, "lost_why", "") or f"{own} lost in the sink")
        return SinkLoss(self.label, self.lost, ", ".join(reasons)) if reasons else None

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

        Returns False when something was left undelivered (the sink too slow or stuck);
        `undelivered` then counts it."""
        deadline = time.monotonic() + timeout
        drained = self.drain(timeout)
        try:
            self._queue.put(self._STOP, timeout=max(0.1, deadline - time.monotonic()))
        except queue.Full:
            self.undelivered = self._queue.unfinished_tasks
            return False
        self.join(max(0.1, deadline - time.monotonic()))
        if self.is_alive():  # stuck in the sink: what is still queued (less our stop marker) never goes out
            self.undelivered = max(0, self._queue.unfinished_tasks - 1)
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

    def losses(self, sinks: Optional[Iterable[Sink]] = None) -> list[SinkLoss]:
        """Per sink (of `sinks`, default all) that lost results: how many and why."""
        wanted = None if sinks is None else {id(sink) for sink in sinks}
        losses = (worker.loss() for worker in self.workers if wanted is None or id(worker.sink) in wanted)
        return [loss for loss in losses if loss is not None]

    def flush(self, timeout: float = 5.0) -> bool:
        return all(worker.drain(timeout) for worker in self.workers)

    def metrics(self) -> Iterable[Metric]:
        """Per sink: results its full queue turned away, results it raised on, and all it lost."""
        dropped = CounterMetricFamily("edge_sink_dropped", "Results a sink's full queue turned away.", labels=["sink"])
        failed = CounterMetricFamily("edge_sink_failures", "Results a sink raised on.", labels=["sink"])
        lost = CounterMetricFamily("edge_sink_lost", "Results a sink will never deliver: turned away, raised on, write "
                                   "failed, undelivered or unacknowledged at shutdown.", labels=["sink"])
        for worker in self.workers:
            dropped.add_metric([worker.label], worker.dropped)
            failed.add_metric([worker.label], worker.failed)
            lost.add_metric([worker.label], worker.lost)
        return [dropped, failed, lost]

    def close(self, timeout: float = 5.0) -> bool:
        """Flush and close every sink, `timeout` seconds for all of them; False if any fell short."""
        deadline = time.monotonic() + timeout
        ok = True
        for worker in self.workers:
            ok = worker.stop(max(0.1, deadline - time.monotonic())) and ok
        return ok
