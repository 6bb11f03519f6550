"""Every numeric and list setting's allowed range, declared once, for the CLIs and the config objects.

Each `Spec` is both an argparse `type=` (a flag's text in, the value out, or
`argparse.ArgumentTypeError` naming the value and the range) and a check for the config
dataclasses' `__post_init__` (`spec.check("PipelineConfig.stride", value)` raises
`UsageError`, exit 2). No value (None) means the default everywhere; 0 is a value like any
other, accepted only where the range allows it, and then it means 0.

Upper bounds are there to refuse absurd values before they allocate or overflow (a window
of 10^8 frames is a MemoryError in the ring buffer, port 70000 an OverflowError in the
socket layer), not to second-guess unusual but real settings; each says why it is where it is.
"""
from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Optional, Union

from runtime.errors import UsageError

Number = Union[int, float]


class _Invalid(Exception):
    """What is wrong with a value, worded to follow it ("is not an integer")."""


@dataclass(frozen=True)
class Spec:
    """A range of ints or finite floats: `low`..`high`, `low` excluded when `low_open`."""

    kind: type  # int or float
    low: Number
    high: Number
    low_open: bool = False
    unit: str = ""

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        unit = f" {self.unit}" if self.unit else ""
        if self.low_open:
            return f"{what} greater than {_show(self.low)} and at most {_show(self.high)}{unit}"
        return f"{what} from {_show(self.low)} to {_show(self.high)}{unit}"

    def scaled(self, factor: float, unit: str) -> "Spec":
        """The same range in another unit (seconds in the config, milliseconds on the command line)."""
        return Spec(self.kind, self.low * factor, self.high * factor, self.low_open, unit)

    def __call__(self, text: str) -> Number:
        try:
            return self._in_range(self._parse(text))
        except _Invalid as exc:
            raise argparse.ArgumentTypeError(f"{text!r} {exc}; allowed: {self.describe()}") from None

    def check(self, name: str, value: object) -> Number:
        """`value` itself if it is of this kind and in range; UsageError naming `name` otherwise."""
        try:
            return self._in_range(self._coerce(value))
        except _Invalid as exc:
            raise UsageError(f"{name} = {value!r} {exc}; allowed: {self.describe()}") from None

    def _parse(self, text: str) -> Number:
        try:
            return int(text) if self.kind is int else float(text)
        except (TypeError, ValueError):
            raise _Invalid("is not an integer" if self.kind is int else "is not a number") from None

    def _coerce(self, value: object) -> Number:
        # bool is an int to Python but never a count or a duration to a user.
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _Invalid("is not an integer" if self.kind is int else "is not a number")
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                raise _Invalid("is not an integer")
            return int(value)
        return float(value)

    def _in_range(self, value: Number) -> Number:
        if self.kind is float and not math.isfinite(value):
            raise _Invalid("is not a finite number")
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high:
            raise _Invalid("is out of range")
        return value


def _show(bound: Number) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def ints(low: int, high: int, unit: str = "") -> Spec:
    """Integers from `low` to `high` inclusive."""
    return Spec(int, low, high, unit=unit)


def positive(high: float, unit: str = "") -> Spec:
    """Finite numbers above 0, at most `high`."""
    return Spec(float, 0.0, high, low_open=True, unit=unit)


def fraction(low: float = 0.0, high: float = 1.0) -> Spec:
    """Finite numbers from `low` to `high` inclusive."""
    return Spec(float, low, high)


DAY = 86_400.0  # seconds

