"""Prometheus metrics and a health check on one small HTTP server.

Two paths of its own: `/metrics` (Prometheus text format, from a private
prometheus-client registry) and `/healthz` (200 while frames flow, 503 before the first
frame or when the source or an engine has stalled); nothing they serve names a source, a
file or a setting. `Routes` (the live preview, `--preview`) may add pages; any other path
is a 404. The server listens on 127.0.0.1 unless an address is given.

Nothing here runs in the loop: counters are read from `RunStats` when scraped, stage
latencies are folded from the loop's own sample arrays into histogram buckets (on each
scrape and every few seconds from the service's monitor thread), and the end-to-end
latency per stream is observed by `ResultLatency`, a sink on its own worker thread.

Names follow the house style: `edge_` prefix, seconds, counters ending in `_total`,
streams labelled by index (never by source URI, which may carry a host name).
"""
from __future__ import annotations

import bisect
import ipaddress
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Optional, Protocol, Sequence, runtime_checkable
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from runtime.pipeline import Pipeline
from runtime.result import Result
from runtime.stats import RecentRate, RunStats

log = logging.getLogger("edge_run.metrics")

DEFAULT_HOST = "127.0.0.1"
# Seconds; 33 ms is one frame at 30 fps, the usual budget.
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
LOOP_STAGES = ("capture_wait", "preprocess", "cnn", "gru")
DEFAULT_STALL_AFTER = 5.0


class _Buckets:
    """Non-cumulative bucket counts for BUCKETS (+Inf last) and the sum of what went in."""

    def __init__(self) -> None:
        self.counts = np.zeros(len(BUCKETS) + 1, np.int64)
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1  # `le` buckets: value <= bound
        self.sum += value

    def add_many(self, values: np.ndarray) -> None:
        self.counts += np.bincount(np.searchsorted(BUCKETS, values, side="left"), minlength=len(self.counts))
        self.sum += float(values.sum())

    def exposition(self) -> list[tuple[str, float]]:
        cumulative = np.cumsum(self.counts)
        return [(repr(bound), float(n)) for bound, n in zip(BUCKETS, cumulative)] + [("+Inf", float(cumulative[-1]))]


class StageLatency:
    """Folds the loop's per-stage sample arrays (`RunStats.stages`) into histograms.

    The recorders keep the last 65536 samples in a circular array; folding every few
    seconds reads only the samples added since the previous fold.
    """

    def __init__(self, stats: RunStats, stages: Iterable[str] = LOOP_STAGES) -> None:
        self.stats = stats
        self.buckets = {stage: _Buckets() for stage in stages}
        self._seen = {stage: 0 for stage in self.buckets}
        self._lock = threading.Lock()

    def fold(self) -> None:
        with self._lock:
            for stage, buckets in self.buckets.items():
                recorder = self.stats.stages[stage]
                count = recorder.count  # read before the samples: later ones wait for the next fold
                values = recorder.values()
                new = min(count - self._seen[stage], len(values))
                if new > 0:
                    positions = np.arange(count - new, count) % len(values)
                    buckets.add_many(values[positions])
                self._seen[stage] = count


class ResultLatency:
    """A sink: capture-to-result latency per stream, from the results themselves."""

    def __init__(self) -> None:
        self.streams: dict[int, _Buckets] = {}
        self._lock = threading.Lock()

    def __call__(self, result: Result) -> None:
        with self._lock:
            buckets = self.streams.get(result.stream)
            if buckets is None:
                buckets = self.streams[result.stream] = _Buckets()
            buckets.add(result.latency)

    def snapshot(self) -> dict[int, tuple[list[tuple[str, float]], float]]:
        with self._lock:
            return {stream: (b.exposition(), b.sum) for stream, b in self.streams.items()}


