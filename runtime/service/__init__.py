"""A pipeline run as an unattended service: sinks, systemd, checkpoints, metrics, shutdown.

`Service.run` is the result loop the CLI runs:

    for result in pipeline:          # blocks while the source is stalled
        fanout(result)               # sinks on their own threads, never waited on
        heartbeat.beat()             # READY after the first frame, WATCHDOG while frames flow
        checkpointer.maybe_save()    # every K seconds, written off the loop thread

and around it: restore the checkpoint before the first frame; serve `/metrics` and
`/healthz`; a monitor thread that folds latency histograms and notices stalls; and on
stop (SIGTERM/SIGINT via `stop()`), in this order: finish the batch in hand, close the
sources, flush every sink, write the checkpoint, tell systemd STOPPING=1.

What a sink could not deliver is in `losses` (and the run's summary) after `run`;
`output_lost()` turns it into the error the CLI exits 1 with.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

from runtime import validation as valid
from runtime.backends import EngineSet
from runtime.errors import UsageError
from runtime.files import remove_stale_temporaries
from runtime.pipeline import Observer, Pipeline
from runtime.result import EmitMode, Result
from runtime.service import metrics
from runtime.service.checkpoint import Checkpointer, CheckpointStore, restore
from runtime.service.metrics import MetricsProvider, ResultLatency
from runtime.service.notify import Heartbeat, Notifier
from runtime.sinks import FanOut, OutputLost, Sink
from runtime.stats import RecentRate, SinkLoss

log = logging.getLogger("edge_run.service")

MONITOR_EVERY = 1.0  # seconds between the monitor thread's looks at the run


class Watcher(Protocol):
    """A thread beside the loop that changes the run through the pipeline's own methods (engine swap, streams)."""

    def start(self) -> object: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ServiceOptions:
    state_dir: Optional[Path] = None  # None: no checkpoints
    checkpoint_every: float = 30.0  # seconds
    checkpoint_max_age: float = 300.0  # seconds; older state is not restored
    restore: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: Optional[int] = None  # None: no HTTP endpoint; 0: any free port
    stall_after: float = 5.0  # seconds without a processed frame that make /healthz 503
    flush_timeout: float = 5.0  # seconds the sinks get to drain at shutdown, all together

    def __post_init__(self) -> None:
        # The same ranges as edge-run's flags (runtime.validation).
        valid.check_fields(self, {
            "checkpoint_every": valid.CHECKPOINT_EVERY, "checkpoint_max_age": valid.CHECKPOINT_MAX_AGE,
            "metrics_port": valid.PORT, "stall_after": valid.STALL_AFTER, "flush_timeout": valid.FLUSH_TIMEOUT,
        }, optional=("metrics_port",))


