"""`--record DIR`: an observer that writes each stream's per-step features, states and results in chunks.

In the loop thread a step costs a few row copies into a preallocated chunk buffer. A full
buffer goes to the writer thread, which encodes it (`format.py`), makes room under the
size bound by deleting the oldest chunks (of any stream) and writes it atomically; the
loop carries on in the stream's next free buffer. When the writer is so far behind that
no buffer is free, the chunk in hand is dropped and counted (`edge_record_lost_steps_total`),
never waited for.
"""
from __future__ import annotations

import io
import logging
import queue
import threading
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from runtime.backends.engine import Engine
from runtime.errors import UsageError
from runtime.files import atomic_write_bytes, remove_stale_temporaries
from runtime.pipeline import Observer, PipelineState, StepRecord
from runtime.recording.format import CHUNK_NAME, FORMAT, chunk_files, chunk_name, stream_dir

log = logging.getLogger("edge_run.recording")

BUFFERS_PER_STREAM = 3  # one filling, one being written, one spare for a slow disk
# What a chunk costs besides its arrays: the zip directory and .npy headers of ~20 entries.
CHUNK_OVERHEAD = 16 * 1024


def state_sizes(engine: Engine) -> dict[str, int]:
    """A recurrent engine's states by input name and their width: what `Recorder` records."""
    return {name: shape[-1] for name, shape in engine.state_shapes().items()}


def chunk_bytes(frames: int, feature_size: int, num_classes: int, state_sizes: Mapping[str, int]) -> int:
    """An upper bound of one chunk's file size."""
    per_step = 4 * (feature_size + num_classes + sum(state_sizes.values())) + 8 + 8 + 8 + 4 + 2 + 2 + 1 + 1
    return frames * per_step + 4 * sum(state_sizes.values()) + CHUNK_OVERHEAD


class _Chunk:
    """One stream's preallocated chunk: T rows of everything a step records."""

    def __init__(self, frames: int, feature_size: int, num_classes: int, state_sizes: Mapping[str, int]) -> None:
        self.rows = 0
        self.frame = np.zeros(frames, np.int64)
        self.time = np.zeros(frames, np.float64)
        self.latency = np.zeros(frames, np.float64)
        self.dropped = np.zeros(frames, np.int32)
        self.features = np.zeros((frames, feature_size), np.float32)
        self.probs = np.zeros((frames, num_classes), np.float32)
        self.label = np.zeros(frames, np.int16)
        self.true_label = np.zeros(frames, np.int16)
        self.scorable = np.zeros(frames, bool)
        self.reset = np.zeros(frames, bool)
        self.initial = {name: np.zeros(size, np.float32) for name, size in state_sizes.items()}
        self.states = {name: np.zeros((frames, size), np.float32) for name, size in state_sizes.items()}
        self.model = ""
        self.source = ""

    def arrays(self, stream: int, labels: tuple[str, ...]) -> dict[str, np.ndarray]:
        n = self.rows
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT), "model": np.array(self.model), "source": np.array(self.source),
            "stream": np.array(stream), "labels": np.array(labels), "state_names": np.array(list(self.states)),
            "frame": self.frame[:n], "time": self.time[:n], "latency": self.latency[:n], "dropped": self.dropped[:n],
            "features": self.features[:n], "probs": self.probs[:n], "label": self.label[:n],
            "true_label": self.true_label[:n], "scorable": self.scorable[:n], "reset": self.reset[:n],
        }
        for name in self.states:
            arrays[f"initial.{name}"] = self.initial[name]
            arrays[f"state.{name}"] = self.states[name][:n]
        return arrays


class _StreamChunks:
    def __init__(self, buffers: list[_Chunk], state_sizes: Mapping[str, int]) -> None:
        self.free = buffers[1:]
        self.current = buffers[0]
        self.carry = {name: np.zeros(size, np.float32) for name, size in state_sizes.items()}  # the last state seen
        self.sequence = 0
        self.lock = threading.Lock()  # `free` is given back by the writer thread


