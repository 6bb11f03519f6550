"""TensorRT plans and the native TensorRT engine.

Building and running plans needs TensorRT, pycuda and an NVIDIA GPU (a Jetson or a CUDA
machine with the `tensorrt` extra); those tests skip elsewhere with the reason. What runs
everywhere: the messages when TensorRT is missing, the plan-cache key logic, the choice
between weakly and strongly typed networks, and the FP16 graph used for strongly typed
FP16 plans (checked with onnxruntime on the CPU).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import REPO, require_tensorrt_gpu

from export.graphs.graph import GraphBuilder
from export.graphs.gru import build_gru_step, init_gru_weights
from runtime.backends.engine import EngineError, Recurrence
from runtime.backends.tensorrt import (
    PlanBuildError,
    TensorRTUnavailable,
    TrtEngine,
    build_plan,
    device_key,
    plan_key,
    plan_matches,
    to_fp16_onnx,
)
from runtime.backends.tensorrt.build import _use_strong_typing

F, H, C = 16, 32, 4


def _tiny_backbone(size: int = 32) -> onnx.ModelProto:
    """Conv-ReLU-Conv-HardSwish-pool: the op types of the real backbone, small enough to build in seconds."""
    rng = np.random.default_rng(0)
    g = GraphBuilder("tiny_backbone")
    x = g.input("image", ["batch", 3, size, size])
    w1 = g.initializer("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3)
    b1 = g.initializer("b1", rng.standard_normal(8) * 0.1)
    y = g.node("Conv", [x, w1, b1], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    y = g.node("Relu", [y])
    w2 = g.initializer("w2", rng.standard_normal((F, 8, 3, 3)) * 0.2)
    b2 = g.initializer("b2", rng.standard_normal(F) * 0.1)
    y = g.node("Conv", [y, w2, b2], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.node("HardSwish", [y])
    y = g.node("GlobalAveragePool", [y])
    y = g.node("Flatten", [y], axis=1)
    g.output(y, "features", ["batch", F])
    return g.model()


def _frames(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, size // 4, size // 4))
    return np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3).astype(np.float32)


def _ort_run(path, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture()
def tiny_onnx(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(_tiny_backbone(), path)
    return path


@pytest.fixture()
def without_tensorrt(monkeypatch):
    """Make `import tensorrt` / `import pycuda` fail here even on a machine that has them."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)


# -- without TensorRT (runs everywhere) --------------------------------------------------------


def test_modules_import_without_tensorrt():
    # given a fresh interpreter
    code = (
        "import sys, runtime.backends.tensorrt, runtime.backends.tensorrt.runner, runtime.backends.tensorrt.build\n"
        "assert 'tensorrt' not in sys.modules and 'pycuda' not in sys.modules, 'imported eagerly'\n"
    )
    # when the TensorRT modules are imported, then neither tensorrt nor pycuda is
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_build_plan_without_tensorrt_names_the_extra(without_tensorrt, tiny_onnx, tmp_path):
    with pytest.raises(TensorRTUnavailable) as excinfo:
        build_plan(tiny_onnx, tmp_path / "tiny.plan", precision="fp16")
    assert "pip install 'edge-run[tensorrt]'" in str(excinfo.value)
    assert "JetPack" in str(excinfo.value)
    assert not (tmp_path / "tiny.plan").exists()


def test_device_key_without_tensorrt_names_the_extra(without_tensorrt):
    with pytest.raises(TensorRTUnavailable, match=r"edge-run\[tensorrt\]"):
        device_key()


def test_trt_engine_without_tensorrt_raises_engine_error_naming_the_extra(without_tensorrt, tmp_path):
    plan = tmp_path / "backbone.fp16.plan"
    plan.write_bytes(b"not needed: the import fails first")
    with pytest.raises(EngineError) as excinfo:
        TrtEngine(str(plan), "backbone", max_batch=1, precision="fp16")
    assert "pip install 'edge-run[tensorrt]'" in str(excinfo.value)


