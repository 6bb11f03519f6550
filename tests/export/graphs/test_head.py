"""The four recurrent heads (GRU/LSTM x 1/2 layers), step and window engines, against PyTorch.

References, all made by PyTorch and stored in tests/data so that this runs without torch:
- `gru_cell_torch.npz`, `lstm_cell_torch.npz` (`GRUCell`/`LSTMCell` + `Linear`), `gru2_torch.npz`,
  `lstm2_torch.npz` (`nn.GRU`/`nn.LSTM(num_layers=2)` + `Linear`): 40 steps from random initial
  states, every layer's h (and c) and the logits after each step (/work/shared/reference/README.md);
- `recurrent_zero_state_torch.npz`: the same modules on the same inputs from zero states, what a
  window engine computes (made by tests/data/make_zero_state_vectors.py).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from helpers import DATA

from export.graphs.head import (
    HeadShape,
    build_head_sequence,
    build_head_step,
    canonical_head_weights,
    head_shape,
    head_step_numpy,
    init_head_weights,
    weights_from_engine,
)
from export.graphs.weights import WeightsError
from runtime.manifest import state_pairs

# The requirement: numerically equal to PyTorch over 40 steps within 1e-5.
TOLERANCE = 1e-5
SHAPES = {  # reference file -> (cell, layers, F, H, C)
    "gru_cell_torch": ("gru", 1, 576, 256, 5),
    "lstm_cell_torch": ("lstm", 1, 96, 48, 5),
    "gru2_torch": ("gru", 2, 96, 48, 5),
    "lstm2_torch": ("lstm", 2, 96, 48, 5),
}


def _session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _reference(name: str) -> tuple[dict, HeadShape, np.ndarray, dict, dict]:
    """Weights, shape, x [batch, T, F], initial states and expected states [batch, T, H] by state name."""
    ref = dict(np.load(DATA / f"{name}.npz"))
    shape = head_shape(ref)
    x = ref["input.x"].transpose(1, 0, 2) if name == "gru_cell_torch" else ref["input.x"]
    h_out = ref["output.h"].transpose(1, 0, 2) if name == "gru_cell_torch" else ref["output.h"]
    start, expected = {}, {}
    for layer in range(shape.layers):
        for kind, name_ in zip("hc", shape.layer_states(layer)):
            initial, after = ref[f"input.{kind}0"], (h_out if kind == "h" else ref["output.c"])
            start[name_] = initial if shape.layers == 1 else initial[layer]
            expected[name_] = after if shape.layers == 1 else after[layer]
    logits = ref["output.logits"].transpose(1, 0, 2) if name == "gru_cell_torch" else ref["output.logits"]
    expected["logits"] = logits
    return ref, shape, np.ascontiguousarray(x), start, expected


@pytest.mark.parametrize("name", SHAPES)
def test_the_weights_say_which_head_they_are(name):
    ref = dict(np.load(DATA / f"{name}.npz"))
    assert head_shape(ref) == HeadShape(*SHAPES[name])


@pytest.mark.parametrize("name", SHAPES)
def test_step_engine_and_numpy_step_equal_pytorch_over_40_steps(name):
    # given PyTorch's weights, 40 inputs for a batch of 2 and non-zero initial states
    ref, shape, x, start, expected = _reference(name)
    step = _session(build_head_step(ref))  # the vectors' extra keys (input.*, output.*) are ignored
    outputs = [o.name for o in step.get_outputs()]
    assert sorted(i.name for i in step.get_inputs()) == sorted(["x", *shape.states])
    assert sorted(outputs) == sorted(["logits", *shape.states.values()])
    graph_states, numpy_states = dict(start), dict(start)
    for t in range(x.shape[1]):
        # when the exported step and the numpy step are each rolled, every state fed back by name
        got = dict(zip(outputs, step.run(None, {"x": x[:, t], **graph_states})))
        graph_states = {name_: got[output] for name_, output in shape.states.items()}
        numpy_states, numpy_logits = head_step_numpy(ref, x[:, t], numpy_states)
        # then every layer's h (and c) and the logits equal PyTorch's after every step
        for state in shape.states:
            np.testing.assert_allclose(graph_states[state], expected[state][:, t], atol=TOLERANCE, err_msg=f"{state} t={t}")
            np.testing.assert_allclose(numpy_states[state], expected[state][:, t], atol=TOLERANCE, err_msg=f"{state} t={t}")
        np.testing.assert_allclose(got["logits"], expected["logits"][:, t], atol=TOLERANCE)
        np.testing.assert_allclose(numpy_logits, expected["logits"][:, t], atol=TOLERANCE)


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("window", [1, 7, 40])
def test_window_engine_equals_pytorch_from_zero_states(name, window):
    # given PyTorch's outputs for the same inputs from zero states
    ref, _, x, _, _ = _reference(name)
    zero = np.load(DATA / "recurrent_zero_state_torch.npz")
    # when the window engine runs the first `window` frames once
    h_last, logits = _session(build_head_sequence(ref, window)).run(["h_last", "logits"], {"x": x[:, :window]})
    # then its logits and top-layer state are PyTorch's at that step
    np.testing.assert_allclose(logits, zero[f"{name}.logits"][:, window - 1], atol=TOLERANCE)
    np.testing.assert_allclose(h_last, zero[f"{name}.h_top"][:, window - 1], atol=TOLERANCE)


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 1), ("gru", 2), ("lstm", 2)])
def test_engines_use_plain_ops_and_name_their_states_as_the_manifest_does(cell, layers):
    weights = init_head_weights(cell, layers, 12, 8, 3, seed=1)
    step, window = build_head_step(weights), build_head_sequence(weights, 4)
    for model in (step, window):
        # TensorRT imports ONNX GRU/LSTM as loops: the graphs must not contain one
        assert not {node.op_type for node in model.graph.node} & {"GRU", "LSTM", "Loop", "Scan"}
    pairs = state_pairs(cell, layers)
    assert [i.name for i in step.graph.input] == ["x", *pairs]
    assert [o.name for o in step.graph.output] == [*pairs.values(), "logits"]
    assert len(pairs) == layers * (2 if cell == "lstm" else 1)


def test_pytorch_prefixes_and_a_one_layer_nn_lstm_are_accepted():
    # given a one-layer nn.LSTM under `rnn.` and the head under `fc.`, as a larger module names them
    ref = dict(np.load(DATA / "lstm_cell_torch.npz"))
    renamed = {f"rnn.{k}_l0": v for k, v in ref.items() if k.startswith(("weight", "bias"))}
    renamed.update({"fc.weight": ref["head.weight"], "fc.bias": ref["head.bias"], "optimizer.step": np.zeros(1)})
    # then it is the same head, in the cell's canonical names
    assert head_shape(renamed) == HeadShape("lstm", 1, 96, 48, 5)
    assert sorted(canonical_head_weights(renamed)) == sorted(["weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                              "head.weight", "head.bias"])


def test_weights_that_fit_no_head_are_refused_with_the_key_named():
    weights = init_head_weights("lstm", 2, 12, 8, 3)
    weights["weight_hh_l1"] = weights["weight_hh_l1"][:, :5]
    with pytest.raises(WeightsError, match="weight_hh_l1: expected"):
        build_head_step(weights)
    odd = init_head_weights("gru", 1, 12, 8, 3)
    odd["weight_hh"] = np.zeros((5 * 8, 8), np.float32)
    with pytest.raises(WeightsError, match="neither a GRU"):
        head_shape(odd)


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 1), ("gru", 2), ("lstm", 2)])
def test_the_weights_read_back_from_either_engine_are_the_weights_built_in(cell, layers):
    # what `edge-export verify` and `evaluate` fall back to when the recorded weights file is gone
    weights = init_head_weights(cell, layers, 12, 8, 3, seed=2)
    for model in (build_head_step(weights), build_head_sequence(weights, 5)):
        found = weights_from_engine(model)
        assert sorted(found) == sorted(weights)
        for key, value in weights.items():
            np.testing.assert_array_equal(found[key], value, err_msg=key)
