"""What the runtime is compared with: the loop a user writes first, and the GRU step in numpy."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from runtime.manifest import Manifest


def naive_loop(video: Path, cnn_path: Path, gru_path: Path, manifest: Manifest, providers: list[str],
               max_frames: int, threads: Optional[int] = None) -> tuple[int, np.ndarray]:
    """The loop a user writes first; returns (frames, latency per frame in seconds).

    Latency runs from the frame's grab (the instant the runtime stamps its frames with) to
    the GRU's logits. `grab()` + `retrieve()` is exactly what `VideoCapture.read()` does.
    Sessions have onnxruntime's default options unless `threads` sets the intra-op threads.
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    cnn = ort.InferenceSession(str(cnn_path), options, providers=providers)
    gru = ort.InferenceSession(str(gru_path), options, providers=providers)
    cnn_input = cnn.get_inputs()[0].name
    spec = manifest.input
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    states = {name: np.zeros((1, manifest.hidden_size), np.float32) for name in manifest.states}
    fetched = [*manifest.states.values(), "logits"]
    capture = cv2.VideoCapture(str(video))
    latencies = []
    while len(latencies) < max_frames and capture.grab():
        captured = time.perf_counter()
        ok, image = capture.retrieve()
        if not ok:
            break
        x = cv2.resize(image, (spec.width, spec.height))
        if spec.color_order == "RGB":
            x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
        x = (x.astype(np.float32) * spec.scale - mean) / std
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        features = cnn.run(None, {cnn_input: x})[0]
        *produced, logits = gru.run(fetched, {"x": features, **states})
        states = dict(zip(manifest.states, produced))  # each pair's output feeds its input, by name
        label = manifest.labels[int(np.argmax(logits[0]))]  # noqa: F841 - what the user would use
        latencies.append(time.perf_counter() - captured)
    capture.release()
    return len(latencies), np.array(latencies)


def numpy_gru_step(gru_onnx: Path) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The GRU step written in numpy (weights transposed once, PyTorch GRUCell equations),
    with its weights read from the step engine's ONNX file so both compute the same step."""
    model = onnx.load(str(gru_onnx))
    w = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    hidden = w["weight_hh"].shape[1]
    w_ih, w_hh = np.ascontiguousarray(w["weight_ih"].T), np.ascontiguousarray(w["weight_hh"].T)
    b_ih, b_hh = w["bias_ih"], w["bias_hh"]
    w_out, b_out = np.ascontiguousarray(w["head.weight"].T), w["head.bias"]

    def step(x: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gi = x @ w_ih
        gi += b_ih
        gh = h @ w_hh
        gh += b_hh
        rz = gi[:, : 2 * hidden] + gh[:, : 2 * hidden]
        rz = 0.5 * (1.0 + np.tanh(0.5 * rz))  # sigmoid without overflow
        n = np.tanh(gi[:, 2 * hidden :] + rz[:, :hidden] * gh[:, 2 * hidden :])
        h_next = n + rz[:, hidden:] * (h - n)
        return h_next, h_next @ w_out + b_out

    return step
