"""Frame -> network input: resize, colour order, normalisation and NCHW, into preallocated buffers.

A naive resize + float conversion + normalise + transpose costs about as much as the
backbone itself, so this path resizes into a fixed uint8 buffer, splits it into three
fixed uint8 planes, and does one fused multiply-add per plane straight into the engine's
input row (`cv2.addWeighted` with a float32 destination, which reads each plane
contiguously). Colour reordering is free: the BGR->RGB swap is just which plane each
output plane reads. How it was measured: docs/runtime-measurements.md.
"""
from __future__ import annotations

import cv2
import numpy as np

from runtime.manifest import InputSpec


class Preprocessor:
    """Writes one frame into one row of an NCHW float32 buffer, allocating nothing per call."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.size = (spec.width, spec.height)  # cv2 wants (width, height)
        self._resized = np.empty((spec.height, spec.width, 3), np.uint8)
        self._planes = [np.empty((spec.height, spec.width), np.uint8) for _ in range(3)]
        std = np.asarray(spec.std, np.float32)
        mean = np.asarray(spec.mean, np.float32)
        # x_norm = (pixel * scale - mean) / std = pixel * gain + offset
        self._gain = (spec.scale / std).astype(np.float32)
        self._offset = (-mean / std).astype(np.float32)
        self._gains = [float(g) for g in self._gain]
        self._offsets = [float(o) for o in self._offset]
        # Sources deliver BGR; plane c of the output reads channel _order[c] of the frame.
        self._order = (2, 1, 0) if spec.color_order == "RGB" else (0, 1, 2)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.spec.height, self.spec.width)

    def __call__(self, image: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Preprocess `image` (HxWx3 uint8 BGR) into `out` ([3,H,W] float32, e.g. `engine_input[i]`)."""
        if image.shape[:2] == self._resized.shape[:2]:
            resized = image
            if not image.flags.c_contiguous:
                np.copyto(self._resized, image)
                resized = self._resized
        else:
            resized = cv2.resize(image, self.size, dst=self._resized, interpolation=cv2.INTER_LINEAR)
        if not (out.flags.c_contiguous and out.dtype == np.float32):
            return self._strided(resized, out)
        planes = self._planes
        cv2.split(resized, planes)  # into the fixed planes: OpenCV reuses arrays of the right shape
        for plane, channel in enumerate(self._order):
            # src * gain + src * 0 + offset, computed and stored as float32 in the engine's row
            cv2.addWeighted(planes[channel], self._gains[plane], planes[channel], 0.0, self._offsets[plane],
                            dst=out[plane], dtype=cv2.CV_32F)
        return out

    def _strided(self, resized: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The same arithmetic for an `out` OpenCV cannot write in place (not C-contiguous float32)."""
        for plane, channel in enumerate(self._order):
            np.multiply(resized[:, :, channel], self._gain[plane], out=out[plane], casting="unsafe")
            out[plane] += self._offset[plane]
        return out

    def batch(self, images: list[np.ndarray]) -> np.ndarray:
        """Convenience for offline use (calibration, training): allocate and fill [N,3,H,W]."""
        out = np.empty((len(images), *self.input_shape), np.float32)
        for row, image in enumerate(images):
            self(image, out[row])
        return out
