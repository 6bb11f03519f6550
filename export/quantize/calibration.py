"""Calibration and held-out frames, read and preprocessed exactly as the runtime does it."""
from __future__ import annotations

import numpy as np

from export.errors import ExportError
from runtime.manifest import InputSpec
from runtime.preprocess import Preprocessor
from runtime.sources import SourceError, is_valid_image, open_source


class CalibrationError(ExportError, RuntimeError):
    """Calibration frames that cannot be read (bad input, exit 2)."""


def read_frames(source_uri: str, count: int, spec: InputSpec, seed: int = 0, every: int = 1) -> np.ndarray:
    """`count` preprocessed frames [N,3,H,W] from `source_uri` (a video, an image folder or `demo`).

    `every` keeps one frame in `every`, so a short calibration set still spans a video.
    """
    if count < 1:
        raise CalibrationError(f"--calib-frames must be at least 1, got {count}")
    preprocess = Preprocessor(spec)
    out = np.empty((count, *preprocess.input_shape), np.float32)
    taken = 0
    try:
        source = open_source(source_uri, seed=seed)
    except SourceError as exc:
        raise CalibrationError(f"calibration source {source_uri!r}: {exc}") from exc
    with source:
        position = 0
        while taken < count:
            frame = source.read()
            if frame is None:
                break
            if not is_valid_image(frame.image):  # an unreadable image in a folder: skipped and counted by the source
                continue
            if position % every == 0:
                preprocess(frame.image, out[taken])
                taken += 1
            position += 1
    if taken == 0:
        raise CalibrationError(f"calibration source {source_uri!r} gave no frames; pass a video, an image folder or 'demo'")
    return out[:taken]
