"""Re-estimate BatchNorm running statistics of a MobileNet-V3 on representative frames.

Why: a backbone initialised the torchvision way (kaiming fan_out, identity BatchNorm
statistics) shrinks the signal at every depthwise conv, so its pooled features are ~1e-7
and carry no information. Replacing each BatchNorm's running mean and variance by the
statistics of its input on real frames (what training-mode BatchNorm would see) restores
an O(1) signal without any training, and is also the usual fix after changing the input
resolution of a trained network.

How: layer by layer in network order, so each BatchNorm's statistics are measured with
every earlier BatchNorm already updated. The frames are carried through the network one
`features.i` stage at a time: for each Conv+BN in the stage a small onnxruntime graph
runs from the cached stage input to that Conv's output (earlier BNs of the stage with
their new statistics), then the whole stage runs once to produce the next stage's input.
Total work is about twice one forward pass; nothing is recomputed from the image.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import onnxruntime as ort

from export.graphs.graph import GraphBuilder
from export.graphs.mobilenet import ConvLayer, Stage, emit_stage, feature_shapes, stages
from export.graphs.weights import check_state_dict


def _session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _segment(stage: Stage, sd: Mapping[str, np.ndarray], shape: tuple, stop_before_bn=None):
    g = GraphBuilder("bn_segment")
    x = g.input("x", ["batch", *shape[1:]])
    y = emit_stage(g, x, stage, sd, fold_bn=False, stop_before_bn=stop_before_bn)
    g.output(y, "y", ["batch", "c", "h", "w"])
    return _session(g.model(check=False))


def _channel_stats(session, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population (biased) variance over N, H, W, merged batch by batch."""
    count, mean, m2 = 0, None, None
    for start in range(0, len(x), batch_size):
        y = session.run(None, {"x": x[start:start + batch_size]})[0]
        n = y.shape[0] * y.shape[2] * y.shape[3]
        b_mean = y.mean(axis=(0, 2, 3), dtype=np.float64)
        b_m2 = np.square(y - b_mean[None, :, None, None].astype(np.float32)).sum(axis=(0, 2, 3), dtype=np.float64)
        if mean is None:
            count, mean, m2 = n, b_mean, b_m2
        else:  # Chan et al. parallel merge of (count, mean, M2)
            delta = b_mean - mean
            total = count + n
            mean = mean + delta * (n / total)
            m2 = m2 + b_m2 + delta ** 2 * (count * n / total)
            count = total
    return mean, m2 / count


def _run(session, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([session.run(None, {"x": x[s:s + batch_size]})[0]
                           for s in range(0, len(x), batch_size)])


def reestimate_bn(variant: str, state_dict: Mapping[str, np.ndarray], frames: np.ndarray,
                  batch_size: int = 32) -> dict[str, np.ndarray]:
    """A copy of `state_dict` whose every BatchNorm running mean/variance is measured on `frames`.

    `frames` is float32 [N, 3, H, W], already normalised exactly as the runtime feeds the
    engine. Each BatchNorm gets the mean and the population (biased) variance of its input
    over all N frames and all positions, the quantities training-mode BatchNorm normalises
    with. Other keys (affine weights, convs, extra keys) are copied unchanged.
    """
    all_stages = stages(variant)
    check_state_dict(state_dict, feature_shapes(variant))
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be float32 [N, 3, H, W] with N >= 1, got shape {frames.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sd = {key: np.array(value, copy=True) for key, value in state_dict.items()}
    x = frames
    for stage in all_stages:
        for j, layer in enumerate(stage.layers):
            if isinstance(layer, ConvLayer):
                mean, var = _channel_stats(_segment(stage, sd, x.shape, stop_before_bn=j), x, batch_size)
                sd[f"{layer.bn}.running_mean"] = mean.astype(np.float32)
                sd[f"{layer.bn}.running_var"] = var.astype(np.float32)
        x = _run(_segment(stage, sd, x.shape), x, batch_size)
    return sd