# --- the runtime -------------------------------------------------------------------------
# W x F float32 per stream in the ring buffer, and W GRU steps per window decision: 3600
# frames is two minutes at 30 fps (14 MB per stream at F=960), past any temporal problem
# this runtime is for (30-300 frames) yet far below where an allocation fails.
WINDOW = ints(1, 3600, "frames")
# The stride allocates nothing; a day of frames at 30 fps bounds it only against typos.
STRIDE = ints(1, 2_592_000, "frames")
# A frame that may take a minute is no deadline any more; 0 would make every frame a miss.
BUDGET = positive(60.0, "seconds")
BUDGET_MS = BUDGET.scaled(1e3, "ms")
# Above a few hundred, onnxruntime's thread pool costs far more than it gives.
THREADS = ints(1, 256)
# The fastest industrial cameras; a rate of 0 or below has no frame period.
FPS = positive(1000.0, "fps")
# OpenCV's capture properties; 16384 is twice 8K, the largest sensor a Jetson takes.
FRAME_SIDE = ints(1, 16384, "pixels")
# A gap of 0 would reset a live stream on every frame (every gap is > 0); a day is "never".
RESET_GAP = positive(DAY, "seconds")
RESET_GAP_MS = RESET_GAP.scaled(1e3, "ms")
# 0 frames would end before the first; 10^12 frames is a year of 30 fps thirty times over.
MAX_FRAMES = ints(1, 10**12, "frames")
# 0 would write a checkpoint on every loop; a day between checkpoints is the most that still resumes.
CHECKPOINT_EVERY = positive(DAY, "seconds")
# 0 would never restore (`--no-restore` says that); a year is older than any useful state.
CHECKPOINT_MAX_AGE = positive(365 * DAY, "seconds")
# /healthz needs a real interval to judge a stall; a day without frames is already an outage.
STALL_AFTER = positive(DAY, "seconds")
# The sinks get half of it and at least 1 s to flush, then the checkpoint is written: below 2 s
# a clean shutdown could not finish; above an hour systemd would have killed it long before.
STOP_TIMEOUT = Spec(float, 2.0, 3600.0, unit="seconds")
FLUSH_TIMEOUT = positive(3600.0, "seconds")
# 0 asks the kernel for any free port (the tests do); above 65535 there are no ports.
PORT = ints(0, 65535)
# Results held while the broker is away, ~500 bytes each: a million is ~0.5 GB, the most an edge box spares.
MQTT_QUEUE = ints(1, 1_000_000, "messages")
# V4L2 numbers devices /dev/video0..; -1 would mean OpenCV's "any camera", never what was meant.
CAMERA = ints(0, 1023)
# How long a ready frame waits for the other streams' frames: 0 (no wait) is valid, a second is a stall.
COLLECT_TIMEOUT = Spec(float, 0.0, 1.0, unit="seconds")
# FIFO depth under DropPolicy.NONE: every slot adds a frame of latency.
QUEUE_FRAMES = ints(1, 64, "frames")

# Preview frames a second per watched stream: above a camera's rate there is nothing new to show.
PREVIEW_FPS = positive(60.0, "fps")
# Bounds of the recording and clip folders: 1 MB holds a few chunks; 10 TB is past any edge box's disk.
STORAGE_MB = positive(10_000_000.0, "MB")
# Steps per recording chunk: a crash loses at most one chunk; 100,000 steps at F=960 is ~400 MB of memory.
RECORD_CHUNK = ints(1, 100_000, "steps")
# Pre- and post-roll of an event clip: 0 is meaningful (no pre-roll); ten minutes of frames is the most a ring should hold.
CLIP_SECONDS = Spec(float, 0.0, 600.0, unit="seconds")
CLIP_MIN_SCORE = fraction(0.0, 1.0)
# Seconds between two clips of one stream: 0 allows back-to-back clips; a day is "once".
CLIP_HOLDOFF = Spec(float, 0.0, DAY, unit="seconds")

