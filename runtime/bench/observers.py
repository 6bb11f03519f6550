"""Section `observers`: what the live preview, the recorder and event clips cost the loop.

The same pipelined run over the video, as fast as it goes, with nothing attached; with the
preview served and no client, a client reading the MJPEG stream, a client that stopped
reading (it asks and never reads: its socket fills and it is dropped); with `--record`;
with event clips on every label. The figure is wall and CPU time per frame: the loop's
own calls and what the observers' threads take from the cores it shares with them.
"""
from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional

from runtime.backends import EngineSet
from runtime.bench.options import NO_DEADLINE
from runtime.bench.runs import Run, pool, round_robin, run_built
from runtime.pipeline import Observer, Pipeline, PipelineConfig
from runtime.recording import Recorder, state_sizes
from runtime.service import metrics
from runtime.service.clips import EventClips
from runtime.service.preview import Preview
from runtime.sources import open_source

MJPEG_REQUEST = b"GET /stream/0/video.mjpg HTTP/1.1\r\nHost: bench\r\n\r\n"


class StuckClient:
    """Asks for the MJPEG stream and never reads it (a tiny receive buffer, so the server's fills)."""

    def __init__(self, port: int) -> None:
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.socket.connect(("127.0.0.1", port))
        self.socket.sendall(MJPEG_REQUEST)

    def close(self) -> None:
        self.socket.close()


class ReadingClient:
    """Reads the MJPEG stream as fast as it comes and keeps the JPEG parts."""

    def __init__(self, port: int) -> None:
        self.parts: list[bytes] = []
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.sendall(MJPEG_REQUEST)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        data = b""
        try:
            while chunk := self.socket.recv(1 << 16):
                data += chunk
                while (start := data.find(b"\xff\xd8")) >= 0 and (end := data.find(b"\xff\xd9", start)) >= 0:
                    self.parts.append(data[start:end + 2])
                    data = data[end + 2:]
        except OSError:
            pass

    def close(self) -> None:
        self.socket.close()


def observer_costs(engines: EngineSet, video: Path, frames: int, repeats: int) -> dict[str, dict]:
    """Pooled runs per variant (`runs.pool`), keyed by variant name."""
    config = PipelineConfig(max_frames=frames, budget=NO_DEADLINE)
    manifest = engines.manifest
    scratch = tempfile.TemporaryDirectory(prefix="edge-bench-observers-")
    folder = Path(scratch.name)

    def with_observers(make: Callable[[Pipeline], list[Observer]], client=None) -> Callable[[], Run]:
        def go() -> Run:
            pipeline = Pipeline(engines, [open_source(str(video))], config)
            observers = make(pipeline)
            for observer in observers:
                pipeline.add_observer(observer)
            previews = [o for o in observers if isinstance(o, Preview)]
            server = metrics.build(pipeline, {}, routes=previews)[0] if previews else None
            connected = client(server.port) if client is not None and server is not None else None
            try:
                return run_built(pipeline)
            finally:
                if connected is not None:
                    connected.close()
                for observer in observers:
                    close: Optional[Callable[[], None]] = getattr(observer, "close", None)
                    if close is not None:
                        close()
                if server is not None:
                    server.close()
        return go

    def preview(pipeline: Pipeline) -> list[Observer]:
        return [Preview(manifest.labels, pipeline.stats, [str(video)])]

    def recorder(pipeline: Pipeline) -> list[Observer]:
        return [Recorder(folder / "recording", manifest.labels, manifest.feature_size, state_sizes(engines.gru_step), 1,
                         max_bytes=200_000_000)]

    def clips(pipeline: Pipeline) -> list[Observer]:
        return [EventClips(folder / "clips", manifest.labels, manifest.labels, [str(video)], [30.0], pre=1.0, post=1.0,
                           min_score=0.0, holdoff=2.0, max_bytes=200_000_000)]

    variants = {
        "nothing attached": with_observers(lambda pipeline: []),
        "preview, no client": with_observers(preview),
        "preview, a reading client": with_observers(preview, ReadingClient),
        "preview, a client that stopped reading": with_observers(preview, StuckClient),
        "record": with_observers(recorder),
        "event clips": with_observers(clips),
    }
    try:
        runs = round_robin(variants, repeats)
    finally:
        scratch.cleanup()
    return {name: pool(done) for name, done in runs.items()}