class Recorder(Observer):
    """Writes `root`/stream<i>/chunk-*.npz (format.py), at most `max_bytes` in all, oldest chunks removed first."""

    def __init__(self, root: str | Path, labels: tuple[str, ...], feature_size: int, state_sizes: Mapping[str, int],
                 num_streams: int, max_bytes: int, chunk_frames: int = 300) -> None:
        self.root = Path(root)
        self.labels = tuple(labels)
        self.max_bytes = int(max_bytes)
        self.chunk_frames = int(chunk_frames)
        self.state_sizes = dict(state_sizes)
        self.estimate = chunk_bytes(chunk_frames, feature_size, len(labels), state_sizes)
        if self.estimate > self.max_bytes:
            raise UsageError(f"--record-max-mb {self.max_bytes / 1e6:g} holds less than one chunk of {chunk_frames} steps "
                             f"(up to {self.estimate / 1e6:.2f} MB): raise it or lower --record-chunk")
        try:
            for stream in range(num_streams):
                stream_dir(self.root, stream).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--record {root}: cannot create the folder: {exc.strerror or exc}") from None
        self._streams = []
        for stream in range(num_streams):
            folder = stream_dir(self.root, stream)
            removed = remove_stale_temporaries(folder)
            if removed:
                log.warning("removed %d temporary file(s) of an interrupted recording from %s", len(removed), folder)
            chunks = _StreamChunks([_Chunk(chunk_frames, feature_size, len(labels), state_sizes)
                                    for _ in range(BUFFERS_PER_STREAM)], state_sizes)
            existing = [int(m.group(1)) for m in (CHUNK_NAME.fullmatch(p.name) for p in folder.iterdir()) if m]
            chunks.sequence = max(existing, default=-1) + 1  # a second run appends after the first
            self._streams.append(chunks)
        self._label_index = {label: i for i, label in enumerate(self.labels)}
        # The writer thread's view of what is on disk: (path, size), oldest first.
        self._files = [(path, path.stat().st_size) for path in chunk_files(self.root)]
        self._queue: "queue.Queue[Optional[tuple[int, _Chunk]]]" = queue.Queue()
        self.chunks_written = 0
        self.bytes_written = 0
        self.chunks_removed = 0
        self.lost_steps = 0  # steps in chunks dropped because the writer was behind, or that failed to write
        self.write_errors = 0
        self._writer = threading.Thread(target=self._write_loop, name="recorder", daemon=True)
        self._writer.start()

    # Observer (loop thread) -------------------------------------------------------------------------
    def begin(self, state: PipelineState) -> None:
        states = state.states
        for index, chunks in enumerate(self._streams):
            for name, carry in chunks.carry.items():
                carry[:] = states[name][index]

    def step(self, record: StepRecord) -> None:
        result = record.result
        chunks = self._streams[result.stream]
        chunk = chunks.current
        row = chunk.rows
        if row and record.model != chunk.model:  # engines swapped: a chunk holds one model's results
            self._hand_over(result.stream, chunks)
            chunk, row = chunks.current, 0
        if row == 0:
            chunk.model, chunk.source = record.model, result.source
            for name, initial in chunk.initial.items():
                if record.fresh:
                    initial[:] = 0.0
                else:
                    initial[:] = chunks.carry[name]
        chunk.frame[row] = result.frame_index
        chunk.time[row] = result.capture_time
        chunk.latency[row] = result.latency
        chunk.dropped[row] = result.dropped
        chunk.features[row] = record.features
        chunk.probs[row] = result.probabilities
        chunk.label[row] = self._label_index[result.label]
        chunk.true_label[row] = self._label_index.get(result.true_label, -1)
        chunk.scorable[row] = record.scorable
        chunk.reset[row] = record.fresh
        for name, rows in chunk.states.items():
            rows[row] = record.states[name]
        chunk.rows = row + 1
        if chunk.rows == self.chunk_frames:
            self._hand_over(result.stream, chunks)

    def _hand_over(self, stream: int, chunks: _StreamChunks) -> None:
        full = chunks.current
        for name, carry in chunks.carry.items():
            carry[:] = full.states[name][full.rows - 1]
        with chunks.lock:
            spare = chunks.free.pop() if chunks.free else None
        if spare is None:  # the writer is behind: this chunk is lost, the loop does not wait
            self.lost_steps += full.rows
            full.rows = 0
            return
        spare.rows = 0
        chunks.current = spare
        self._queue.put_nowait((stream, full))

    # Writer thread --------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            stream, chunk = item
            try:
                self._write(stream, chunk)
            finally:
                chunks = self._streams[stream]
                with chunks.lock:
                    chunks.free.append(chunk)

    def _write(self, stream: int, chunk: _Chunk) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **chunk.arrays(stream, self.labels))
        data = buffer.getvalue()
        self._make_room(len(data))
        chunks = self._streams[stream]
        path = stream_dir(self.root, stream) / chunk_name(chunks.sequence)
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            self.lost_steps += chunk.rows
            self.write_errors += 1
            log.error("recording: cannot write %s (%s); its %d steps are lost", path, exc.strerror or exc, chunk.rows)
            return
        chunks.sequence += 1
        self._files.append((path, len(data)))
        self.chunks_written += 1
        self.bytes_written += len(data)

    def _make_room(self, incoming: int) -> None:
        """Delete the oldest chunks until `incoming` more bytes fit under the bound (temporary included)."""
        total = sum(size for _, size in self._files)
        while self._files and total + incoming > self.max_bytes:
            path, size = self._files.pop(0)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("recording: cannot remove %s to stay under the size bound: %s", path, exc)
                continue
            total -= size
            self.chunks_removed += 1

    # Lifecycle ------------------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Write the chunks in progress and stop the writer."""
        for stream, chunks in enumerate(self._streams):
            if chunks.current.rows:  # the loop has ended: the buffer in hand goes as it is, no spare needed
                self._queue.put((stream, chunks.current))
        self._queue.put(None)
        self._writer.join(timeout)

    def metrics(self) -> Iterable[Metric]:
        yield CounterMetricFamily("edge_record_chunks", "Recording chunks written.", value=self.chunks_written)
        yield CounterMetricFamily("edge_record_written_bytes", "Bytes of recording chunks written.", value=self.bytes_written)
        yield CounterMetricFamily("edge_record_removed_chunks", "Oldest recording chunks removed to stay under --record-max-mb.",
                                  value=self.chunks_removed)
        yield CounterMetricFamily("edge_record_lost_steps", "Steps not recorded: the writer was behind or a write failed.",
                                  value=self.lost_steps)
        yield GaugeMetricFamily("edge_record_bytes", "Bytes of recording on disk.", value=sum(size for _, size in list(self._files)))