def test_build_plan_checks_its_arguments_before_needing_tensorrt(without_tensorrt, tiny_onnx, tmp_path):
    with pytest.raises(PlanBuildError, match="precision"):
        build_plan(tiny_onnx, tmp_path / "p.plan", precision="int4")
    with pytest.raises(PlanBuildError, match="min_batch"):
        build_plan(tiny_onnx, tmp_path / "p.plan", min_batch=4, opt_batch=2, max_batch=8)
    with pytest.raises(PlanBuildError, match="does not exist"):
        build_plan(tmp_path / "missing.onnx", tmp_path / "p.plan")


# -- the plan cache key ------------------------------------------------------------------------

BUILT = plan_key("ab" * 32, "int8", "10.3.0", "Orin (sm_87)")


def test_plan_matches_the_machine_that_built_it():
    assert plan_matches(BUILT, dict(BUILT)) == (True, "")


def test_plan_from_another_tensorrt_version_does_not_match():
    # the classic JetPack upgrade: same board, TensorRT 10.3 -> 10.7
    ok, reason = plan_matches(BUILT, {**BUILT, "tensorrt": "10.7.0"})
    assert not ok
    assert "TensorRT version '10.3.0'" in reason and "'10.7.0'" in reason and "rebuild" in reason


def test_plan_for_another_gpu_does_not_match():
    ok, reason = plan_matches(BUILT, {**BUILT, "gpu": "NVIDIA GeForce RTX 4090 (sm_89)"})
    assert not ok and "GPU 'Orin (sm_87)'" in reason and "RTX 4090" in reason


def test_plan_of_another_precision_or_onnx_does_not_match():
    ok, reason = plan_matches(BUILT, {**BUILT, "precision": "fp16"})
    assert not ok and "precision 'int8'" in reason and "'fp16'" in reason
    ok, reason = plan_matches(BUILT, {**BUILT, "onnx_sha256": "cd" * 32})
    assert not ok and "another ONNX file" in reason and "abababababab" in reason


def test_every_difference_is_reported_at_once():
    ok, reason = plan_matches(BUILT, plan_key("cd" * 32, "fp16", "10.7.0", "Thor"))
    assert not ok
    for word in ("TensorRT version", "GPU", "precision", "another ONNX file"):
        assert word in reason


def test_only_the_fields_the_caller_knows_are_compared():
    # the runtime knows the device (TensorRT + GPU) before it knows anything else
    assert plan_matches(BUILT, {"tensorrt": "10.3.0", "gpu": "Orin (sm_87)"}) == (True, "")
    ok, reason = plan_matches({"precision": "int8"}, {"tensorrt": "10.3.0"})
    assert not ok and "records no TensorRT version" in reason


# -- weak or strong typing ---------------------------------------------------------------------


def _fake_trt(version: str, flags=("FP16", "INT8", "TF32"), strong=True):
    """Only the attributes `_use_strong_typing` reads: what a given TensorRT release exposes."""
    creation = SimpleNamespace(**({"STRONGLY_TYPED": 1} if strong else {}))
    return SimpleNamespace(__version__=version, BuilderFlag=SimpleNamespace(**{f: 0 for f in flags}),
                           NetworkDefinitionCreationFlag=creation)


@pytest.mark.parametrize("precision", ["fp16", "int8", "fp32"])
def test_jetpack6_tensorrt_builds_weakly_typed_with_precision_flags(precision):
    assert _use_strong_typing(_fake_trt("10.3.0"), precision, None) is False


@pytest.mark.parametrize("precision", ["fp16", "int8", "fp32"])
def test_tensorrt_10_12_and_later_build_strongly_typed(precision):
    assert _use_strong_typing(_fake_trt("10.12.0.36"), precision, None) is True


