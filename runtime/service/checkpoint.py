"""Carried state that survives a restart: checkpoints of the recurrent states and ring buffers.

A checkpoint holds, per stream, a row of each of the head's named states (`h`, or h and c
of every LSTM layer), stored and matched by name, never by position; the buffered window of
features (and how many were pushed, so the stride schedule continues), the source's
name, whether it is live, and how far it got. It is written every K seconds and at
shutdown, atomically (temporary file, fsync, rename: `files.atomic_write_bytes`), as an
uncompressed `.npz` read back with `allow_pickle=False`.

At start a checkpoint is used only when it was written for the same engines
(`Manifest.identity()`) and is younger than a limit; a stream takes the state saved
under the same source name. A file (not live) source that had not ended also resumes
after the last frame it processed, so a restarted run continues the file instead of
repeating it. Anything else starts fresh and says why in one log line. A checkpoint
that cannot be read is set aside (renamed `*.corrupt-<time>`), reported, and the run
starts fresh: a bad file never stops the service.

Format 1 (before heads had named states) saved one array `hidden`: the one-layer GRU's
`h`, the only state a runtime of that format knew. It is read as the state `h`, so such a
checkpoint resumes a GRU of the same engines, and any other head starts fresh ("saved
state has other state names"); the identity check refuses it for other engines anyway.
"""
from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from runtime.errors import CheckpointError
from runtime.files import atomic_write_bytes
from runtime.pipeline import Pipeline, PipelineState, StreamState

log = logging.getLogger("edge_run.checkpoint")

CHECKPOINT_NAME = "checkpoint.npz"
FORMAT = 2
LEGACY_FORMAT = 1  # one `hidden` array: the one-layer GRU's `h`
LEGACY_STATE = "h"
CLOCK_SKEW = 5.0  # seconds a checkpoint may be "from the future" before the clock is distrusted


@dataclass(frozen=True)
class Checkpoint:
    identity: str  # Manifest.identity() of the engines that made the state
    saved_at: float  # wall-clock seconds since the epoch (must survive a reboot)
    states: dict[str, np.ndarray]  # state input name -> [N, H]
    streams: tuple[StreamState, ...]


@dataclass(frozen=True)
class Restored:
    """What `restore` did, for the one log line and the tests."""

    restored: tuple[int, ...]  # stream indices that took saved state
    resumed: dict[int, int]  # stream index -> position a file source resumed at
    fresh: dict[int, str]  # stream index -> why it starts fresh

    def describe(self, path: Path, age: float) -> str:
        parts = [f"state restored from {path} (saved {age:.0f} s ago) for stream(s) "
                 + ", ".join(str(i) for i in self.restored)]
        parts += [f"stream {i} resumes at frame {pos}" for i, pos in sorted(self.resumed.items())]
        parts += [f"stream {i} starts fresh ({why})" for i, why in sorted(self.fresh.items())]
        return "; ".join(parts)


