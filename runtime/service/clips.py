"""`--clip-on LABEL[,LABEL]`: a video clip from S seconds before to S seconds after each event.

Per stream a bounded ring keeps the last `pre` seconds of frames as JPEG (like DeepStream's
Smart Record cache of encoded frames). When an emitted label enters the set with at least
`min_score`, and the stream's previous clip was triggered `holdoff` seconds earlier or more,
(frames at the source's rate) the clip takes the ring's frames from `pre` seconds before the trigger frame and the
frames up to `post` seconds after it, then is written as an MJPEG `.avi` with a JSON
sidecar holding the trigger and every result over the clip (as the JSON lines carry them).
Seconds are counted in frames at the source's rate (frame index distance), so a file
processed faster than real time gets the same clip as a live camera.

The loop's part is a copy of each frame into a preallocated buffer and a queue put; one
thread encodes and assembles clips, another writes them (temporary file, then rename).
When the encoder falls behind and no buffer is free, the frame is left out of the ring
and counted (`edge_clip_frames_skipped_total`). The folder is bounded by `max_bytes`:
the oldest clips (and their sidecars) are removed first.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np
from prometheus_client.core import CounterMetricFamily, Metric

from runtime.errors import UsageError
from runtime.files import atomic_write_json, remove_stale_temporaries
from runtime.frame import Frame
from runtime.pipeline import Observer
from runtime.result import Result

log = logging.getLogger("edge_run.clips")

JPEG_QUALITY = 90
POOL_FRAMES = 8  # raw frames in flight to the encoder per stream
_CLIP_FILE = re.compile(r"stream\d+-.+\.(avi|json)")
_PARTIAL_SUFFIX = ".partial.avi"


@dataclass
class _Clip:
    stream: int
    trigger: Result
    first: int  # frame indices the clip covers, inclusive
    last: int
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    complete: bool = True


class _Stream:
    def __init__(self, index: int, source: str, fps: float, pre: float, post: float) -> None:
        self.index = index
        self.source = source
        self.fps = fps
        self.pre_frames = int(round(pre * fps))
        self.post_frames = int(round(post * fps))
        self.free: list[np.ndarray] = []  # raw buffers, allocated at the first frame
        self.shape: Optional[tuple[int, ...]] = None
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=self.pre_frames + 1)
        self.recent: deque[Result] = deque(maxlen=4 * (self.pre_frames + 1))
        self.clip: Optional[_Clip] = None
        self.last_label_in_set = False
        self.last_trigger: Optional[int] = None  # frame index of the last trigger


class EventClips(Observer):
    """Writes `folder`/stream<i>-<frame>-<label>-<time>.avi and .json for each event."""

    def __init__(self, folder: str | Path, labels: tuple[str, ...], on: tuple[str, ...], sources: list[str],
                 fps: list[Optional[float]], pre: float = 5.0, post: float = 5.0, min_score: float = 0.5,
                 holdoff: float = 10.0, max_bytes: int = 1_000_000_000, mode: str = "step") -> None:
        unknown = [label for label in on if label not in labels]
        if unknown:
            raise UsageError(f"--clip-on {','.join(unknown)}: not a label of these engines ({', '.join(labels)})")
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--clip-dir {folder}: cannot create the folder: {exc.strerror or exc}") from None
        if not os.access(self.folder, os.W_OK):
            raise UsageError(f"--clip-dir {folder}: cannot write there")
        for path in self.folder.glob(f".*{_PARTIAL_SUFFIX}"):  # a clip a killed run was writing
            path.unlink(missing_ok=True)
        remove_stale_temporaries(self.folder)
        self.labels = tuple(labels)
        self.on = frozenset(on)
        self.min_score = min_score
        self.holdoff = holdoff
        self.max_bytes = int(max_bytes)
        self.mode = mode
        self._streams = [_Stream(i, name, rate or 30.0, pre, post) for i, (name, rate) in enumerate(zip(sources, fps))]
        self._encode_queue: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._write_queue: "queue.Queue[Optional[_Clip]]" = queue.Queue()
        self.triggers = 0
        self.clips_written = 0
        self.bytes_written = 0
        self.clips_removed = 0
        self.clips_failed = 0
        self.frames_skipped = 0
        self.written: list[Path] = []  # clips written by this run, in order
        self._encoder = threading.Thread(target=self._encode_loop, name="clips-encoder", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="clips-writer", daemon=True)
        self._encoder.start()
        self._writer.start()

    # Observer (loop thread) -------------------------------------------------------------------------
    def frame(self, stream: int, frame: Frame) -> None:
        s = self._streams[stream]
        if s.shape != frame.image.shape:  # the first frame (or a new size): preallocate the pool once
            s.shape = frame.image.shape
            s.free = [np.empty_like(frame.image) for _ in range(POOL_FRAMES)]
        try:
            buffer = s.free.pop()
        except IndexError:  # the encoder is behind: this frame is not in the ring
            self.frames_skipped += 1
            return
        if buffer.shape != frame.image.shape:  # given back by the encoder after the frame size changed
            buffer = np.empty_like(frame.image)
        np.copyto(buffer, frame.image)
        self._encode_queue.put_nowait(("frame", stream, frame.index, buffer))

    def result(self, result: Result) -> None:
        self._encode_queue.put_nowait(("result", result.stream, result, None))
        if result.mode != self.mode:
            return
        s = self._streams[result.stream]
        entered = result.label in self.on and result.score >= self.min_score
        rising = entered and not s.last_label_in_set
        s.last_label_in_set = result.label in self.on
        if not rising or (s.last_trigger is not None and 0 <= result.frame_index - s.last_trigger < self.holdoff * s.fps):
            return
        s.last_trigger = result.frame_index
        self.triggers += 1
        self._encode_queue.put_nowait(("trigger", result.stream, result, None))

    # Encoder thread: JPEG, rings, clips ------------------------------------------------------------
    def _encode_loop(self) -> None:
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        while True:
            item = self._encode_queue.get()
            if item is None:
                break
            kind, stream, payload, buffer = item
            s = self._streams[stream]
            if kind == "frame":
                ok, encoded = cv2.imencode(".jpg", buffer, params)
                s.free.append(buffer)
                if ok:
                    self._add_frame(s, payload, encoded.tobytes())
            elif kind == "result":
                s.recent.append(payload)
                if s.clip is not None and s.clip.first <= payload.frame_index <= s.clip.last:
                    s.clip.results.append(payload)
            elif kind == "trigger" and s.clip is None:
                self._start_clip(s, payload)
        for s in self._streams:  # the run ended: write what the clips in progress have
            if s.clip is not None:
                s.clip.complete = False
                self._write_queue.put(s.clip)
                s.clip = None
        self._write_queue.put(None)

    def _add_frame(self, s: _Stream, index: int, jpeg: bytes) -> None:
        if s.ring and index <= s.ring[-1][0]:  # the source restarted: the ring's frames are another sequence
            s.ring.clear()
            if s.clip is not None:
                s.clip.complete = False
                self._write_queue.put(s.clip)
                s.clip = None
        s.ring.append((index, jpeg))
        clip = s.clip
        if clip is None:
            return
        if index > clip.last:
            self._write_queue.put(clip)
            s.clip = None
        else:
            clip.frames.append((index, jpeg))

    def _start_clip(self, s: _Stream, trigger: Result) -> None:
        first, last = trigger.frame_index - s.pre_frames, trigger.frame_index + s.post_frames
        clip = _Clip(s.index, trigger, first, last)
        clip.frames = [(index, jpeg) for index, jpeg in s.ring if first <= index <= trigger.frame_index]
        clip.results = [r for r in s.recent if first <= r.frame_index <= trigger.frame_index]
        s.clip = clip

    # Writer thread ---------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            clip = self._write_queue.get()
            if clip is None:
                return
            try:
                self._write(clip)
            except Exception as exc:  # noqa: BLE001 - a clip that cannot be written must not stop the next
                self.clips_failed += 1
                log.error("event clip of stream %d at frame %d not written: %s", clip.stream, clip.trigger.frame_index, exc)

    def _write(self, clip: _Clip) -> None:
        if not clip.frames:
            raise OSError("no frames were encoded for it")
        s = self._streams[clip.stream]
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(clip.trigger.capture_time))
        name = f"stream{clip.stream}-{clip.trigger.frame_index:08d}-{_safe(clip.trigger.label)}-{stamp}"
        video, sidecar = self.folder / f"{name}.avi", self.folder / f"{name}.json"
        partial = self.folder / f".{name}{_PARTIAL_SUFFIX}"
        first = cv2.imdecode(np.frombuffer(clip.frames[0][1], np.uint8), cv2.IMREAD_COLOR)
        height, width = first.shape[:2]
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"MJPG"), float(s.fps), (width, height))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write {partial}")
        try:
            for _, jpeg in clip.frames:
                writer.write(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
        finally:
            writer.release()
        size = partial.stat().st_size
        self._make_room(size)
        os.replace(partial, video)
        atomic_write_json(sidecar, self._sidecar(clip, s, video.name))
        self.clips_written += 1
        self.bytes_written += size
        self.written.append(video)
        log.info("event clip %s: %d frames around frame %d (%s %.2f)", video, len(clip.frames),
                 clip.trigger.frame_index, clip.trigger.label, clip.trigger.score)

    def _sidecar(self, clip: _Clip, s: _Stream, video: str) -> dict:
        indices = [index for index, _ in clip.frames]
        return {
            "video": video, "stream": clip.stream, "source": s.source, "fps": s.fps,
            "trigger": {"frame": clip.trigger.frame_index, "time": round(clip.trigger.capture_time, 6),
                        "label": clip.trigger.label, "score": round(clip.trigger.score, 6), "mode": clip.trigger.mode},
            "first_frame": clip.first, "last_frame": clip.last, "frames": indices,
            "frames_before": sum(1 for i in indices if i < clip.trigger.frame_index),
            "frames_after": sum(1 for i in indices if i > clip.trigger.frame_index),
            "complete": clip.complete,
            "results": [r.to_json(self.labels) for r in clip.results],
        }

    def _make_room(self, incoming: int) -> None:
        """Remove the oldest clips (with their sidecars) until `incoming` more bytes fit under the bound."""
        files = sorted((p for p in self.folder.iterdir() if _CLIP_FILE.fullmatch(p.name)), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for video in [p for p in files if p.suffix == ".avi"]:
            if total + incoming <= self.max_bytes:
                break
            for path in (video, video.with_suffix(".json")):
                try:
                    total -= path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    pass
            self.clips_removed += 1

    # Lifecycle -------------------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Finish the clips in progress with the frames they have, and write them."""
        self._encode_queue.put(None)
        deadline = time.monotonic() + timeout
        self._encoder.join(timeout)
        self._writer.join(max(0.1, deadline - time.monotonic()))

    def metrics(self) -> Iterable[Metric]:
        yield CounterMetricFamily("edge_clip_triggers", "Events that started a clip.", value=self.triggers)
        yield CounterMetricFamily("edge_clips_written", "Event clips written.", value=self.clips_written)
        yield CounterMetricFamily("edge_clip_written_bytes", "Bytes of event clips written.", value=self.bytes_written)
        yield CounterMetricFamily("edge_clips_removed", "Oldest clips removed to stay under --clip-max-mb.", value=self.clips_removed)
        yield CounterMetricFamily("edge_clips_failed", "Event clips that could not be written.", value=self.clips_failed)
        yield CounterMetricFamily("edge_clip_frames_skipped", "Frames left out of the clip ring: its encoder was behind.",
                                  value=self.frames_skipped)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:40] or "label"