def test_tensorrt_without_precision_flags_builds_strongly_typed():
    trt11 = _fake_trt("11.0.0", flags=("TF32",))
    assert _use_strong_typing(trt11, "fp16", None) is True
    with pytest.raises(PlanBuildError, match="no FP16 builder flag"):
        _use_strong_typing(trt11, "fp16", False)


# -- FP16 graphs for strongly typed plans (onnxruntime on the CPU) -----------------------------


def test_fp16_graph_keeps_fp32_io_and_matches_fp32(tiny_onnx, tmp_path):
    # given the FP32 backbone converted for a strongly typed FP16 plan
    fp16 = to_fp16_onnx(tiny_onnx, tmp_path / "tiny.fp16.onnx")
    model = onnx.load(str(fp16))
    # then its weights are FP16, its inputs and outputs still FP32, and the graph is valid
    onnx.checker.check_model(model)
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [onnx.TensorProto.FLOAT] * 2
    # and it computes the same features
    x = _frames(8)
    ref, got = _ort_run(tiny_onnx, {"image": x})[0], _ort_run(fp16, {"image": x})[0]
    assert got.dtype == np.float32
    # FP16 weights round each value by at most 2^-11 relative: the features may move by that
    # order, never in direction beyond 1e-4 of cosine (a wrong cast or a dropped layer does)
    assert _cosine(ref, got).min() > 0.9999


