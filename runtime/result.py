"""What the pipeline emits: one result per step (per frame) or per window."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class EmitMode(str, enum.Enum):
    """Which outputs a run produces.

    STEP: the GRU steps once per frame with the carried state; one result per frame.
    WINDOW: every `stride` frames, the GRU runs over the last `window` features from a
    zero state; one clip-level result per stride.
    BOTH: both of the above, tagged by `Result.mode`.
    """

    STEP = "step"
    WINDOW = "window"
    BOTH = "both"

    @property
    def steps(self) -> bool:
        return self in (EmitMode.STEP, EmitMode.BOTH)

    @property
    def windows(self) -> bool:
        return self in (EmitMode.WINDOW, EmitMode.BOTH)


@dataclass(frozen=True)
class Result:
    stream: int
    frame_index: int
    capture_time: float  # seconds since the epoch
    mode: str  # "step" or "window"
    label: str
    score: float
    probabilities: tuple[float, ...]
    latency: float  # seconds, capture -> result
    # Frames of this stream that were not processed since its previous result: replaced in the
    # mailbox (newest wins), skipped by realtime pacing, or skipped as corrupt.
    dropped: int
    true_label: Optional[str] = None
    source: str = ""
    model: str = ""  # the engines' short manifest hash (Manifest.model_id): which model produced this result
    labels: tuple[str, ...] = ()  # the model's class names (what `probabilities` are of); empty: the sink's

    def to_json(self, labels: tuple[str, ...]) -> dict:
        labels = self.labels or labels  # after an engine swap the labels may not be those the sink started with
        record = {
            "stream": self.stream,
            "source": self.source,
            "model": self.model,
            "frame": self.frame_index,
            "time": round(self.capture_time, 6),
            "mode": self.mode,
            "label": self.label,
            "score": round(self.score, 6),
            "probs": {name: round(p, 6) for name, p in zip(labels, self.probabilities)},
            "latency_ms": round(self.latency * 1e3, 3),
            "dropped": self.dropped,
        }
        if self.true_label is not None:
            record["true_label"] = self.true_label
        return record