# --- edge-export -------------------------------------------------------------------------
# GRU weights are 3H x (F+H) floats: H=4096 with F=960 is ~250 MB, beyond any edge head.
HIDDEN = ints(1, 4096)
# The recurrent heads the builders make: one or two stacked layers of a GRU or LSTM cell
# ("a one- or two-layer LSTM or GRU"; a third layer adds cost, not memory, at 30-300 frames).
CELLS = ("gru", "lstm")
LAYERS = ints(1, 2, "layers")
# MobileNet-V3 halves the image five times (32 px is 1x1 at the end); calibration holds
# N x 3 x H x W floats, so 1024 px with the frame counts below stays within a few GB.
INPUT_SIDE = ints(32, 1024, "pixels")
CALIB_FRAMES = ints(1, 2048, "frames")
HOLDOUT_FRAMES = ints(1, 2048, "frames")
COSINE = fraction(-1.0, 1.0)  # a cosine's own range
# Streams per batch the engines are built for; TensorRT profiles beyond 256 are pure memory.
MAX_BATCH = ints(1, 256, "streams")
# TensorRT's builder workspace; 64 GB is the largest Jetson's whole memory.
WORKSPACE_MB = ints(1, 65536, "MB")
# Orin and Xavier have DLA cores 0 and 1.
DLA_CORE = ints(0, 1)
# The backbone plan precisions `_tensorrt` builds (the recurrent head is always float32).
TRT_PRECISIONS = ("int8", "fp16")
SEED = ints(0, 2**32 - 1)  # what numpy's legacy seeding takes; the Generator takes it too
VERIFY_FRAMES = ints(1, 4096, "frames")
# A network's own input normalisation, (pixel * scale - mean) / std per channel: mean and std in
# scaled units (1/255 gives torchvision's 0..1, 1 gives Caffe's 0..255, 255 at most).
INPUT_MEAN = fraction(-255.0, 255.0)
INPUT_STD = positive(255.0)
INPUT_SCALE = positive(255.0)
COLOR_ORDERS = ("RGB", "BGR")  # the channel order the network expects; sources deliver BGR
# --- training (edge-export train / pretrain / evaluate) -----------------------------------
VAL_FRACTION = Spec(float, 0.0, 0.9)  # 0: no validation split; above 0.9 nothing is left to train on
EPOCHS = ints(1, 100_000)
PATIENCE = ints(1, 100_000, "epochs")
STEPS = ints(1, 10_000_000, "steps")
BATCH = ints(1, 65_536)
LEARNING_RATE = positive(10.0)
DROP_RATE = Spec(float, 0.0, 0.99)  # a rate of 1 drops every frame: nothing left to learn or score
MAX_FAILED = fraction(0.0, 1.0)
DEMO_FRAMES = ints(1, 10_000, "frames")
DEMO_SIDE = ints(16, 4096, "pixels")
# Augmented views per training clip; each costs one more feature extraction of the training clips.
VIEWS = ints(0, 64, "views")


def check_fields(obj: object, specs: dict[str, Spec], optional: Iterable[str] = ()) -> None:
    """Check each named field of a config object; fields in `optional` may be None (the default)."""
    allowed_none = set(optional)
    owner = type(obj).__name__
    for field, spec in specs.items():
        value = getattr(obj, field)
        if value is None and field in allowed_none:
            continue
        spec.check(f"{owner}.{field}", value)


def check_normalisation(owner: str, mean: object, std: object, scale: object, color_order: object) -> None:
    """An input normalisation's parts (None: the default), each in its range; UsageError naming the bad one."""
    for name, value, spec in (("mean", mean, INPUT_MEAN), ("std", std, INPUT_STD)):
        if value is None:
            continue
        if not isinstance(value, (tuple, list)) or len(value) != 3:
            raise UsageError(f"{owner}.{name} = {value!r} is not 3 numbers (one per channel); allowed: {spec.describe()} each")
        for channel, item in enumerate(value):
            spec.check(f"{owner}.{name}[{channel}]", item)
    if scale is not None:
        INPUT_SCALE.check(f"{owner}.scale", scale)
    if color_order is not None and color_order not in COLOR_ORDERS:
        raise UsageError(f"{owner}.color_order = {color_order!r} is not a colour order; allowed: {', '.join(COLOR_ORDERS)}")


