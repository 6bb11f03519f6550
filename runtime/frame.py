"""What a source hands to the pipeline: one decoded frame and where it came from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    `image` is HxWx3 uint8 in BGR order (OpenCV's convention; preprocessing converts
    to the manifest's colour order). `index` counts frames the source produced,
    starting at 0 after each (re)open, so gaps in `index` seen downstream are drops.
    `timestamp` is the capture time in seconds on the `time.perf_counter()` clock, so
    end-to-end latency is `perf_counter() - timestamp`. `label` is ground truth where
    the source knows it (the demo source), else None. `tensor` is the frame already
    preprocessed into the network's [3,H,W] float32 input by its capture thread (None
    when the loop preprocesses, as in the serial loop), `preprocess_seconds` how long that took,
    `prepared_for` the manifest input spec it was preprocessed for.
    """

    image: np.ndarray
    index: int
    timestamp: float
    stream: int = 0
    label: Optional[str] = None
    tensor: Optional[np.ndarray] = None
    preprocess_seconds: float = 0.0
    prepared_for: Any = None  # runtime.manifest.InputSpec (not imported here: the frame stays a leaf)
