"""Task accuracy of a GRU head on backbone features, the way the runtime scores it (numpy only).

- **window**: the GRU from a zero state over W consecutive processed frames of one clip,
  the last step's logits (what `edge-run --emit window` computes every S frames);
- **step**: the clips concatenated into one stream, the state carried across clip
  boundaries, scored only at steps whose last W processed frames share one label (what
  `edge-run --score` counts for per-step output);
- **single frame**: the same head fed one frame from a zero state (no temporal context);
- **drops**: before windowing, each frame is dropped with probability p (as the runtime
  drops stale frames under load), so a window of W processed frames spans more time.

Weights are the canonical GRU state dict of `export.graphs.gru` (PyTorch GRUCell layout).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from export.graphs.gru import canonical_gru_weights


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def gru_logits(weights: Mapping[str, np.ndarray], x: np.ndarray, h: Optional[np.ndarray] = None,
               every_step: bool = False) -> np.ndarray:
    """Run the cell over x [N, T, F] from `h` (zeros); logits [N, C] of the last step, or [N, T, C]."""
    w = {k: np.asarray(v, np.float64) for k, v in canonical_gru_weights(weights).items()}
    n, steps, _ = x.shape
    hidden = w["weight_hh"].shape[1]
    h = np.zeros((n, hidden)) if h is None else np.asarray(h, np.float64)
    gi_all = np.asarray(x, np.float64) @ w["weight_ih"].T + w["bias_ih"]
    outputs = []
    for t in range(steps):
        gi = gi_all[:, t]
        gh = h @ w["weight_hh"].T + w["bias_hh"]
        r = _sigmoid(gi[:, :hidden] + gh[:, :hidden])
        z = _sigmoid(gi[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
        cand = np.tanh(gi[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
        h = (1.0 - z) * cand + z * h
        if every_step:
            outputs.append(h @ w["head.weight"].T + w["head.bias"])
    if every_step:
        return np.stack(outputs, axis=1)
    return h @ w["head.weight"].T + w["head.bias"]


def kept_frames(length: int, drop: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the frames that survive random drops with probability `drop` (at least one)."""
    if drop <= 0:
        return np.arange(length)
    keep = np.nonzero(rng.random(length) >= drop)[0]
    return keep if len(keep) else np.array([int(rng.integers(length))])


def windows_of(features: Sequence[np.ndarray], labels: Sequence[int], window: int, stride: int = 1,
               drop: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every window of `window` processed frames (after drops), every `stride` frames: x [N, W, F], y [N]."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for feats, label in zip(features, labels):
        kept = feats[kept_frames(len(feats), drop, rng)]
        for end in range(window, len(kept) + 1, stride):
            xs.append(kept[end - window:end])
            ys.append(label)
    if not xs:
        return np.zeros((0, window, features[0].shape[1] if len(features) else 0), np.float32), np.zeros(0, int)
    return np.stack(xs), np.asarray(ys)


def window_accuracy(weights: Mapping[str, np.ndarray], features: Sequence[np.ndarray], labels: Sequence[int],
                    window: int, stride: int = 4, drop: float = 0.0,
                    seed: int = 0) -> tuple[float, int]:
    """(accuracy, windows) of per-window decisions over the clips."""
    x, y = windows_of(features, labels, window, stride, drop, seed)
    if len(y) == 0:
        return float("nan"), 0
    predictions = np.concatenate([gru_logits(weights, x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)])
    return float(np.mean(predictions == y)), int(len(y))


def single_frame_accuracy(weights: Mapping[str, np.ndarray], features: Sequence[np.ndarray], labels: Sequence[int],
                          stride: int = 4) -> tuple[float, int]:
    """(accuracy, frames) of the head fed one frame from a zero state."""
    return window_accuracy(weights, features, labels, window=1, stride=stride)


def step_accuracy(weights: Mapping[str, np.ndarray], features: Sequence[np.ndarray], labels: Sequence[int],
                  window: int, drop: float = 0.0, seed: int = 0,
                  streams: int = 4) -> tuple[float, int]:
    """(accuracy, steps) of per-step output over the clips played back to back, state carried.

    The clips are shuffled (seeded) into `streams` streams; a step is scored when the last
    `window` processed frames of its stream share one label, as `edge-run --score` does.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features))
    correct = total = 0
    for s in range(streams):
        chosen = order[s::streams]
        if len(chosen) == 0:
            continue
        xs, ys = [], []
        for i in chosen:
            kept = kept_frames(len(features[i]), drop, rng)
            xs.append(features[i][kept])
            ys.append(np.full(len(kept), labels[i]))
        x, y = np.concatenate(xs)[None], np.concatenate(ys)
        predictions = gru_logits(weights, x, every_step=True)[0].argmax(1)
        run = label_runs(y)
        scored = run >= window
        correct += int(np.sum(predictions[scored] == y[scored]))
        total += int(np.sum(scored))
    return (correct / total if total else float("nan")), total


def label_runs(y: np.ndarray) -> np.ndarray:
    """For each step, how many consecutive steps up to it carry its label (1 at a change)."""
    run = np.ones(len(y), int)
    for t in range(1, len(y)):
        if y[t] == y[t - 1]:
            run[t] = run[t - 1] + 1
    return run


def report(weights: Mapping[str, np.ndarray], features: Sequence[np.ndarray], labels: Sequence[int], window: int, drop: float = 0.3,
           seed: int = 0) -> dict:
    """Every accuracy figure the manifest records, on one set of (held-out) clips."""
    win, n_win = window_accuracy(weights, features, labels, window, seed=seed)
    win_drop, n_drop = window_accuracy(weights, features, labels, window, drop=drop, seed=seed)
    step, n_step = step_accuracy(weights, features, labels, window, seed=seed)
    step_drop, _ = step_accuracy(weights, features, labels, window, drop=drop, seed=seed)
    single, n_single = single_frame_accuracy(weights, features, labels)
    return {
        "window_accuracy": round(win, 4), "windows": n_win,
        f"window_accuracy_drop{int(round(drop * 100))}": round(win_drop, 4),
        "step_accuracy": round(step, 4), "steps": n_step,
        f"step_accuracy_drop{int(round(drop * 100))}": round(step_drop, 4),
        "single_frame_accuracy": round(single, 4), "single_frames": n_single,
        "chance": round(1.0 / max(1, len(set(int(v) for v in labels))), 4),
    }