class Health:
    """Healthy while frames flow: one was processed within `stall_after` seconds.

    Its text gives the recent frame rate (`rate`, fed by the service's monitor thread) and
    the rate since the first frame.
    """

    def __init__(self, stats: RunStats, stall_after: float = DEFAULT_STALL_AFTER, rate: Optional[RecentRate] = None) -> None:
        self.stats = stats
        self.stall_after = stall_after
        self.rate = rate if rate is not None else RecentRate()

    def recent_fps(self) -> float:
        """Frames per second over the rate's window; NaN until it has been sampled twice."""
        recent = self.rate.rate()
        return float("nan") if recent is None else recent

    def last_frame_age(self) -> Optional[float]:
        last = self.stats.last_frame_time
        return None if last is None else max(0.0, time.perf_counter() - last)

    def check(self) -> tuple[bool, str]:
        age = self.last_frame_age()
        if age is None:
            return False, "starting: no frame processed yet"
        if age > self.stall_after:
            return False, f"stalled: no frame for {age:.1f} s"
        recent = self.rate.rate()
        now = "measuring" if recent is None else f"{recent:.1f} fps"
        return True, f"ok: {now} over the last {self.rate.window:.0f} s, {self.stats.fps():.1f} fps since the first frame"


@runtime_checkable
class MetricsProvider(Protocol):
    """A component that registers its own metrics (a sink, the checkpointer): it yields them at scrape time."""

    def metrics(self) -> Iterable[Metric]: ...


@runtime_checkable
class Routes(Protocol):
    """Pages served beside /metrics (the live preview): `serve` answers `path` on `handler` and
    returns True, or returns False to leave it to the next routes (and finally a 404)."""

    def serve(self, handler: BaseHTTPRequestHandler, path: str, send_body: bool) -> bool: ...


class RunCollector(Collector):
    """Everything a scrape shows: the run's counters read at scrape time, then each provider's metrics."""

    def __init__(
        self,
        stats: RunStats,
        engine_info: dict[str, str],
        health: Health,
        stage_latency: StageLatency,
        result_latency: ResultLatency,
        providers: Sequence[MetricsProvider] = (),
    ) -> None:
        self.stats = stats
        self.engine_info = dict(engine_info)
        self.health = health
        self.stage_latency = stage_latency
        self.result_latency = result_latency
        self.providers = list(providers)

    def collect(self) -> Iterable[Metric]:
        stats = self.stats
        per_stream = {
            "frames": ("edge_frames", "Frames that reached the engines."),
            "results": ("edge_results", "Results emitted (per-step and per-window)."),
            "dropped": ("edge_dropped_frames", "Stale frames dropped before the loop took them (newest wins)."),
            "misses": ("edge_deadline_misses", "Results later than the latency budget."),
            "nonfinite": ("edge_nonfinite_outputs", "Engine outputs holding NaN or Inf (state reset, nothing emitted)."),
            "corrupt": ("edge_corrupt_frames", "Empty or malformed frames skipped."),
            "reconnects": ("edge_reconnects", "Times a live source was lost and reopened."),
            "missing": ("edge_missing_frames", "Frames a video file declared that its decoder never delivered (counted at its end)."),
        }
        families = {field: CounterMetricFamily(name, doc, labels=["stream"]) for field, (name, doc) in per_stream.items()}
        resets = CounterMetricFamily("edge_resets", "Carried-state resets, by reason.", labels=["stream", "reason"])
        for index, counters in enumerate(stats.streams):
            label = [str(index)]
            for field, family in families.items():
                family.add_metric(label, getattr(counters, field))
            for reason, count in dict(counters.resets).items():
                resets.add_metric([str(index), reason], count)
        yield from families.values()
        yield resets

        self.stage_latency.fold()
        latency = HistogramMetricFamily("edge_stage_latency_seconds", "Latency per stage in seconds. capture_wait, "
                                        "preprocess, cnn and gru are recorded per batch by the loop (stream=\"all\" when "
                                        "it runs several streams; preprocess is timed in the capture threads); end_to_end "
                                        "is per stream.", labels=["stage", "stream"])
        shared = "0" if len(stats.streams) == 1 else "all"
        for stage, buckets in self.stage_latency.buckets.items():
            latency.add_metric([stage, shared], buckets.exposition(), buckets.sum)
        for stream, (exposition, total) in sorted(self.result_latency.snapshot().items()):
            latency.add_metric(["end_to_end", str(stream)], exposition, total)
        yield latency

        info = GaugeMetricFamily("edge_engine_info", "The engines in use (value is always 1).", labels=sorted(self.engine_info))
        info.add_metric([self.engine_info[k] for k in sorted(self.engine_info)], 1)
        yield info
        yield GaugeMetricFamily("edge_frames_per_second", f"Processed frames per second over the last {self.health.rate.window:.0f} s "
                                "(during a stall it falls, to 0 once the stall is that long; NaN until measured, about 2 s after the first frame).",
                                value=self.health.recent_fps())
        yield GaugeMetricFamily("edge_frames_per_second_lifetime", "Processed frames per second from the first to the latest "
                                "frame (unchanged during a stall).", value=stats.fps())
        age = self.health.last_frame_age()
        yield GaugeMetricFamily("edge_last_frame_age_seconds", "Seconds since the last processed frame (-1 before the first).",
                                value=-1.0 if age is None else age)
        yield GaugeMetricFamily("edge_healthy", "1 while frames flow (what /healthz answers 200 for).", value=float(self.health.check()[0]))

        for provider in self.providers:
            yield from provider.metrics()


