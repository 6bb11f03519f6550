"""A deterministic, labelled synthetic scene that only a temporal model can classify.

The world is a sequence of clips (48 frames by default). Each clip shows one object on a
smooth random background and belongs to one of `CLASSES`:

- `still`: the object stays put;
- `move_left` / `move_right`: it slides horizontally at a constant speed;
- `rotate_cw` / `rotate_ccw`: it turns about its centre (clockwise as seen on screen);
- `blink`: it switches between a bright and a dark colour (a lamp going on and off) with a
  random half-period of 2-5 frames.

Everything a single frame shows is drawn from the same distribution for every class:
shape (rectangle, triangle, ellipse, cross, arrow, L; asymmetric enough for rotation to
show), size, colour, orientation (uniform), position (a still object sits where a moving
one would be at a random moment of its clip), background and pixel noise. Only how frames
change over time tells the class apart.

All randomness comes from a seeded `numpy.random.Generator`, so a seed gives bit-identical
frames (on a given OpenCV build: anti-aliased drawing may differ between versions).
Rendering uses OpenCV drawing and saturating arithmetic, no per-pixel Python: a clip
precomputes its background, a noise bank and every frame's polygon, so a frame is one
copy, one `fillPoly` and two saturating adds (well under a millisecond at 320x240).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from runtime.sources.base import DecodedFrame, PlaybackSource, SourceError, buffer_fits

WORLD_VERSION = 5  # bump when what a seed renders changes (feature caches key on it)
CLASSES = ("still", "move_left", "move_right", "rotate_cw", "rotate_ccw", "blink")
SHAPES = ("rectangle", "triangle", "ellipse", "cross", "arrow", "ell")

DEFAULT_SIZE = (320, 240)
DEFAULT_CLIP_FRAMES = 48
DEFAULT_FPS = 30.0

# Scene parameters, relative to the frame so every resolution shows the same world.
# Motion, turn and blink rates are fast enough for a class to show through the pixel noise
# within a 16-frame window (half a second at 30 fps); slower ones cost the temporal model
# accuracy. How they were chosen: docs/demo-world.md.
_RADIUS = (0.14, 0.26)          # object radius, fraction of min(width, height)
_SPEED = (0.010, 0.016)         # horizontal speed, fraction of width per frame (capped so the object stays in frame)
_TURN_DEG = (5.0, 10.0)         # rotation speed, degrees per frame
_BLINK_HALF_PERIOD = (2, 5)     # frames per colour, inclusive
_NOISE = (2, 8)                 # per-pixel noise amplitude, grey levels, inclusive
_BACKGROUND_BASE = (40, 215)    # background mean colour range per channel
_BACKGROUND_STD = (6.0, 15.0)   # background variation (std, grey levels)
_OBJECT_CONTRAST = 80           # min max-channel distance of object colour to background mean
# A blink is a lamp going on and off: a change of hue at equal brightness barely moves the
# features of a thin shape, so a blink's two colours must differ in brightness (docs/demo-world.md).
_BLINK_LUMA_CONTRAST = 120      # min luma (BT.601) difference between a blink's two colours
_LUMA = np.array([0.114, 0.587, 0.299])  # BT.601 weights in BGR order
_NOISE_PAD = 16                 # noise bank margin: per-frame shifts give 17x17 patterns
_SHIFT = 4                      # fillPoly fractional bits: sub-pixel motion
_MARGIN = 2.0                   # pixels kept between the object and the frame border


def _shape_polygon(rng: np.random.Generator, shape: str) -> np.ndarray:
    """A simple polygon [N, 2] (x right, y down) centred on its vertex mean, max radius 1."""
    if shape == "rectangle":
        h = rng.uniform(0.4, 0.65)
        poly = np.array([(-1, -h), (1, -h), (1, h), (-1, h)], float)
    elif shape == "triangle":
        skew = rng.uniform(-0.35, 0.35)
        h = rng.uniform(0.45, 0.75)
        poly = np.array([(-1, -h), (1, skew), (-1, h)], float)
    elif shape == "ellipse":
        a = np.linspace(0.0, 2.0 * np.pi, 36, endpoint=False)
        poly = np.stack([np.cos(a), rng.uniform(0.4, 0.65) * np.sin(a)], axis=1)
    elif shape == "cross":
        w = rng.uniform(0.16, 0.26)
        r, d, lft, u = 1.0, *rng.uniform(0.4, 0.8, size=3)
        poly = np.array([(w, -w), (r, -w), (r, w), (w, w), (w, d), (-w, d), (-w, w),
                         (-lft, w), (-lft, -w), (-w, -w), (-w, -u), (w, -u)], float)
    elif shape == "arrow":
        s, h, neck = rng.uniform(0.14, 0.24), rng.uniform(0.45, 0.65), rng.uniform(0.1, 0.4)
        poly = np.array([(-1, -s), (neck, -s), (neck, -h), (1, 0), (neck, h), (neck, s),
                         (-1, s)], float)
    elif shape == "ell":
        t, foot = rng.uniform(0.3, 0.45), rng.uniform(0.9, 1.3)
        poly = np.array([(0, 0), (t, 0), (t, 2 - t), (foot, 2 - t), (foot, 2), (0, 2)], float)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if rng.random() < 0.5:  # either chirality
        poly[:, 1] *= -1.0
    poly -= poly.mean(axis=0)
    return poly / np.sqrt((poly ** 2).sum(axis=1)).max()


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random colour field: blurred noise at 1/8 resolution, upsampled."""
    base = rng.uniform(*_BACKGROUND_BASE, size=3)
    std = rng.uniform(*_BACKGROUND_STD)
    small = rng.standard_normal((max(2, height // 8), max(2, width // 8), 3)).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(1.0, min(small.shape[:2]) / 6.0))
    small -= small.mean(axis=(0, 1))
    small *= std / max(float(small.std()), 1e-6)
    small += base.astype(np.float32)
    small = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _colour(rng: np.random.Generator, away_from: np.ndarray, contrast: float) -> np.ndarray:
    """A uniform random colour at least `contrast` (max channel) away from `away_from`."""
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - away_from).max() >= contrast:
            return colour


def _colour_pair(rng: np.random.Generator, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two object colours, each visible on `background`, at least `_BLINK_LUMA_CONTRAST` apart in luma.

    Always reachable: for any background mean in `_BACKGROUND_BASE`, a colour near black on
    two channels and one near white both qualify, so the rejection loop ends (about one
    pair in eleven is kept).
    """
    while True:
        a = _colour(rng, background, _OBJECT_CONTRAST)
        b = _colour(rng, background, _OBJECT_CONTRAST)
        if abs(float(_LUMA @ (a - b))) >= _BLINK_LUMA_CONTRAST:
            return a, b


class Clip:
    """One clip of the demo world, fully decided at construction; `render(t)` draws frame t.

    Attributes: `label`, `num_frames`, `width`, `height`, `shape`, `background` (HxWx3 uint8,
    what the frame shows without object and noise), `centres` [T, 2] (object centre, pixels),
    `angles` [T] (radians, increasing = clockwise on screen), `colours` [T, 3] (BGR),
    `radius` (pixels), `noise` (amplitude in grey levels). Frames can be rendered in any
    order.
    """

    def __init__(self, rng: np.random.Generator, label: str, num_frames: int,
                 width: int, height: int) -> None:
        if label not in CLASSES:
            raise ValueError(f"unknown class {label!r}; expected one of {CLASSES}")
        if num_frames < 1 or width < 8 or height < 8:
            raise ValueError(f"clip needs num_frames >= 1 and a frame of at least 8x8, got "
                             f"{num_frames} frames of {width}x{height}")
        self.label, self.num_frames, self.width, self.height = label, num_frames, width, height
        T = num_frames
        steps = np.arange(T, dtype=float)

        self.background = _background(rng, width, height)
        bg_mean = np.array(cv2.mean(self.background)[:3])

        self.shape = SHAPES[rng.integers(len(SHAPES))]
        poly = _shape_polygon(rng, self.shape)
        radius = rng.uniform(*_RADIUS) * min(width, height)
        self.radius = float(radius)

        # Horizontal trajectory, drawn the same way for every class; non-movers freeze it
        # at a random moment so positions have the same distribution for all classes.
        lo, hi = radius + _MARGIN, width - radius - _MARGIN
        span = max(0.0, hi - lo)
        speed = rng.uniform(*_SPEED) * width
        if T > 1:
            speed = min(speed, span / (T - 1))
        travel = speed * (T - 1)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        start = rng.uniform(lo, lo + span - travel) if span > travel else lo + (span - travel) / 2
        forward = start + speed * steps  # left-to-right
        path = forward if direction > 0 else (lo + hi) - forward
        frozen = path[rng.integers(T)]
        if label == "move_right":
            xs = forward
        elif label == "move_left":
            xs = (lo + hi) - forward
        else:
            xs = np.full(T, frozen)
        y = rng.uniform(radius + _MARGIN, max(radius + _MARGIN, height - radius - _MARGIN))
        self.centres = np.stack([xs, np.full(T, y)], axis=1)

        angle0 = rng.uniform(0.0, 2.0 * np.pi)
        turn = np.deg2rad(rng.uniform(*_TURN_DEG))
        spin = {"rotate_cw": 1.0, "rotate_ccw": -1.0}.get(label, 0.0)
        self.angles = angle0 + spin * turn * steps

        # Every class draws a blink's colour pair and shows one of the two, so the colour in a
        # single frame has the same distribution whatever the class.
        colour_a, colour_b = _colour_pair(rng, bg_mean)
        if label == "blink":
            half = int(rng.integers(_BLINK_HALF_PERIOD[0], _BLINK_HALF_PERIOD[1] + 1))
            phase = int(rng.integers(2 * half))
            which = ((np.arange(T) + phase) // half) % 2
        else:
            which = np.full(T, int(rng.integers(2)))
        self.colours = np.where(which[:, None] == 0, colour_a, colour_b).astype(np.uint8)
        self._colour_tuples = [tuple(int(c) for c in row) for row in self.colours]

        # Every frame's polygon, in fixed point for sub-pixel anti-aliased drawing.
        cos, sin = np.cos(self.angles), np.sin(self.angles)
        rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # [T,2,2]
        pts = np.einsum("tij,nj->tni", rot, poly * radius) + self.centres[:, None, :]
        self._polygons = np.rint(pts * (1 << _SHIFT)).astype(np.int32)  # [T, N, 2]

        # Pixel noise: a bank of near-uniform integers n in [-k, k] (random bytes through a
        # lookup table), kept as max(n, 0) and max(-n, 0) for two saturating adds, and one
        # random shift of the bank per frame.
        self.noise = int(rng.integers(_NOISE[0], _NOISE[1] + 1))
        bank = rng.integers(0, 256, size=(height + _NOISE_PAD, width + _NOISE_PAD, 3),
                            dtype=np.uint8)
        values = (np.arange(256) * (2 * self.noise + 1) >> 8) - self.noise
        self._noise_up = cv2.LUT(bank, np.maximum(values, 0).astype(np.uint8))
        self._noise_down = cv2.LUT(bank, np.maximum(-values, 0).astype(np.uint8))
        self._shifts = rng.integers(0, _NOISE_PAD + 1, size=(T, 2))

    def render(self, t: int, out: Optional[np.ndarray] = None, *, noise: bool = True) -> np.ndarray:
        """Frame `t` (0 <= t < num_frames), drawn into `out` if given (HxWx3 uint8)."""
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} outside clip of {self.num_frames} frames")
        if out is None:
            out = np.empty_like(self.background)
        elif not buffer_fits(out, self.background.shape):
            raise ValueError(f"out must be a writeable C-contiguous uint8 array of shape "
                             f"{self.background.shape}, got {out.shape} {out.dtype}")
        np.copyto(out, self.background)
        cv2.fillPoly(out, [self._polygons[t]], self._colour_tuples[t], cv2.LINE_AA, _SHIFT)
        if noise:
            dy, dx = self._shifts[t]
            window = np.s_[dy:dy + self.height, dx:dx + self.width]
            cv2.add(out, self._noise_up[window], dst=out)
            cv2.subtract(out, self._noise_down[window], dst=out)
        return out


def render_clip(rng: np.random.Generator, label: str, num_frames: int = DEFAULT_CLIP_FRAMES,
                width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1], *,
                noise: bool = True) -> np.ndarray:
    """A clip of class `label` as [T, H, W, 3] uint8 BGR (draws its randomness from `rng`)."""
    clip = Clip(rng, label, num_frames, width, height)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        clip.render(t, frames[t], noise=noise)
    return frames


class DemoScene:
    """An endless sequence of clips of uniformly random class, from one seed.

    `render_into(out)` draws the next frame and returns its class; `skip(n)` advances
    without drawing (frame k is the same whether or not earlier frames were drawn).
    `clip_index` and `frame_in_clip` say where the last frame came from.
    """

    def __init__(self, seed: int = 0, width: int = DEFAULT_SIZE[0],
                 height: int = DEFAULT_SIZE[1], clip_frames: int = DEFAULT_CLIP_FRAMES) -> None:
        if clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
        self.seed, self.width, self.height, self.clip_frames = seed, width, height, clip_frames
        self.rng = np.random.default_rng(seed)
        self.clip: Optional[Clip] = None
        self.clip_index = -1
        self.frame_in_clip = clip_frames - 1  # the next frame starts clip 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)

    @property
    def label(self) -> Optional[str]:
        """Class of the current clip (None before the first frame)."""
        return None if self.clip is None else self.clip.label

    def _advance(self) -> None:
        self.frame_in_clip += 1
        if self.frame_in_clip >= self.clip_frames:
            label = CLASSES[self.rng.integers(len(CLASSES))]
            self.clip = Clip(self.rng, label, self.clip_frames, self.width, self.height)
            self.clip_index += 1
            self.frame_in_clip = 0

    def render_into(self, out: np.ndarray) -> str:
        """Draw the next frame into `out` (HxWx3 uint8); return its class."""
        self._advance()
        self.clip.render(self.frame_in_clip, out)
        return self.clip.label

    def skip(self, frames: int) -> None:
        for _ in range(frames):
            self._advance()


class DemoSource(PlaybackSource):
    """The demo scene as a Source: labelled frames, deterministic for a seed.

    Not live by default (every frame is produced, as fast as it is read); `fps` is a
    nominal 30. `realtime=True` paces it at `fps` and marks it live: a late reader skips
    frames like a camera, and frame k is still the same image. `max_frames` ends the stream.
    `current_clip` is the clip index of the last frame read. Frames carry `label`.
    """

    def __init__(self, seed: int = 0, width: int = DEFAULT_SIZE[0],
                 height: int = DEFAULT_SIZE[1], clip_frames: int = DEFAULT_CLIP_FRAMES, *,
                 fps: float = DEFAULT_FPS, realtime: bool = False,
                 max_frames: Optional[int] = None, stream: int = 0) -> None:
        super().__init__(f"demo:{seed}", fps=float(fps), labels=CLASSES, stream=stream,
                         realtime=realtime)
        self.seed, self.width, self.height, self.clip_frames = seed, width, height, clip_frames
        self.max_frames = max_frames
        self.scene: Optional[DemoScene] = None
        self.current_clip: Optional[int] = None

    def _open(self) -> None:
        self.scene = DemoScene(self.seed, self.width, self.height, self.clip_frames)
        self.current_clip = None

    def _close(self) -> None:
        self.scene = None

    def _pacing_fps(self) -> Optional[float]:
        # The demo always states its rate, so a zero rate is refused at open rather than
        # replaced by the fallback a file without one gets.
        return self.fps

    def _past_end(self, position: int) -> bool:
        return self.max_frames is not None and position >= self.max_frames

    def _skip_frames(self, count: int) -> int:
        # A reader late past `max_frames` gets the end at once; the frames it missed before
        # the end are not counted as drops (a folder counts them).
        if self._past_end(self._next_index + count):
            return 0
        self.scene.skip(count)
        return count

    def _read_frame(self, position: int, out: Optional[np.ndarray]) -> Optional[DecodedFrame]:
        if self._past_end(position):
            return None
        image = out if buffer_fits(out, self.scene.shape) else np.empty(self.scene.shape, np.uint8)
        label = self.scene.render_into(image)
        self.current_clip = self.scene.clip_index
        return DecodedFrame(image, time.perf_counter(), label)


_FOURCC = {".avi": "MJPG", ".mkv": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v"}


def write_demo_video(path: str | os.PathLike, num_frames: int, seed: int = 0,
                     width: int = 640, height: int = 480, fps: float = 30,
                     clip_frames: int = DEFAULT_CLIP_FRAMES) -> tuple[str, ...]:
    """Write `num_frames` of the demo scene to a video file; return each frame's class.

    The codec follows the extension (.avi/.mkv: MJPG, .mp4/.m4v/.mov: mp4v). The file is
    written under a temporary name and renamed, so a failure never leaves a partial file.
    """
    path = Path(path)
    fourcc = _FOURCC.get(path.suffix.lower())
    if fourcc is None:
        raise ValueError(f"write_demo_video: unsupported extension {path.suffix!r}; "
                         f"use one of {sorted(_FOURCC)}")
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps),
                             (int(width), int(height)))
    if not writer.isOpened():
        raise SourceError(f"cannot write video {path} with codec {fourcc} (OpenCV's VideoWriter "
                          "refused it; is the folder writeable?)")
    scene = DemoScene(seed, int(width), int(height), clip_frames)
    image = np.empty(scene.shape, np.uint8)
    labels = []
    try:
        for _ in range(num_frames):
            labels.append(scene.render_into(image))
            writer.write(image)
    except BaseException:
        writer.release()
        tmp.unlink(missing_ok=True)
        raise
    writer.release()
    os.replace(tmp, path)
    return tuple(labels)