def test_fp16_conversion_refuses_a_quantized_graph(tmp_path):
    g = GraphBuilder("qdq")
    x = g.input("x", [1, 4])
    s = g.initializer("s", np.float32(0.1))
    z = g.initializer("z", np.int8(0), dtype=np.int8)
    q = g.node("QuantizeLinear", [x, s, z])
    y = g.node("DequantizeLinear", [q, s, z])
    g.output(y, "y", [1, 4])
    onnx.save(g.model(), tmp_path / "qdq.onnx")
    with pytest.raises(PlanBuildError, match="int8"):
        to_fp16_onnx(tmp_path / "qdq.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


# -- with TensorRT and a GPU ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu():
    return require_tensorrt_gpu()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plan_runs_like_onnxruntime_for_every_batch(gpu, tiny_onnx, tmp_path, precision):
    # given a plan built for batches 1..4
    info = build_plan(tiny_onnx, tmp_path / f"tiny.{precision}.plan", precision=precision, max_batch=4, opt_batch=2)
    assert info["key"]["precision"] == precision and (tmp_path / "timing.cache").is_file()
    assert plan_matches(info["key"], device_key())[0]
    x = _frames(4, seed=3)
    ref = _ort_run(tiny_onnx, {"image": x})[0]
    with TrtEngine(info["plan"], "backbone", max_batch=4, precision=precision) as engine:
        assert engine.input("image").shape == (4, 3, 32, 32)
        for batch in (1, 4, 2):
            # when a batch is written into the host buffer and run
            engine.input("image")[:batch] = x[:batch]
            engine.run(batch)
            # then the features match onnxruntime's
            got = engine.output("features")[:batch]
            # fp32: TF32 is off in fp32 plans, so only summation order differs (1e-4 of the range);
            # fp16: half precision's 2^-11 rounding compounded over the layers, the usual 2e-2 of the range
            tolerance = 1e-4 if precision == "fp32" else 2e-2
            np.testing.assert_allclose(got, ref[:batch], atol=tolerance * np.abs(ref).max())


def test_int8_plan_from_the_quantized_backbone(gpu, tiny_onnx, tmp_path):
    from export.quantize import quantize_backbone  # only here: a 2 s import, and every other test skips without a GPU

    calib, held = _frames(32, seed=1), _frames(8, seed=2)
    quantize_backbone(tiny_onnx, tmp_path / "tiny_int8.onnx", calib, method="minmax", keep_float=())
    info = build_plan(tmp_path / "tiny_int8.onnx", tmp_path / "tiny.int8.plan", precision="int8", max_batch=8)
    with TrtEngine(info["plan"], "backbone", max_batch=8, precision="int8") as engine:
        engine.input("image")[:8] = held
        engine.run(8)
        got = engine.output("features")[:8].copy()
    ref = _ort_run(tiny_onnx, {"image": held})[0]
    # the export's documented INT8 quality gate is a mean cosine of 0.95 (DEFAULT_MIN_COSINE); this plan
    # runs the same Q/DQ graph that passed it under onnxruntime, so it is held to what onnxruntime
    # reaches on such a graph (above 0.98), not merely to the gate
    assert _cosine(ref, got).mean() > 0.98


def test_gru_state_stays_on_the_device_and_matches_onnxruntime(gpu, tmp_path):
    # given a GRU step plan for 3 streams
    onnx.save(build_gru_step(init_gru_weights(F, H, C, seed=0)), tmp_path / "gru_step.onnx")
    info = build_plan(tmp_path / "gru_step.onnx", tmp_path / "gru_step.fp32.plan", precision="fp32", max_batch=3)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((6, 3, F)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "gru_step.onnx"), providers=["CPUExecutionProvider"])
    # fp32 plan without TF32: equal to onnxruntime up to summation order; 1e-4 absolute on logits and
    # states of order 1 (a state rounded to half precision, ~1e-3, or a row stepped twice breaks it)
    with TrtEngine(info["plan"], "gru", max_batch=3, precision="fp32", recurrences=(Recurrence("h", "h_next"),)) as engine:
        assert not engine.state()["h"].any()
        h_ref = np.zeros((3, H), np.float32)
        for t, x in enumerate(xs):
            # when stream 2 sits out the last steps (batch 2), its state must not move
            batch = 3 if t < 4 else 2
            engine.input("x")[:batch] = x[:batch]
            engine.step(batch)
            h_next, logits = session.run(None, {"x": x[:batch], "h": h_ref[:batch]})
            np.testing.assert_allclose(engine.output("logits")[:batch], logits, atol=1e-4)
            h_ref[:batch] = h_next
        # then the state read back equals onnxruntime's after six steps
        np.testing.assert_allclose(engine.state()["h"], h_ref, atol=1e-4)
        # and resetting one row zeroes just that row
        engine.reset_state([1])
        expected = h_ref.copy()
        expected[1] = 0
        np.testing.assert_allclose(engine.state()["h"], expected, atol=1e-4)
        # and a loaded state is what the next step starts from
        engine.load_state({"h": h_ref})
        engine.input("x")[:3] = xs[0]
        engine.step(3)
        h_next, _ = session.run(None, {"x": xs[0], "h": h_ref})
        np.testing.assert_allclose(engine.state()["h"], h_next, atol=1e-4)


def test_plan_built_for_another_tensorrt_is_refused_before_loading(gpu, tiny_onnx, tmp_path):
    info = build_plan(tiny_onnx, tmp_path / "tiny.fp16.plan", precision="fp16", max_batch=2)
    TrtEngine(info["plan"], "backbone", max_batch=2, precision="fp16", build_key=info["key"]).close()
    stale = {**info["key"], "tensorrt": "8.6.2"}  # the manifest says JetPack 5 built it
    with pytest.raises(EngineError) as excinfo:
        TrtEngine(info["plan"], "backbone", max_batch=2, precision="fp16", build_key=stale)
    assert "TensorRT version '8.6.2'" in str(excinfo.value) and "edge-export --trt --out" in str(excinfo.value)


def test_plan_from_elsewhere_is_refused_with_the_rebuild_command(gpu, tmp_path):
    plan = tmp_path / "engines" / "backbone.fp16.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"ftrt" + bytes(range(256)) * 8)  # what a plan from another version looks like to this one
    with pytest.raises(EngineError) as excinfo:
        TrtEngine(str(plan), "backbone", max_batch=1, precision="fp16")
    message = str(excinfo.value)
    assert "another TensorRT" in message and f"edge-export --trt --out {plan.parent}" in message