def check_enum(name: str, value: object, kind: type[Enum], optional: bool = False) -> None:
    """UsageError unless `value` is a member of `kind` (or None where that means the default)."""
    if value is None and optional:
        return
    if not isinstance(value, kind):
        choices = ", ".join(repr(m) for m in kind)
        raise UsageError(f"{name} = {value!r} is not a {kind.__name__}; allowed: {choices}")


def labels(text: str) -> tuple[str, ...]:
    """argparse type for a comma-separated label list: at least 2, none empty, no duplicates."""
    try:
        return _labels(tuple(part.strip() for part in text.split(",")))
    except _Invalid as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}; allowed: {LABELS_RULE}") from None


def label_set(text: str) -> tuple[str, ...]:
    """argparse type for a comma-separated set of existing labels to watch for: at least 1, none empty, none twice."""
    items = tuple(part.strip() for part in text.split(","))
    twice = sorted({item for item in items if items.count(item) > 1})
    if not all(items) or twice:
        raise argparse.ArgumentTypeError(f"{text!r} has an empty label or one twice; allowed: comma-separated labels, "
                                         "none empty, no label twice")
    return items


def check_labels(name: str, value: object, optional: bool = False) -> Optional[tuple[str, ...]]:
    """A config object's labels: a sequence of strings by the same rule as `labels`."""
    if value is None and optional:
        return None
    try:
        if isinstance(value, str) or not isinstance(value, (tuple, list)):
            raise _Invalid("is not a list of labels")
        if not all(isinstance(label, str) for label in value):
            raise _Invalid("holds a label that is not text")
        return _labels(tuple(label.strip() for label in value))
    except _Invalid as exc:
        raise UsageError(f"{name} = {value!r} {exc}; allowed: {LABELS_RULE}") from None


LABELS_RULE = "at least 2 comma-separated labels, none empty, no label twice"


def _labels(items: tuple[str, ...]) -> tuple[str, ...]:
    if not any(items):
        raise _Invalid("names no label")
    if any(not item for item in items):
        raise _Invalid("has an empty label")
    if len(items) < 2:
        raise _Invalid("names fewer than 2 labels")
    twice = sorted({item for item in items if items.count(item) > 1})
    if twice:
        raise _Invalid(f"names {', '.join(twice)} more than once")
    return items


def choices_list(allowed: Iterable[str]):
    """argparse type for a comma-separated list drawn from `allowed`: non-empty, each at most once."""
    allowed = tuple(allowed)

    def parse(text: str) -> tuple[str, ...]:
        try:
            return _choices(tuple(part.strip() for part in text.split(",")), allowed)
        except _Invalid as exc:
            raise argparse.ArgumentTypeError(f"{text!r} {exc}; allowed: {_choices_rule(allowed)}") from None

    return parse


def check_choices(name: str, value: object, allowed: Iterable[str]) -> tuple[str, ...]:
    """A config object's list drawn from `allowed`, by the same rule as `choices_list`."""
    allowed = tuple(allowed)
    try:
        if isinstance(value, str) or not isinstance(value, (tuple, list)):
            raise _Invalid("is not a list")
        return _choices(tuple(value), allowed)
    except _Invalid as exc:
        raise UsageError(f"{name} = {value!r} {exc}; allowed: {_choices_rule(allowed)}") from None


def _choices(items: tuple, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not items:
        raise _Invalid("is empty")
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise _Invalid(f"has {'an unknown item' if len(unknown) == 1 else 'unknown items'} {', '.join(repr(item) for item in unknown)}")
    if len(set(items)) != len(items):
        raise _Invalid("names an item twice")
    return items


def _choices_rule(allowed: tuple[str, ...]) -> str:
    return f"a non-empty comma-separated list of {', '.join(allowed)}, each at most once"
