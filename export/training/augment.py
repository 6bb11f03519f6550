"""Clip-consistent augmentation: one random crop/scale, flip and colour jitter per clip, never per frame.

A temporal head learns from how frames change. Augmenting each frame on its own would add
changes that the scene never made (a crop that jumps, a brightness that flickers) and teach
the head to read them; so one draw of parameters (`ClipAugmentation`) is made per clip and
applied identically to every frame of it, before the runtime's own preprocessing.

Features are cached per clip, so each training clip gets K augmented *views* (`--views K`),
each a `ClipRef` carrying its parameters; the feature cache keys each view by them, so a
view is extracted once and reused by every later run with the same seed.

A horizontal flip turns some classes into others (a move to the left becomes a move to the
right). Flips are drawn only with a label map (`--flip-map a:b,c:d`, symmetric; labels not in
it keep their label under a flip); without one, flips are off. The demo task's map is
`DEMO_FLIP_MAP`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from export.errors import ExportError

# The demo world's classes under a horizontal mirror (runtime.sources.demo.CLASSES).
DEMO_FLIP_MAP = {"move_left": "move_right", "rotate_cw": "rotate_ccw"}

# Ranges of one draw: the crop keeps 80-100% of each side (the object stays in view); brightness
# +-20 of 255, contrast and saturation +-20%, the strengths torchvision's ColorJitter examples use.
CROP_KEEP = (0.8, 1.0)
BRIGHTNESS = 20.0
CONTRAST = 0.2
SATURATION = 0.2


class AugmentError(ExportError, ValueError):
    """A flip map that cannot be used (bad input, exit 2)."""


@dataclass(frozen=True)
class ClipAugmentation:
    """One clip's augmentation: the same crop, flip and colour change for every frame."""

    keep: float  # fraction of each side the crop keeps
    x: float  # crop position in the free margin, 0 (left) .. 1 (right)
    y: float  # 0 (top) .. 1 (bottom)
    flip: bool  # mirror left-right
    brightness: float  # added to every channel, in pixel units
    contrast: float  # gain around mid-grey
    saturation: float  # gain of the colour away from each pixel's grey

    def key(self) -> str:
        """The parameters as text, for the feature cache (a different view is a different clip)."""
        return ",".join(f"{name}={getattr(self, name)!r}" for name in (f.name for f in dataclasses.fields(self)))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """`image` (H x W x 3 uint8 BGR) augmented, same size: crop and scale back, flip, colour."""
        height, width = image.shape[:2]
        crop_h, crop_w = max(1, round(height * self.keep)), max(1, round(width * self.keep))
        top, left = round((height - crop_h) * self.y), round((width - crop_w) * self.x)
        out = cv2.resize(image[top:top + crop_h, left:left + crop_w], (width, height), interpolation=cv2.INTER_LINEAR)
        if self.flip:
            out = cv2.flip(out, 1)
        pixels = out.astype(np.float32)
        grey = pixels.mean(axis=2, keepdims=True)
        pixels = grey + self.saturation * (pixels - grey)
        pixels = (pixels - 128.0) * self.contrast + 128.0 + self.brightness
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def draw(rng: np.random.Generator, flips: bool) -> ClipAugmentation:
    """One random clip augmentation; a flip only when `flips` (a label map exists)."""
    return ClipAugmentation(
        keep=float(rng.uniform(*CROP_KEEP)), x=float(rng.uniform()), y=float(rng.uniform()),
        flip=bool(flips and rng.random() < 0.5),
        brightness=float(rng.uniform(-BRIGHTNESS, BRIGHTNESS)),
        contrast=float(rng.uniform(1 - CONTRAST, 1 + CONTRAST)),
        saturation=float(rng.uniform(1 - SATURATION, 1 + SATURATION)),
    )


def parse_flip_map(text: str, labels: Optional[Sequence[str]] = None) -> dict[str, str]:
    """`a:b,c:d` -> {a: b, b: a, c: d, d: c}; every name must be a label when `labels` is given."""
    mapping: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        parts = [p.strip() for p in pair.split(":")]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise AugmentError(f"--flip-map {text!r}: {pair!r} is not a pair of two different labels a:b")
        for one, other in (parts, parts[::-1]):
            if mapping.get(one, other) != other:
                raise AugmentError(f"--flip-map {text!r}: {one!r} is mapped twice")
            mapping[one] = other
    if not mapping:
        raise AugmentError(f"--flip-map {text!r}: no pairs; write a:b,c:d")
    unknown = sorted(set(mapping) - set(labels)) if labels is not None else []
    if unknown:
        raise AugmentError(f"--flip-map: {', '.join(unknown)} not among the labels ({', '.join(labels)})")
    return mapping


def flipped_label(label: str, flip_map: dict[str, str]) -> str:
    """What `label` becomes in a mirrored clip: its pair in the map, or itself."""
    return flip_map.get(label, label)
