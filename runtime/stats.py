"""Counters and latency distributions for one run, kept in preallocated arrays.

Latencies are seconds internally (perf_counter differences); milliseconds only appear in
the human summary. Each recorder keeps the last `capacity` samples in a circular array
whose pages are touched when it is made, so resident memory stays flat however long the
service runs (an untouched `np.zeros` array would grow the RSS as samples arrive).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("edge_run.pipeline")

STAGES = ("capture_wait", "preprocess", "cnn", "gru", "end_to_end")
MISS_WINDOW = 100  # results over which a sustained deadline-miss rate is judged
MISS_WARN_RATE = 0.5


class LatencyRecorder:
    def __init__(self, capacity: int = 1 << 16) -> None:
        self._samples = np.empty(capacity, np.float64)
        self._samples.fill(0.0)  # commit the pages now, not one by one on the hot path
        self._next = 0
        self.count = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self._samples[self._next] = seconds
        self._next = (self._next + 1) % len(self._samples)
        self.count += 1
        self.total += seconds

    def values(self) -> np.ndarray:
        return self._samples[: min(self.count, len(self._samples))]

    def recent_mean(self, last: int) -> float:
        n = min(self.count, last, len(self._samples))
        if n == 0:
            return 0.0
        idx = (self._next - 1 - np.arange(n)) % len(self._samples)
        return float(self._samples[idx].mean())

    def percentiles(self, qs=(50, 95, 99)) -> dict[str, float]:
        values = self.values()
        if len(values) == 0:
            return {f"p{q}": float("nan") for q in qs}
        return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(values, qs))}


@dataclass(frozen=True)
class SinkLoss:
    """Results one sink (named as the summary and `edge_sink_lost_total` name it) could not deliver, and why."""

    sink: str
    count: int
    why: str


@dataclass
class StreamCounters:
    frames: int = 0  # frames that reached the engines
    results: int = 0
    dropped: int = 0  # stale frames replaced before the loop took them
    corrupt: int = 0  # empty or malformed frames skipped
    nonfinite: int = 0  # NaN/Inf engine outputs (state reset, nothing emitted)
    misses: int = 0  # results later than the budget
    resets: dict[str, int] = field(default_factory=dict)  # by reason
    reconnects: int = 0
    missing: int = 0  # frames a video declared that its decoder never delivered (known at its end)

    def reset_count(self) -> int:
        return sum(self.resets.values())


class RunStats:
    """Everything the summary, metrics and health checks read. Updated from the loop thread."""

    def __init__(self, num_streams: int) -> None:
        self.streams = [StreamCounters() for _ in range(num_streams)]
        self.stages = {stage: LatencyRecorder() for stage in STAGES}
        # End-to-end latency per stream (the aggregate is stages["end_to_end"]).
        self.stream_latency = [LatencyRecorder(1 << 14) for _ in range(num_streams)]
        self.lock = threading.Lock()  # for readers in other threads (metrics, status)
        self.started = None  # perf_counter at the first processed frame
        self.last_frame_time = None  # perf_counter of the most recent processed frame
        self.sink_dropped = 0
        self.sink_losses: list[SinkLoss] = []  # set at shutdown: output that never arrived (the run exits 1)
        self.batches = 0  # engine batches run (frames / batches = mean batch size)
        self.accuracy: dict[str, list[int]] = {}  # mode -> [correct, total]

    def add_stream(self) -> None:
        """Counters for one more stream (a stream added while the run goes on), numbered next."""
        with self.lock:
            self.streams.append(StreamCounters())
            self.stream_latency.append(LatencyRecorder(1 << 14))

    def score(self, mode: str, correct: bool) -> None:
        entry = self.accuracy.setdefault(mode, [0, 0])
        entry[0] += int(correct)
        entry[1] += 1

    def total(self, name: str) -> int:
        if name == "resets":
            return sum(s.reset_count() for s in self.streams)
        return sum(getattr(s, name) for s in self.streams)

    def fps(self) -> float:
        if self.started is None or self.last_frame_time is None or self.last_frame_time <= self.started:
            return 0.0
        return (self.total("frames") - 1) / (self.last_frame_time - self.started)

    def summary_lines(self) -> list[str]:
        lines = [
            f"frames {self.total('frames')}  results {self.total('results')}  fps {self.fps():.1f}  "
            f"dropped {self.total('dropped')}  deadline misses {self.total('misses')}  "
            f"resets {self.total('resets')}  non-finite {self.total('nonfinite')}  corrupt {self.total('corrupt')}  "
            f"reconnects {self.total('reconnects')}"
            + (f"  missing {self.total('missing')}" if self.total("missing") else "")
            + (f"  sink drops {self.sink_dropped}" if self.sink_dropped else "")
        ]
        for loss in self.sink_losses:
            lines.append(f"output lost: {loss.count} result(s) to {loss.sink} ({loss.why})")
        lines.append("latency ms        p50      p95      p99")
        for stage, recorder in self.stages.items():
            if recorder.count:
                p = recorder.percentiles()
                lines.append(f"  {stage:<13} {p['p50']*1e3:8.2f} {p['p95']*1e3:8.2f} {p['p99']*1e3:8.2f}")
        for mode, (correct, total) in sorted(self.accuracy.items()):
            if total:
                noun = "windows" if mode == "window" else "steps"
                lines.append(f"{mode} accuracy {100.0 * correct / total:.1f}% ({total} {noun})")
        return lines


class DeadlineMisses:
    """Counts results later than `budget` seconds, and warns once when most recent ones are.

    The last MISS_WINDOW results are a ring of flags with a running sum, so judging a result
    costs a few integer operations; the one warning names the stage that dominates.
    """

    def __init__(self, stats: RunStats, budget: float) -> None:
        self.stats = stats
        self.budget = budget
        self._flags = [False] * MISS_WINDOW
        self._next = 0
        self._count = 0
        self._judged = 0
        self._warned = False

    def judge(self, latency: float, counters: StreamCounters) -> None:
        missed = latency > self.budget
        if missed:
            counters.misses += 1
        slot = self._next
        self._count += missed - self._flags[slot]
        self._flags[slot] = missed
        self._next = (slot + 1) % MISS_WINDOW
        self._judged += 1
        if not self._warned and self._judged >= MISS_WINDOW and self._count > MISS_WARN_RATE * MISS_WINDOW:
            self._warned = True
            stages = self.stats.stages
            stage = max(("preprocess", "cnn", "gru", "capture_wait"), key=lambda s: stages[s].recent_mean(MISS_WINDOW))
            log.warning(
                "%.0f%% of the last %d results missed the %.1f ms budget; %s dominates (%.1f ms recent mean)",
                100 * self._count / MISS_WINDOW, MISS_WINDOW, self.budget * 1e3, stage,
                stages[stage].recent_mean(MISS_WINDOW) * 1e3,
            )


RATE_WINDOW = 10.0  # seconds the recent frame rate is measured over


class RecentRate:
    """Frames per second over the last `window` seconds, beside `RunStats.fps()` (since the first frame).

    A lifetime average hides a stall or a recovery for minutes (and reads 269 fps after two
    frames 4 ms apart); this one follows them within `window` seconds. It is fed `(time,
    frame total)` samples by a thread that wakes about once a second (the service's monitor),
    never by the loop, and keeps only the samples of the last window (plus the one just
    before it, so the rate spans the whole window once the run is that old).
    """

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: list[tuple[float, int]] = []
        self._lock = threading.Lock()  # one sampling thread, readers in the HTTP server and the loop

    def sample(self, total: int, now: float) -> None:
        """Record the frame total at `now` (perf_counter seconds)."""
        with self._lock:
            samples = self._samples
            samples.append((now, total))
            start = now - self.window
            drop = 0
            while drop + 1 < len(samples) - 1 and samples[drop + 1][0] <= start:
                drop += 1
            del samples[:drop]

    def rate(self) -> float | None:
        """Frames per second between the oldest and newest samples kept; None before two samples."""
        with self._lock:
            if len(self._samples) < 2:
                return None
            (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None
