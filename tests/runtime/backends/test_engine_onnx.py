"""The onnxruntime backend against plain `session.run` and the numpy GRU equations."""
import numpy as np
import onnxruntime as ort
import pytest

from export.graphs.gru import build_gru_step, gru_step_numpy, init_gru_weights
from runtime.backends.engine import EngineError, Recurrence
from runtime.backends.onnxrt import OrtEngine

F, H, C = 12, 8, 3
GRU_PAIRS = (Recurrence("h", "h_next"),)


@pytest.fixture()
def gru_model(tmp_path):
    weights = init_gru_weights(F, H, C, seed=1)
    path = tmp_path / "gru.onnx"
    path.write_bytes(build_gru_step(weights).SerializeToString())
    return path, weights


def test_bound_outputs_equal_session_run(gru_model):
    path, _ = gru_model
    engine = OrtEngine(str(path), "gru", max_batch=4, precision="fp32")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, F)).astype(np.float32)
    h = rng.normal(size=(3, H)).astype(np.float32)
    engine.input("x")[:3] = x
    engine.input("h")[:3] = h
    logits_buffer = engine.output("logits")
    engine.run(3)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x, "h": h})
    np.testing.assert_allclose(engine.output("h_next")[:3], expected[0], atol=1e-6)
    np.testing.assert_allclose(engine.output("logits")[:3], expected[1], atol=1e-6)
    assert engine.output("logits") is logits_buffer  # preallocated, never replaced


def test_recurrent_steps_carry_state_like_the_equations(gru_model):
    path, weights = gru_model
    engine = OrtEngine(str(path), "gru", max_batch=2, precision="fp32", recurrences=GRU_PAIRS)
    rng = np.random.default_rng(1)
    h = np.zeros((2, H), np.float32)
    for _ in range(25):
        x = rng.normal(size=(2, F)).astype(np.float32)
        engine.input("x")[:2] = x
        engine.step(2)
        h, logits = gru_step_numpy(weights, x, h)
        np.testing.assert_allclose(engine.state()["h"][:2], h, atol=1e-5)
        np.testing.assert_allclose(engine.output("logits")[:2], logits, atol=1e-5)


def test_stepping_fewer_rows_leaves_the_other_rows_alone(gru_model):
    path, weights = gru_model
    engine = OrtEngine(str(path), "gru", max_batch=3, precision="fp32", recurrences=GRU_PAIRS)
    start = np.arange(3 * H, dtype=np.float32).reshape(3, H) / 100
    engine.load_state({"h": start})
    x = np.ones((1, F), np.float32)
    engine.input("x")[:1] = x
    engine.step(1)
    expected_row0, _ = gru_step_numpy(weights, x, start[:1])
    np.testing.assert_allclose(engine.state()["h"][0], expected_row0[0], atol=1e-5)
    np.testing.assert_array_equal(engine.state()["h"][1:], start[1:])
    engine.step(1)  # and again, from the other buffer of the pair
    np.testing.assert_array_equal(engine.state()["h"][1:], start[1:])
    engine.reset_state([0])
    assert np.all(engine.state()["h"][0] == 0) and np.array_equal(engine.state()["h"][1:], start[1:])


def test_batch_outside_the_built_range_is_refused(gru_model):
    engine = OrtEngine(str(gru_model[0]), "gru", max_batch=2, precision="fp32")
    with pytest.raises(EngineError, match="batch 3 outside 1..2"):
        engine.run(3)


def test_unavailable_provider_names_what_exists(gru_model):
    with pytest.raises(EngineError, match="CUDAExecutionProvider.*--backend cpu"):
        OrtEngine(str(gru_model[0]), "gru", max_batch=1, precision="fp32", backend="cuda")


def test_corrupt_model_is_a_readable_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(EngineError, match="cannot load"):
        OrtEngine(str(path), "backbone", max_batch=1, precision="fp32")