def send_page(handler: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str, send_body: bool) -> None:
    """One whole response (never cached: every page of this server is live); HEAD gets the headers only."""
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
    if send_body:
        handler.wfile.write(body)


class _Handler(BaseHTTPRequestHandler):
    server_version = "edge-run"
    sys_version = ""  # do not advertise the Python version
    timeout = 10  # a client that connects and sends nothing must not hold a thread for ever

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        server: _Server = self.server  # type: ignore[assignment]
        if path == "/metrics":
            code, body, content_type = 200, generate_latest(server.registry), CONTENT_TYPE_LATEST
        elif path == "/healthz":
            ok, text = server.health.check()
            code, body, content_type = (200 if ok else 503), (text + "\n").encode(), "text/plain; charset=utf-8"
        elif any(routes.serve(self, path, send_body) for routes in server.routes):
            return
        else:
            code, body, content_type = 404, b"not found: this server has /metrics and /healthz\n", "text/plain; charset=utf-8"
        send_page(self, code, body, content_type, send_body)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, health: Health, ipv6: bool,
                 routes: Sequence[Routes] = ()) -> None:
        self.address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.registry = registry
        self.health = health
        self.routes = tuple(routes)
        super().__init__(address, _Handler)


class MetricsServer:
    """`/metrics` and `/healthz` on `host:port` (port 0 picks a free one; see `.port`)."""

    def __init__(self, collector: Collector, health: Health, host: str = DEFAULT_HOST, port: int = 0,
                 routes: Sequence[Routes] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.collector = collector
        try:
            ipv6 = ipaddress.ip_address(host.strip("[]")).version == 6
        except ValueError:  # a host name: let the resolver pick IPv4
            ipv6 = False
        self._server = _Server((host.strip("[]"), port), self.registry, health, ipv6, routes)
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "MetricsServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=2.0)
            self._thread = None
        self._server.server_close()


def engine_info(backend: str, precision: str, manifest_identity: str) -> dict[str, str]:
    return {"backend": backend, "precision": precision, "manifest": manifest_identity[:16]}


def build(
    pipeline: Pipeline,
    info: dict[str, str],
    host: str = DEFAULT_HOST,
    port: int = 0,
    stall_after: float = DEFAULT_STALL_AFTER,
    providers: Sequence[MetricsProvider] = (),
    result_latency: Optional[ResultLatency] = None,
    recent_rate: Optional[RecentRate] = None,
    routes: Sequence[Routes] = (),
) -> tuple[MetricsServer, Callable[[], None]]:
    """A started server for `pipeline`'s counters and the `providers`' metrics, and the fold
    function the monitor thread calls. `recent_rate` is the tracker the caller samples
    (without one the recent frame rate stays NaN)."""
    health = Health(pipeline.stats, stall_after, recent_rate)
    stages = StageLatency(pipeline.stats)
    collector = RunCollector(pipeline.stats, info, health, stages, result_latency or ResultLatency(), providers)
    return MetricsServer(collector, health, host, port, routes).start(), stages.fold