# Encoding ----------------------------------------------------------------------------------------
def encode(checkpoint: Checkpoint) -> bytes:
    meta = {
        "format": FORMAT,
        "identity": checkpoint.identity,
        "saved_at": checkpoint.saved_at,
        "states": sorted(checkpoint.states),
        "streams": [{"name": s.name, "live": s.live, "position": s.position, "finished": s.finished, "pushed": s.pushed}
                    for s in checkpoint.streams],
    }
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for name, value in checkpoint.states.items():
        arrays[f"state.{name}"] = np.asarray(value, np.float32)
    for i, stream in enumerate(checkpoint.streams):
        arrays[f"ring{i}"] = np.asarray(stream.ring, np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode(data: bytes) -> Checkpoint:
    """The checkpoint in `data`; CheckpointError for anything truncated, foreign or inconsistent."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, LEGACY_FORMAT):
                raise CheckpointError(f"unknown checkpoint format {meta.get('format') if isinstance(meta, dict) else meta!r}")
            if meta["format"] == LEGACY_FORMAT:
                states = {LEGACY_STATE: np.array(npz["hidden"], np.float32)}
            else:
                states = {str(name): np.array(npz[f"state.{name}"], np.float32) for name in meta["states"]}
            streams = []
            for i, info in enumerate(meta["streams"]):
                streams.append(StreamState(
                    name=str(info["name"]), live=bool(info["live"]), position=int(info["position"]),
                    finished=bool(info["finished"]), ring=np.array(npz[f"ring{i}"], np.float32), pushed=int(info["pushed"]),
                ))
            checkpoint = Checkpoint(str(meta["identity"]), float(meta["saved_at"]), states, tuple(streams))
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{type(exc).__name__}: {exc}") from exc
    if not checkpoint.states:
        raise CheckpointError("no recurrent state saved")
    for name, value in checkpoint.states.items():
        if value.ndim != 2 or value.shape[0] != len(checkpoint.streams):
            raise CheckpointError(f"state {name} of shape {value.shape} for {len(checkpoint.streams)} streams")
        if not np.isfinite(value).all():
            raise CheckpointError(f"state {name} holds NaN or Inf")
    return checkpoint


# Taking and applying state -----------------------------------------------------------------------
def snapshot(pipeline: Pipeline, identity: str) -> Checkpoint:
    """The pipeline's carried state now (call from the loop thread, or after the loop ended)."""
    state = pipeline.export_state()
    return Checkpoint(identity, time.time(), state.states, state.streams)


def restore(pipeline: Pipeline, checkpoint: Checkpoint) -> Restored:
    """Load the saved state into the streams it belongs to; call before the pipeline starts.

    Stream i takes the saved stream with the same source name (the same index first), and
    each state by its name: saved states must name exactly the head's states, in its shapes.
    A file source that had not ended skips the frames it already processed.
    """
    current = pipeline.export_state()  # fresh: names, shapes and empty windows of this run's streams
    states = {name: np.zeros_like(value) for name, value in current.states.items()}
    mismatch = _state_mismatch(checkpoint.states, states)
    streams = list(current.streams)
    taken: list[int] = []
    fresh: dict[int, str] = {}
    unused = list(range(len(checkpoint.streams)))
    for i, stream in enumerate(current.streams):
        matches = [j for j in unused if checkpoint.streams[j].name == stream.name]
        if not matches:
            fresh[i] = f"no saved state for source {stream.name}"
            continue
        j = i if i in matches else matches[0]
        unused.remove(j)
        saved = checkpoint.streams[j]
        if saved.finished and not saved.live:
            fresh[i] = f"the previous run played {stream.name} to its end"
            continue
        width = stream.ring.shape[1]
        if mismatch:
            fresh[i] = mismatch
            continue
        if saved.ring.size and saved.ring.shape[1] != width:
            fresh[i] = "saved state has another shape"
            continue
        for name, value in states.items():
            value[i] = checkpoint.states[name][j]
        streams[i] = saved
        taken.append(i)
    if not taken:
        return Restored((), {}, fresh)
    resumed = pipeline.import_state(PipelineState(states, tuple(streams)))
    return Restored(tuple(taken), resumed, fresh)


def _state_mismatch(saved: dict[str, np.ndarray], current: dict[str, np.ndarray]) -> str:
    """Why the saved states cannot feed this head ("" when they can): other names, or other widths."""
    if set(saved) != set(current):
        return (f"saved state has other state names ({', '.join(sorted(saved))}; "
                f"this head carries {', '.join(sorted(current))})")
    if any(saved[name].shape[1:] != current[name].shape[1:] for name in current):
        return "saved state has another shape"
    return ""


# The store ---------------------------------------------------------------------------------------
class CheckpointStore:
    """One checkpoint file in a state folder, with the rules for trusting it."""

    def __init__(self, folder: str | os.PathLike, identity: str, max_age: float) -> None:
        self.folder = Path(folder)
        self.identity = identity
        self.max_age = max_age
        self.path = self.folder / CHECKPOINT_NAME

    def save(self, checkpoint: Checkpoint) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, encode(checkpoint))

    def load(self, now: Optional[float] = None) -> tuple[Optional[Checkpoint], str]:
        """(checkpoint, "") when it may be used, else (None, why the run starts fresh)."""
        if not self.path.is_file():
            return None, f"no checkpoint at {self.path}"
        try:
            checkpoint = decode(self.path.read_bytes())
        except (CheckpointError, OSError) as exc:
            aside = self.set_aside()
            where = f"; set aside as {aside.name}" if aside else ""
            return None, f"checkpoint {self.path} is unreadable ({exc}){where}"
        now = time.time() if now is None else now
        age = now - checkpoint.saved_at
        if checkpoint.identity != self.identity:
            return None, (f"checkpoint {self.path} was written for other engines (manifest {checkpoint.identity[:12]}…, "
                          f"these are {self.identity[:12]}…)")
        if age < -CLOCK_SKEW:
            # Jetsons have no RTC battery by default: before NTP the clock may be far behind.
            return None, f"checkpoint {self.path} is dated {-age:.0f} s in the future (is the system clock set?)"
        if age > self.max_age:
            return None, f"checkpoint {self.path} is {age:.0f} s old (limit {self.max_age:.0f} s)"
        return checkpoint, ""

    def set_aside(self) -> Optional[Path]:
        """Rename a bad checkpoint out of the way, keeping it for a post-mortem."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(self.path, aside)
            return aside
        except OSError as exc:
            log.error("cannot set aside %s (%s)", self.path, exc)
            return None


class Checkpointer:
    """Periodic checkpoints from the loop: snapshot in the loop thread, write in the background.

    The snapshot is a few small array copies; the write (with its fsync, which can take
    tens of milliseconds on an SD card) happens on a writer thread so the loop never waits.
    """

    def __init__(self, store: CheckpointStore, pipeline: Pipeline, every: float) -> None:
        self.store = store
        self.pipeline = pipeline
        self.every = every
        self.saved = 0
        self.failed = 0
        self.last_saved: Optional[float] = None  # wall clock of the last good write
        self._next = time.monotonic() + every
        self._pending: Optional[Checkpoint] = None
        self._cond = threading.Condition()
        self._closed = False
        self._writing = False
        self._thread = threading.Thread(target=self._writer, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def metrics(self) -> Iterable[Metric]:
        """Checkpoints written and failed, and when the last one was written, for /metrics."""
        written = CounterMetricFamily("edge_checkpoints", "State checkpoints written, by result.", labels=["result"])
        written.add_metric(["ok"], self.saved)
        written.add_metric(["failed"], self.failed)
        yield written
        if self.last_saved is not None:
            yield GaugeMetricFamily("edge_checkpoint_last_success_timestamp_seconds",
                                    "Wall-clock time of the last checkpoint written.", value=self.last_saved)

    def maybe_save(self) -> None:
        """Loop thread, after each result: hand a snapshot to the writer every `every` seconds."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        checkpoint = snapshot(self.pipeline, self.store.identity)
        with self._cond:
            self._pending = checkpoint  # a slower disk only ever loses stale snapshots
            self._cond.notify()

    def save_now(self) -> bool:
        """Write the current state synchronously (at shutdown, after the loop ended)."""
        self._stop_writer()
        return self._write(snapshot(self.pipeline, self.store.identity))

    def close(self) -> None:
        self._stop_writer()

    def _stop_writer(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10.0)

    def _writer(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                checkpoint, self._pending = self._pending, None
                if checkpoint is None:
                    return
            self._write(checkpoint)

    def _write(self, checkpoint: Checkpoint) -> bool:
        try:
            self.store.save(checkpoint)
        except OSError as exc:  # a full or read-only disk costs the checkpoint, not the service
            self.failed += 1
            if self.failed == 1:
                log.error("cannot write checkpoint %s: %s (further failures are only counted)", self.store.path, exc)
            return False
        self.saved += 1
        self.last_saved = checkpoint.saved_at
        return True
