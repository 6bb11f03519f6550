"""Task accuracy of a recurrent head on backbone features, the way the runtime scores it (numpy only).

- **window**: the head from zero states over W consecutive processed frames of one clip,
  the last step's logits (what `edge-run --emit window` computes every S frames);
- **step**: the clips concatenated into one stream, the state carried across clip
  boundaries, scored only at steps whose last W processed frames share one label (what
  `edge-run --score` counts for per-step output);
- **single frame**: the same head fed one frame from a zero state (no temporal context);
- **drops**: before windowing, each frame is dropped with probability p (as the runtime
  drops stale frames under load), so a window of W processed frames spans more time.

Weights are any head `export.graphs.head` builds (GRU or LSTM, one or two layers), as PyTorch
names them; the cells are the same numpy equations as the builders' references, in float64.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from export.graphs.gru import gru_cell_numpy
from export.graphs.head import checked_head_weights, layer_weights
from export.graphs.lstm import lstm_cell_numpy


def head_logits(weights: Mapping[str, np.ndarray], x: np.ndarray, every_step: bool = False) -> np.ndarray:
    """Run the head over x [N, T, F] from zero states; logits [N, C] of the last step, or [N, T, C]."""
    checked, shape = checked_head_weights(weights)
    w = {k: np.asarray(v, np.float64) for k, v in checked.items()}
    sequence = np.asarray(x, np.float64)
    n, steps, _ = sequence.shape
    for layer in range(shape.layers):  # layer by layer over the whole sequence: the layer above reads every h
        cell = layer_weights(w, layer, shape.layers)
        h, c = np.zeros((n, shape.hidden)), np.zeros((n, shape.hidden))
        outputs = np.empty((n, steps, shape.hidden))
        for t in range(steps):
            if shape.cell == "gru":
                h = gru_cell_numpy(cell, sequence[:, t], h)
            else:
                h, c = lstm_cell_numpy(cell, sequence[:, t], h, c)
            outputs[:, t] = h
        sequence = outputs
    top = sequence if every_step else sequence[:, -1]
    return top @ w["head.weight"].T + w["head.bias"]


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
    predictions = np.concatenate([head_logits(weights, x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)])
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
        predictions = head_logits(weights, x, every_step=True)[0].argmax(1)
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
