"""What one benchmark run measures and how much of it: `BenchOptions`, and the constants the sections share."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

VIDEO_SIZE = (640, 480)
LIVE_FPS = 30.0
NO_DEADLINE = 1.0  # seconds: the budget of as-fast-as-possible runs, where a deadline means nothing
PRECISION_ORDER = ("fp32", "fp16", "int8")


@dataclass
class BenchOptions:
    engines: Path = Path("engines")
    out: Path = Path("results")
    backend: str = "cpu"
    threads: Optional[int] = None
    frames: int = 600  # frames per pipeline / naive run (and the generated video's length)
    stream_frames: int = 300  # frames per stream in the stream-scaling runs
    streams: tuple[int, ...] = (1, 2, 4, 8)
    live_seconds: float = 10.0
    memory_frames: int = 10_000
    memory_warmup: int = 500
    iterations: int = 300  # timed calls per floor measurement (more for the microsecond ones)
    repeats: int = 2  # runs of each compared variant, interleaved (A B B A) against drifting load
    video: Optional[Path] = None  # default: a generated 640x480 demo video
    plot: str = "auto"  # auto: matplotlib when installed, else OpenCV drawing; or "opencv"
    quick: bool = False

    @classmethod
    def reduced(cls, **overrides: Any) -> "BenchOptions":
        """A run of a few seconds that exercises every section (the test-suite's mode)."""
        values = dict(frames=40, stream_frames=12, streams=(1, 2), live_seconds=1.0, memory_frames=200,
                      memory_warmup=50, iterations=20, repeats=1, quick=True)
        values.update(overrides)
        return cls(**values)
