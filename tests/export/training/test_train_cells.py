"""`--cell` and `--layers`: `edge-export` builds any head, `edge-export train --cell lstm --layers 2` trains
and deploys a two-layer LSTM head, and `edge-run` runs it; its outputs are checked against an LSTM
written here in numpy from PyTorch's equations."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from helpers import naive

from export.graphs.weights import load_state_dict
from runtime import cli
from runtime.errors import EXIT_OK, EXIT_USAGE
from runtime.manifest import GRU_SEQUENCE, GRU_STEP, load_manifest
from runtime.sources.demo import write_demo_video

WINDOW, HIDDEN, FRAMES = 6, 16, 14


@pytest.fixture(scope="module")
def tiny_gru_engines(tmp_path_factory):
    from export.build import BuildOptions, build

    out = tmp_path_factory.mktemp("tiny_gru")
    build(BuildOptions(out=out, input_size=(32, 32), calib_frames=4, holdout_frames=2, int8=False, window=4, stride=2))
    return out


def _sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))  # no overflow for large |v|


def _lstm_probabilities(weights: dict, features: np.ndarray, state=None):
    """nn.LSTM(num_layers=2) + Linear, step by step in float64: softmax of the logits at each step, and the state."""
    state = state or {k: np.zeros(HIDDEN) for k in ("h0", "c0", "h1", "c1")}
    probs = []
    for x in features.astype(np.float64):
        below = x
        for layer in (0, 1):
            h, c = state[f"h{layer}"], state[f"c{layer}"]
            gates = (weights[f"weight_ih_l{layer}"] @ below + weights[f"bias_ih_l{layer}"]
                     + weights[f"weight_hh_l{layer}"] @ h + weights[f"bias_hh_l{layer}"])
            i, f, g, o = np.split(gates, 4)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            state[f"h{layer}"], state[f"c{layer}"] = h, c
            below = h
        logits = weights["head.weight"] @ below + weights["head.bias"]
        e = np.exp(logits - logits.max())
        probs.append(e / e.sum())
    return np.array(probs), state


def test_train_lstm2_on_the_demo_clips_deploys_and_edge_run_runs_it(tmp_path, tiny_gru_engines, capsys):
    pytest.importorskip("torch")
    from export.cli import main

    # given engines with a one-layer GRU head, when `edge-export train --cell lstm --layers 2 --clips demo` runs
    out = tmp_path / "out"
    code = main(["train", "--cell", "lstm", "--layers", "2", "--clips", "demo:2", "--demo-frames", "10",
                 "--demo-size", "40", "30", "--engines", str(tiny_gru_engines), "--out", str(out), "--precision", "fp32",
                 "--epochs", "1", "--iterations", "2", "--hidden", str(HIDDEN), "--window", str(WINDOW),
                 "--cache", str(tmp_path / "cache"), "--no-progress"])
    assert code == EXIT_OK, capsys.readouterr().err
    # then the engines folder holds a two-layer LSTM head with its four named state pairs
    manifest = load_manifest(out)
    assert (manifest.cell, manifest.layers, manifest.hidden_size) == ("lstm", 2, HIDDEN)
    assert manifest.states == {"h": "h_next", "c": "c_next", "h_l1": "h_l1_next", "c_l1": "c_l1_next"}
    assert manifest.find(GRU_STEP, "onnx").file == "lstm2_step.onnx"
    assert manifest.find(GRU_SEQUENCE, "onnx").file == f"lstm2_window{WINDOW}.onnx"
    assert not (out / "gru_step.onnx").exists()
    assert (manifest.training["cell"], manifest.training["layers"]) == ("lstm", 2)
    weights = {k: v.astype(np.float64) for k, v in load_state_dict(out / "gru_head.safetensors").items()}
    assert weights["weight_hh_l1"].shape == (4 * HIDDEN, HIDDEN)  # nn.LSTM's names and gate rows

    # when edge-run runs it on a video with per-step and per-window output
    video = tmp_path / "clip.avi"
    write_demo_video(video, num_frames=FRAMES, seed=5, width=64, height=48)
    capsys.readouterr()
    code = cli.main(["--engines", str(out), "--source", str(video), "--backend", "cpu", "--emit", "both"])
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    lines = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    steps = [r for r in lines if r["mode"] == "step"]
    windows = [r for r in lines if r["mode"] == "window"]
    # then every frame has a step result and a window is decided every S frames once W are buffered
    assert [r["frame"] for r in steps] == list(range(FRAMES))
    assert [r["frame"] for r in windows] == list(range(WINDOW - 1, FRAMES, manifest.stride))
    for r in lines:
        assert list(r["probs"]) == list(manifest.labels) and r["label"] == max(r["probs"], key=r["probs"].get)
        assert abs(sum(r["probs"].values()) - 1.0) < 1e-5
    # and the probabilities are the numpy LSTM's on the same frames' features (decoded by OpenCV,
    # preprocessed the textbook way, the FP32 backbone run by a plain session)
    session = ort.InferenceSession(str(out / "backbone_fp32.onnx"), providers=["CPUExecutionProvider"])
    capture = cv2.VideoCapture(str(video))
    features = []
    while (frame := capture.read())[0]:
        features.append(session.run(None, {"image": naive(frame[1], manifest.input)[None]})[0][0])
    features = np.array(features)
    expected_steps, _ = _lstm_probabilities(weights, features)
    # 1e-5: float32 engines against float64 numpy on the same features (printed with 6 decimals)
    np.testing.assert_allclose([list(r["probs"].values()) for r in steps], expected_steps, atol=1e-5)
    for r in windows:
        expected, _ = _lstm_probabilities(weights, features[r["frame"] - WINDOW + 1:r["frame"] + 1])
        np.testing.assert_allclose(list(r["probs"].values()), expected[-1], atol=1e-5)


def test_edge_export_builds_a_two_layer_gru_head_from_the_command_line(tmp_path, capsys):
    from export.cli import main

    code = main(["--out", str(tmp_path / "e"), "--cell", "gru", "--layers", "2", "--hidden", "8", "--no-int8",
                 "--calib-frames", "4", "--holdout-frames", "2", "--input-size", "32", "32", "--window", "4"])
    assert code == EXIT_OK, capsys.readouterr().err
    capsys.readouterr()
    manifest = load_manifest(tmp_path / "e")
    assert (manifest.cell, manifest.layers, manifest.states) == ("gru", 2, {"h": "h_next", "h_l1": "h_l1_next"})
    assert manifest.find(GRU_STEP, "onnx").inputs == {"x": ["batch", 576], "h": ["batch", 8], "h_l1": ["batch", 8]}
    assert manifest.provenance["gru_weights"] == "seeded:0"  # the shipped head is a one-layer GRU: not this one
    # and an unknown cell is a usage error naming the choices
    assert main(["--out", str(tmp_path / "x"), "--cell", "rnn"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("edge-export: error: argument --cell: invalid choice: 'rnn'") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
