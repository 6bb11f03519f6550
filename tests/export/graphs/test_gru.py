"""The exported GRU step and window graphs against independent references.

References: ONNX's own `GRU` operator (run by onnxruntime), PyTorch's `GRUCell` output
vectors stored in tests/data, and the plain numpy step.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import DATA
from onnx import TensorProto, helper

from export.graphs.gru import GRU_KEYS, build_gru_sequence, build_gru_step, gru_dims, gru_shapes, gru_step_numpy, init_gru_weights
from export.graphs.weights import WeightsError

F, H, C = 24, 16, 3


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _roll(step: ort.InferenceSession, xs: np.ndarray, h0: np.ndarray):
    """Run the step graph over xs [T, N, F]; returns the states [T, N, H] and logits [T, N, C]."""
    hs, logits, h = [], [], h0
    for x in xs:
        h, lg = step.run(None, {"x": x, "h": h})
        hs.append(h)
        logits.append(lg)
    return np.stack(hs), np.stack(logits)


def _onnx_gru_operator(w: dict, F: int, H: int) -> onnx.ModelProto:
    """A one-node model with ONNX's GRU op; its gate order is z, r, h where PyTorch's is r, z, n."""
    perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
    inits = [
        helper.make_tensor("W", TensorProto.FLOAT, (1, 3 * H, F), w["weight_ih"][perm].ravel()),
        helper.make_tensor("R", TensorProto.FLOAT, (1, 3 * H, H), w["weight_hh"][perm].ravel()),
        helper.make_tensor("B", TensorProto.FLOAT, (1, 6 * H),
                           np.concatenate([w["bias_ih"][perm], w["bias_hh"][perm]])),
    ]
    node = helper.make_node("GRU", ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"],
                            hidden_size=H, linear_before_reset=1)
    graph = helper.make_graph(
        [node], "onnx_gru",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", F]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "N", H])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "N", H]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "N", H])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def weights():
    return init_gru_weights(F, H, C, seed=3)


@pytest.fixture(scope="module")
def step(weights):
    return _session(build_gru_step(weights))


def test_step_graph_rolled_100_steps_equals_onnx_gru_operator(weights, step):
    # given a 100-step sequence for a batch of 2 and a non-zero initial state
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((100, 2, F)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (2, H)).astype(np.float32)
    # when the exported step is rolled and ONNX's GRU operator runs the same sequence
    hs, logits = _roll(step, xs, h0)
    y, y_h = _session(_onnx_gru_operator(weights, F, H)).run(None, {"X": xs, "h0": h0[None]})
    # then every state agrees, and so does the head applied to the operator's states
    np.testing.assert_allclose(hs, y[:, 0], atol=1e-5)
    np.testing.assert_allclose(hs[-1], y_h[0], atol=1e-5)
    np.testing.assert_allclose(logits, y[:, 0] @ weights["head.weight"].T + weights["head.bias"], atol=1e-5)


def test_step_graph_equals_numpy_step_for_any_batch(weights, step):
    rng = np.random.default_rng(1)
    for batch in (1, 5):
        # given a batch of inputs and states
        x = rng.standard_normal((batch, F)).astype(np.float32)
        h = rng.uniform(-1, 1, (batch, H)).astype(np.float32)
        # when both take one step
        h_graph, logits_graph = step.run(None, {"x": x, "h": h})
        h_np, logits_np = gru_step_numpy(weights, x, h)
        # then they agree
        np.testing.assert_allclose(h_graph, h_np, atol=1e-6)
        np.testing.assert_allclose(logits_graph, logits_np, atol=1e-6)


def test_step_graph_and_numpy_equal_pytorch_grucell_vectors():
    # given PyTorch's GRUCell(576, 256) + Linear(256, 5) weights and its 40-step outputs
    ref = dict(np.load(DATA / "gru_cell_torch.npz"))
    assert gru_dims(ref) == (576, 256, 5)
    step = _session(build_gru_step(ref))  # the test vectors' extra keys are ignored
    # when the exported step and the numpy step are rolled from the same initial state
    hs, logits = _roll(step, ref["input.x"], ref["input.h0"])
    h = ref["input.h0"]
    for t in range(len(ref["input.x"])):
        h, logits_np = gru_step_numpy(ref, ref["input.x"][t], h)
        # then the numpy step tracks PyTorch at every step
        np.testing.assert_allclose(h, ref["output.h"][t], atol=1e-5)
        np.testing.assert_allclose(logits_np, ref["output.logits"][t], atol=1e-5)
    # and so does the graph
    np.testing.assert_allclose(hs, ref["output.h"], atol=1e-5)
    np.testing.assert_allclose(logits, ref["output.logits"], atol=1e-5)


def test_window_graph_equals_w_steps_of_the_step_graph_from_zero(weights, step):
    # given a batch of 3 windows of 8 frames
    window = 8
    x = np.random.default_rng(2).standard_normal((3, window, F)).astype(np.float32)
    # when the window graph runs once and the step graph runs 8 times from a zero state
    h_last, logits = _session(build_gru_sequence(weights, window)).run(None, {"x": x})
    hs, step_logits = _roll(step, x.transpose(1, 0, 2).copy(), np.zeros((3, H), np.float32))
    # then the final state and logits agree
    np.testing.assert_allclose(h_last, hs[-1], atol=1e-6)
    np.testing.assert_allclose(logits, step_logits[-1], atol=1e-6)


def test_graphs_use_plain_ops_not_the_gru_loop(weights):
    # TensorRT imports ONNX GRU as a loop: the exported graphs must not contain one
    for model in (build_gru_step(weights), build_gru_sequence(weights, 4)):
        ops = {node.op_type for node in model.graph.node}
        assert not ops & {"GRU", "Loop", "Scan"}
        assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][0] == "batch"


def test_torch_style_prefixed_names_are_accepted(weights, step):
    # given the same weights named as a module holding an nn.GRU and an `fc` head
    renamed = {f"gru.{k}_l0": v for k, v in weights.items() if not k.startswith("head.")}
    renamed.update({"fc.weight": weights["head.weight"], "fc.bias": weights["head.bias"],
                    "backbone.unrelated": np.zeros(3)})
    x = np.ones((1, F), np.float32)
    h = np.zeros((1, H), np.float32)
    # when built from the renamed dict, then the step is the same
    got = _session(build_gru_step(renamed)).run(None, {"x": x, "h": h})
    for a, b in zip(got, step.run(None, {"x": x, "h": h})):
        np.testing.assert_array_equal(a, b)


def test_mis_shaped_or_missing_weights_raise_weights_error_naming_the_key(weights):
    # given a weight_hh for the wrong hidden size and no head bias
    bad = dict(weights)
    bad["weight_hh"] = np.zeros((3 * H, H + 1), np.float32)
    del bad["head.bias"]
    # when building, then both problems are named, with the expected and actual shapes
    with pytest.raises(WeightsError) as err:
        build_gru_step(bad)
    message = str(err.value)
    assert "weight_hh" in message and f"{(3 * H, H)}" in message and f"{(3 * H, H + 1)}" in message
    assert "head.bias" in message


def test_init_follows_pytorch_bounds_and_is_seeded():
    w = init_gru_weights(F, H, C, seed=7)
    assert set(w) == set(GRU_KEYS)
    assert {k: v.shape for k, v in w.items()} == gru_shapes(F, H, C)
    assert max(np.abs(v).max() for v in w.values()) <= 1 / np.sqrt(H)
    assert all(np.array_equal(w[k], init_gru_weights(F, H, C, seed=7)[k]) for k in GRU_KEYS)