class Service:
    def __init__(
        self,
        pipeline: Pipeline,
        sinks: Sequence[Sink],
        options: ServiceOptions = ServiceOptions(),
        notifier: Optional[Notifier] = None,
        identity: str = "",
        engine_info: Optional[dict[str, str]] = None,
        on_result: Optional[Callable[[Result], None]] = None,
        observers: Sequence[Observer] = (),
        watchers: Sequence[Watcher] = (),
    ) -> None:
        """`identity` is the engines' `Manifest.identity()` (checkpoints are only valid for
        the same); `engine_info` labels the `edge_engine_info` metric. `observers` (the live
        preview, the recorder, event clips) are attached to the pipeline, register their
        metrics, serve their pages on the metrics server (those with `serve`), and are closed
        after the last frame. `watchers` (the engine reloader, the sources file) run beside
        the loop from its start to its shutdown."""
        self.pipeline = pipeline
        self.options = options
        self.notifier = notifier or Notifier(None)
        self.identity = identity
        self.engine_info = engine_info or {}
        self.on_result = on_result
        self.heartbeat = Heartbeat(self.notifier, pipeline.stats)
        self.result_latency = None
        sinks = list(sinks)
        self._outputs = list(sinks)  # the user's outputs; the metrics' own sink below losing a result loses no output
        self.losses: list[SinkLoss] = []  # per output that lost results, filled at shutdown
        # Sinks that count something of their own (the MQTT sink) register it with /metrics.
        self.watchers = list(watchers)
        self._metric_providers: list[MetricsProvider] = [part for part in (*sinks, *self.watchers) if isinstance(part, MetricsProvider)]
        self.observers = list(observers)
        for observer in self.observers:
            pipeline.add_observer(observer)
        self._metric_providers += [o for o in self.observers if isinstance(o, MetricsProvider)]
        if options.metrics_port is not None:
            self.result_latency = ResultLatency()
            sinks.append(self.result_latency)
        self.fanout = FanOut(sinks)
        self.checkpointer: Optional[Checkpointer] = None
        self.restored = None  # checkpoint.Restored when state was restored
        self.metrics_server = None
        self._fold: Callable[[], None] = lambda: None
        self._monitor_stop = threading.Event()
        self._monitor: Optional[threading.Thread] = None

    # Lifecycle ------------------------------------------------------------------------------------
    @property
    def lost(self) -> int:
        """Results processed but not delivered by some output (0 until `run` has returned)."""
        return sum(loss.count for loss in self.losses)

    def output_lost(self) -> Optional[OutputLost]:
        """The error a run that lost output ends with (exit 1), or None when every result arrived."""
        return OutputLost.from_losses(self.losses) if self.losses else None

    def engines_swapped(self, engines: EngineSet) -> None:
        """The loop now runs `engines`: checkpoints from here on are of their state."""
        self.identity = engines.manifest.identity()
        if self.checkpointer is not None:
            self.checkpointer.store.identity = self.identity

    def stop(self) -> None:
        """Finish the batch in hand and shut down (safe from a signal handler or any thread)."""
        self.pipeline.stop()

    def run(self) -> None:
        clean = False
        try:
            self._setup()
            self.pipeline.start()
            for watcher in self.watchers:
                watcher.start()
            self.notifier.status("waiting for the first frame")
            fanout, heartbeat, checkpointer, on_result = self.fanout, self.heartbeat, self.checkpointer, self.on_result
            # With both outputs a batch yields its steps before it pushes its features into the
            # windows: only after a window result (or with one output) do state and windows agree.
            both = self.pipeline.config.emit is EmitMode.BOTH
            for result in self.pipeline:
                fanout(result)
                heartbeat.beat()
                if checkpointer is not None and (not both or result.mode == "window"):
                    checkpointer.maybe_save()
                if on_result is not None:
                    on_result(result)
            clean = True
        finally:
            self._shutdown(clean)

    def _setup(self) -> None:
        options = self.options
        # Sampled by the monitor thread; read by STATUS=, /healthz and /metrics.
        self.recent_rate = self.heartbeat.rate = RecentRate()
        if options.state_dir is not None:
            # A process killed mid-write (SIGKILL, power loss) leaves its temporary behind.
            removed = remove_stale_temporaries(options.state_dir)
            if removed:
                log.warning("removed %d stale temporary file(s) of an interrupted write from %s: %s", len(removed),
                            options.state_dir, ", ".join(path.name for path in removed))
            store = CheckpointStore(options.state_dir, self.identity, options.checkpoint_max_age)
            if options.restore:
                self._restore(store)
            self.checkpointer = Checkpointer(store, self.pipeline, options.checkpoint_every)
        if options.metrics_port is not None:
            providers = [self.fanout, *self._metric_providers, *([self.checkpointer] if self.checkpointer else [])]
            try:
                self.metrics_server, self._fold = metrics.build(
                    self.pipeline, self.engine_info, options.metrics_host, options.metrics_port, options.stall_after,
                    providers=providers, result_latency=self.result_latency, recent_rate=self.recent_rate,
                    routes=[o for o in self.observers if isinstance(o, metrics.Routes)],
                )
            except OSError as exc:  # port taken, address not on this host: a setting to fix, not a crash
                raise UsageError(f"cannot serve metrics on {options.metrics_host}:{options.metrics_port}: {exc.strerror or exc}") from exc
        self._monitor = threading.Thread(target=self._watch, name="service-monitor", daemon=True)
        self._monitor.start()

    def _restore(self, store: CheckpointStore) -> None:
        existed = store.path.is_file()
        checkpoint, why = store.load()
        if checkpoint is None:
            # A first start has nothing to say; a checkpoint that was not used always says why.
            (log.warning if existed else log.info)("starting fresh: %s", why)
            return
        self.restored = restore(self.pipeline, checkpoint)
        if self.restored.restored:
            log.warning("%s", self.restored.describe(store.path, time.time() - checkpoint.saved_at))
        else:
            log.warning("starting fresh: checkpoint %s holds no state for these sources (%s)", store.path,
                        "; ".join(self.restored.fresh.values()))

    def _shutdown(self, clean: bool) -> None:
        self.notifier.stopping()
        self._monitor_stop.set()
        for watcher in self.watchers:
            watcher.close()
        self.pipeline.close()  # capture threads joined: no more frames
        for observer in self.observers:  # write what they hold (the last recording chunk, a clip's post-roll)
            close = getattr(observer, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # noqa: BLE001 - one observer failing must not stop the shutdown
                    log.error("closing %s failed: %s", type(observer).__name__, exc)
        if not self.fanout.close(self.options.flush_timeout):
            log.warning("some sinks did not drain within %.1f s", self.options.flush_timeout)
        self.losses = self.fanout.losses(self._outputs)
        self.pipeline.stats.sink_losses = list(self.losses)
        if self.checkpointer is not None:
            # Only state the loop finished computing is worth resuming from.
            if clean and self.checkpointer.save_now():
                log.info("checkpoint written to %s", self.checkpointer.store.path)
            else:
                self.checkpointer.close()
        if self._monitor is not None:
            self._monitor.join(timeout=2.0)
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.pipeline.stats.sink_dropped = self.fanout.dropped
        self.notifier.close()

    # Monitor thread -------------------------------------------------------------------------------
    def _watch(self) -> None:
        """Fold latency histograms, sample the recent frame rate and notice stalls; never pings the
        watchdog (only the loop does)."""
        stats, rate = self.pipeline.stats, self.recent_rate
        stalled = False
        while not self._monitor_stop.wait(MONITOR_EVERY):
            self._fold()
            last = stats.last_frame_time
            if last is None:
                continue  # the rate starts at the first frame, not at engine load
            now = time.perf_counter()
            rate.sample(stats.total("frames"), now)
            age = now - last
            if age > self.options.stall_after:
                if not stalled:
                    log.warning("no frame processed for %.0f s (source stalled or engine hung)", age)
                stalled = True
                self.heartbeat.report_stall(age)
            elif stalled:
                stalled = False
                log.warning("frames flowing again")
