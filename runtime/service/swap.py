"""Hot engine swap: a new engines folder loaded, checked and smoke-run off the loop, switched between batches.

`EngineReloader` runs on its own thread. It reloads when asked (`request()`, which SIGHUP
calls) and, with `watch`, when `manifest.json` is replaced (edge-export writes it last and
atomically, so a changed manifest means a finished set). A reload:

1. loads the manifest (every file's SHA-256 checked) and opens the engines with the same
   settings as the running ones; on TensorRT, plans that must be rebuilt are rebuilt here,
   while the loop goes on (and keeps feeding the watchdog);
2. smoke-runs them (`smoke_run`): a grey frame through the backbone, the GRU stepped from a
   zero state, one window; any NaN or Inf refuses the set;
3. decides whether the carried state means the same in the new engines (`carry_over`);
4. hands them to `Pipeline.swap_engines`, which switches before the next batch and keeps the
   old set for the new one's first `window` batches: a NaN or Inf from the new set on real
   frames there switches back to the old one, with the state it had.

A set that fails any step is a rollback: the running engines go on untouched, the failure is
logged and counted (`edge_engine_rollbacks_total`). Nothing is lost at the switch: the batch
in hand finishes on the old engines, the next batch runs on the new ones, frames keep their
order and every result names the engines that produced it (`Result.model`).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
from prometheus_client.core import CounterMetricFamily, InfoMetricFamily, Metric

from runtime.backends import EngineSet
from runtime.backends.engine import Engine
from runtime.errors import EdgeRunError, EngineError
from runtime.manifest import BACKBONE, GRU_STEP, MANIFEST_NAME, Manifest, load_manifest
from runtime.pipeline import Pipeline
from runtime.service.watch import FileWatch

log = logging.getLogger("edge_run.swap")

WATCH_EVERY = 1.0  # seconds between looks at manifest.json under --watch-engines
SMOKE_STEPS = 4  # GRU steps of the smoke run: enough for a state that blows up to show it
SWITCH_TIMEOUT = 30.0  # seconds the loop has to take the new set (it does at its next batch, or within 0.1 s idle)


def smoke_run(engines: EngineSet) -> None:
    """The new set's first frames, off the loop: raise EngineError on any non-finite output.

    A mid-grey image (zero after mean/std normalisation) through the backbone, its features
    through SMOKE_STEPS GRU steps from a zero state, and one window of them. Every engine is
    left with a zero state, as a run expects to find it.
    """
    backbone = engines.backbone
    image = backbone.input(backbone.input_names[0])
    image[:1] = 0.0
    backbone.run(1)
    features = backbone.output(backbone.output_names[0])[:1]
    _require_finite(features, "the backbone's features")
    step = engines.gru_step
    step.reset_state()
    x, logits = step.input("x"), step.output("logits")
    try:
        for _ in range(SMOKE_STEPS):
            x[:1] = features
            step.step(1)
            _require_finite(logits[:1], "the GRU step's logits")
    finally:
        step.reset_state()
    if engines.window_is_sequence:
        window = engines.gru_window
        window.input("x")[:1] = features[:, None, :]
        window.run(1)
        _require_finite(window.output("logits")[:1], "the GRU window's logits")


def _require_finite(values: np.ndarray, what: str) -> None:
    if not np.isfinite(values).all():
        raise EngineError(f"smoke run: {what} hold NaN or Inf")


def carry_over(old: EngineSet, new: EngineSet) -> tuple[bool, str]:
    """Whether the carried state (GRU state and windows) stays meaningful in `new`, and why.

    Kept when the backbone is the same file (same SHA-256: the same features), the head is
    the same cell with the same layers and carries states of the same names and shapes (a GRU
    of the same hidden size), the labels are the same and so is
    the window. Only the head's weights changed is a keep: the new head starts from the state
    the old one built over the same features (a head retrained or fine-tuned from the old one
    reads it; a new head settles within a window either way). Anything else resets every stream.
    """
    reasons = []
    if _backbone_hash(old) != _backbone_hash(new):
        reasons.append("backbone changed")
    if (old.manifest.cell, old.manifest.layers) != (new.manifest.cell, new.manifest.layers):
        reasons.append(f"cell changed ({old.manifest.layers}-layer {old.manifest.cell} -> {new.manifest.layers}-layer {new.manifest.cell})")
    elif _state_signature(old.gru_step) != _state_signature(new.gru_step):
        reasons.append(f"state changed ({_describe(old.gru_step)} -> {_describe(new.gru_step)})")
    if old.manifest.labels != new.manifest.labels:
        reasons.append("labels changed")
    if old.window != new.window:
        reasons.append(f"window changed ({old.window} -> {new.window})")
    if reasons:
        return False, "engine swap: " + ", ".join(reasons)
    head = "head changed" if _head_hash(old) != _head_hash(new) else "same head"
    return True, f"{head}; same backbone, state, labels and window: state kept"


def _backbone_hash(engines: EngineSet) -> str:
    # The ONNX file is what the features come from; a TensorRT plan rebuilt from it has another hash.
    manifest = engines.manifest
    entry = manifest.find(BACKBONE, "onnx", engines.precision) or manifest.find(BACKBONE, "tensorrt", engines.precision)
    return entry.sha256 if entry is not None else ""


def _head_hash(engines: EngineSet) -> str:
    entry = engines.manifest.find(GRU_STEP, "onnx")
    return entry.sha256 if entry is not None else ""


def _state_signature(engine: Engine) -> dict[str, tuple[int, ...]]:
    """Each carried state by input name, with its per-row shape: the pairs the state is saved and loaded by."""
    return {name: engine.input_specs[name].shape for name in engine.state_names}


def _describe(engine: Engine) -> str:
    return ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in _state_signature(engine).items())


class EngineReloader(FileWatch):
    """Reloads the engines folder on `request()` (SIGHUP) and, with `watch`, when its manifest changes.

    `open_set(manifest)` opens a set like the running one (backend, precision, streams).
    `on_swap(engines)` runs after each switch (the service points the checkpoint at the new
    identity there). A replaced set is closed after the switch, on the loop thread; the set in
    use at the end (`pipeline.engines`) is the caller's to close, as the initial one was.
    """

    def __init__(self, pipeline: Pipeline, folder: str | os.PathLike, open_set: Callable[[Manifest], EngineSet],
                 watch: bool = False, on_swap: Optional[Callable[[EngineSet], None]] = None,
                 watch_every: float = WATCH_EVERY) -> None:
        self.pipeline = pipeline
        self.folder = Path(folder)
        self.open_set = open_set
        self.on_swap = on_swap
        self.current = pipeline.engines
        self.model_id = self.current.manifest.model_id()
        self.swaps = 0
        self.rollbacks = 0
        self.last_failure: Optional[str] = None
        self.switching: Optional[str] = None  # the model handed to the loop, until it holds or is switched back
        self._lock = threading.Lock()
        super().__init__("engine-reloader", self.folder / MANIFEST_NAME,
                         lambda asked: self.reload("SIGHUP" if asked else "manifest changed"),
                         every=watch_every if watch else None, settle_after=True, join_timeout=SWITCH_TIMEOUT + 5.0)

    def metrics(self) -> Iterable[Metric]:
        info = InfoMetricFamily("edge_model", "The engines producing results now: their short manifest hash, as results carry it.",
                                labels=[])
        info.add_metric([], {"model": self.model_id})
        return [
            CounterMetricFamily("edge_engine_swaps", "Engine sets switched to while running (SIGHUP or --watch-engines).",
                                value=self.swaps),
            CounterMetricFamily("edge_engine_rollbacks", "New engine sets refused (failed to load, mismatched or non-finite "
                                "in their smoke run); the running set went on.", value=self.rollbacks),
            info,
        ]

    # The reloader thread --------------------------------------------------------------------------
    def reload(self, trigger: str = "reload") -> bool:
        """Load, check and smoke-run the folder's engines, then switch to them; False when refused
        (or unchanged). Runs on the reloader thread; callable directly in tests and tools."""
        with self._lock:
            started = time.perf_counter()
            try:
                manifest = load_manifest(self.folder)
            except EdgeRunError as exc:
                return self._refused(trigger, str(exc))
            if manifest.model_id() == self.model_id:
                log.info("%s: engines in %s unchanged (model %s)", trigger, self.folder, self.model_id)
                return False
            log.warning("%s: loading engines %s from %s", trigger, manifest.model_id(), self.folder)
            try:
                new = self.open_set(manifest)
            except Exception as exc:  # noqa: BLE001 - whatever the new set does wrong, the running one goes on
                return self._refused(trigger, f"model {manifest.model_id()}: {exc}")
            try:
                smoke_run(new)
                keep, why = carry_over(self.current, new)
                settled: list[Optional[str]] = []
                done = threading.Event()
                self.pipeline.swap_engines(new, keep, why, on_done=lambda retired, failure: self._settled(retired, failure, settled, done))
            except Exception as exc:  # noqa: BLE001
                new.close()
                return self._refused(trigger, f"model {manifest.model_id()}: {exc}")
            log.warning("%s: switching to model %s, loaded, checked and smoke-run in %.2f s (%s)", trigger, manifest.model_id(),
                        time.perf_counter() - started, why)
            self.switching = manifest.model_id()
            try:
                while not done.wait(0.1):
                    if self.stopping.is_set():  # the run ended before the switch was decided
                        return False
            finally:
                self.switching = None
            if settled[0] is not None:
                return self._refused(trigger, f"model {manifest.model_id()} switched back: {settled[0]}")
            # The set's own manifest: rewritten if TensorRT plans were rebuilt, and what results now carry.
            old_id, self.current, self.model_id = self.model_id, new, new.manifest.model_id()
            self.swaps += 1
            log.warning("engines swapped: model %s -> %s (%s)", old_id, self.model_id, why)
            if self.on_swap is not None:
                self.on_swap(new)
            return True

    def _settled(self, retired: EngineSet, failure: Optional[str], settled: list, done: threading.Event) -> None:
        retired.close()  # on the loop thread, after its last batch on the retired set
        settled.append(failure)
        done.set()

    def _refused(self, trigger: str, why: str) -> bool:
        self.rollbacks += 1
        self.last_failure = why
        log.error("%s: new engines refused, model %s goes on: %s", trigger, self.model_id, why)
        return False
