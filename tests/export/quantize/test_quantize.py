"""INT8 post-training quantization: TensorRT's Q/DQ layout, feature quality, the quality gate.

The backbone under test is the real default one: MobileNet-V3-Small from the project's
builder with the shipped pretrained weights (export/assets), at 128x128 to keep the suite
fast, quantized with the default recipe (which keeps the first three stages float).
Measured on it: INT8 vs FP32 cosine mean 0.998 (min 0.993-0.997) for every method, on
held-out demo frames from another seed. (With seeded weights and re-estimated BatchNorm the
same recipe reaches only 0.93-0.99: random layers amplify small perturbations with depth.)
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from export.build import DEFAULT_BACKBONE_WEIGHTS
from export.cli import main as export_main
from export.errors import EXIT_FAILED, EXIT_OK
from export.graphs.bn_stats import reestimate_bn
from export.graphs.graph import GraphBuilder
from export.graphs.mobilenet import build_backbone, init_state_dict
from export.graphs.weights import load_state_dict
from export.quantize import (
    DEFAULT_KEEP_FLOAT,
    DEFAULT_METHOD,
    DEFAULT_MIN_COSINE,
    METHODS,
    QualityGateError,
    QuantizationError,
    check_quality,
    feature_quality,
    qdq_layout,
    quantize_backbone,
    read_frames,
)
from runtime.manifest import InputSpec, load_manifest
from runtime.sources.demo import DemoScene

SIZE = 128


def _demo_frames(count: int, seed: int) -> np.ndarray:
    """Demo frames one in 12, so a few dozen frames span many clips (objects, backgrounds, colours)."""
    return read_frames("demo", count, InputSpec(height=SIZE, width=SIZE), seed=seed, every=12)


def _backbone(frames: np.ndarray) -> onnx.ModelProto:
    """The default backbone; `frames` re-estimate BatchNorm only where no shipped weights exist."""
    if DEFAULT_BACKBONE_WEIGHTS.is_file():
        return build_backbone("small", load_state_dict(DEFAULT_BACKBONE_WEIGHTS), (SIZE, SIZE))
    state = reestimate_bn("small", init_state_dict("small", seed=0), frames)
    return build_backbone("small", state, (SIZE, SIZE))


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return _demo_frames(64, seed=1)


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return _demo_frames(32, seed=2)  # another seed: other clips, never seen in calibration


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory, calib) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "backbone.onnx"
    onnx.save(_backbone(calib), path)
    return path


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, fp32_path, calib):
    path = tmp_path_factory.mktemp("int8") / "backbone_int8.onnx"
    summary = quantize_backbone(fp32_path, path, calib)
    return path, summary


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


# -- layout ------------------------------------------------------------------------------------


def test_quantized_graph_is_in_tensorrt_explicit_quantization_layout(quantized, fp32_path):
    # given the backbone quantized with the default method
    path, summary = quantized
    # when its graph is inspected
    layout = qdq_layout(path)
    # then it has Q/DQ pairs and nothing TensorRT would reject
    assert layout["problems"] == []
    assert layout["quantize_linear"] > 0 and layout["dequantize_linear"] == layout["quantize_linear"]
    assert summary["method"] == DEFAULT_METHOD and summary["qdq_nodes"] == 2 * layout["quantize_linear"]
    # every zero point is int8 0 (uint8 would give 127, which TensorRT rejects)
    assert layout["zero_points"] == {"dtypes": ["int8"], "all_zero": True}
    # every Conv weight outside the float-kept first stages is quantized per output channel
    convs = [n for n in onnx.load(str(fp32_path)).graph.node if n.op_type == "Conv"]
    int8_convs = [n for n in convs if not n.name.startswith(DEFAULT_KEEP_FLOAT)]
    assert 0 < len(int8_convs) < len(convs) and summary["kept_float"] > 0
    assert layout["weights_per_channel"] == len(int8_convs) and layout["weights_per_tensor"] == 0
    # activations are quantized per tensor, every bias stays float
    assert layout["activations_per_tensor"] >= len(int8_convs) and layout["activations_per_channel"] == 0
    assert layout["quantized_biases"] == 0 and layout["float_biases"] == len(convs)


def test_weight_dequantize_nodes_carry_an_axis_and_a_scale_per_channel(quantized):
    # given the quantized graph
    model = onnx.load(str(quantized[0]))
    inits = _initializers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    # when the DequantizeLinear feeding each Conv weight is examined
    for conv in (n for n in model.graph.node if n.op_type == "Conv" and not n.name.startswith(DEFAULT_KEEP_FLOAT)):
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        q = producers[dq.input[0]]
        assert q.op_type == "QuantizeLinear" and q.input[0] in inits  # float weight -> Q -> DQ
        weight, scale, zero = inits[q.input[0]], inits[dq.input[1]], inits[dq.input[2]]
        # then the scale has one entry per output channel along axis 0, and the zero points are int8 0
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        assert axis == 0 and scale.shape == (weight.shape[0],)
        assert zero.dtype == np.int8 and not zero.any()
        # and the bias is the float initializer itself
        assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32


def test_inspector_flags_a_graph_tensorrt_would_reject(tmp_path, fp32_path, calib):
    # given the same backbone quantized the CPU way: asymmetric uint8 activations, quantized bias
    import onnxruntime.quantization as ortq

    class Reader(ortq.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([calib[i:i + 16] for i in range(0, len(calib), 16)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    path = tmp_path / "uint8.onnx"
    ortq.quantize_static(str(fp32_path), str(path), Reader(), quant_format=ortq.QuantFormat.QDQ,
                         activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8, per_channel=True)
    # when it is inspected
    layout = qdq_layout(path)
    # then the non-int8 zero points and the quantized biases are reported
    assert "uint8" in layout["zero_points"]["dtypes"]
    assert layout["quantized_biases"] > 0
    assert any("zero point is uint8" in p for p in layout["problems"])
    assert any("quantized bias" in p for p in layout["problems"])


# -- quality -----------------------------------------------------------------------------------


def test_int8_features_stay_close_to_fp32_on_held_out_frames(quantized, fp32_path, held_out):
    # given the INT8 backbone and demo frames it was not calibrated on
    quality = feature_quality(fp32_path, quantized[0], held_out)
    # then its features pass the documented quality gate: a mean cosine to FP32 of at least
    # DEFAULT_MIN_COSINE = 0.95 (`--min-cosine`, README), the requirement INT8 ships under
    assert DEFAULT_MIN_COSINE == 0.95
    assert quality["frames"] == len(held_out)
    assert quality["cosine_mean"] >= DEFAULT_MIN_COSINE, quality
    assert np.isfinite(quality["max_abs_error"])
    # and it keeps the precision this calibration reaches (1 - mean cosine = 0.0013 on these
    # frames, onnxruntime CPU): three times that error is a calibration gone wrong even while it
    # passes the gate (ranges 2.5x too wide measured 0.0076)
    assert 1.0 - quality["cosine_mean"] <= 0.004, quality
    check_quality(quality)


@pytest.mark.parametrize("method", [m for m in METHODS if m != DEFAULT_METHOD])
def test_every_calibration_method_gives_the_same_layout_and_passes_the_gate(tmp_path, fp32_path, calib, held_out,
                                                                            method):
    # given the backbone calibrated with each other method
    summary = quantize_backbone(fp32_path, tmp_path / "int8.onnx", calib[:32], method=method)
    # then the graph layout is the TensorRT one as well
    assert summary["method"] == method and summary["frames"] == 32
    assert qdq_layout(tmp_path / "int8.onnx")["problems"] == []
    # and it passes the documented gate (mean cosine >= DEFAULT_MIN_COSINE on held-out frames)
    check_quality(feature_quality(fp32_path, tmp_path / "int8.onnx", held_out))


def test_keep_float_chooses_which_layers_stay_float(tmp_path, fp32_path, calib):
    convs = [n for n in onnx.load(str(fp32_path)).graph.node if n.op_type == "Conv"]
    # given every layer quantized (keep_float=()), then every Conv weight is INT8
    summary = quantize_backbone(fp32_path, tmp_path / "all.onnx", calib[:32], method="minmax", keep_float=())
    assert summary["kept_float"] == 0 and qdq_layout(tmp_path / "all.onnx")["weights_per_channel"] == len(convs)
    # given only the stem kept float, then the stem's input and weight are not dequantized
    summary = quantize_backbone(fp32_path, tmp_path / "stem.onnx", calib[:32], method="minmax", keep_float=("features.0.",))
    model = onnx.load(str(tmp_path / "stem.onnx"))
    producers = {out: node for node in model.graph.node for out in node.output}
    stem = next(n for n in model.graph.node if n.name.startswith("features.0.") and n.op_type == "Conv")
    assert all(name not in producers or producers[name].op_type != "DequantizeLinear" for name in stem.input)
    assert qdq_layout(tmp_path / "stem.onnx")["weights_per_channel"] == len(convs) - 1
    # and a prefix that names nothing is an error, not a silent full quantization
    with pytest.raises(QuantizationError, match="matches no node"):
        quantize_backbone(fp32_path, tmp_path / "x.onnx", calib[:8], method="minmax", keep_float=("backbone.stem",))


# -- the quality gate --------------------------------------------------------------------------


def test_quality_gate_raises_below_the_threshold_with_a_readable_message():
    # given features whose mean cosine to FP32 is 0.90
    quality = {"cosine_mean": 0.90, "cosine_min": 0.71, "max_abs_error": 3.0}
    # when the gate is checked at 0.95
    with pytest.raises(QualityGateError) as excinfo:
        check_quality(quality, min_mean=0.95)
    # then the message gives the numbers and the way out
    message = str(excinfo.value)
    assert "0.9000" in message and "0.95" in message and "0.7100" in message
    assert "--allow-degraded" in message
    # and the same features pass a lower gate
    check_quality(quality, min_mean=0.85)


def test_quality_gate_rejects_nan():
    with pytest.raises(QualityGateError):
        check_quality({"cosine_mean": float("nan"), "cosine_min": float("nan")})


def _calibration_folder(folder: Path) -> Path:
    """8 images: the build calibrates on 0-2 and 4-6 (blank grey) and holds out 3 and 7 (demo scenes).

    With 6 calibration + 2 held-out frames the build holds out every 4th frame (export.build._split).
    """
    folder.mkdir()
    scene = DemoScene(seed=3, width=160, height=120)
    for index in range(8):
        image = np.full(scene.shape, 127, np.uint8)
        if index in (3, 7):
            scene.skip(24)  # another clip
            scene.render_into(image)
        cv2.imwrite(str(folder / f"{index:02d}.png"), image)
    return folder


def test_a_build_calibrated_on_blank_frames_fails_the_gate_and_exits_1(tmp_path, capsys):
    # given calibration frames that say nothing about real activation ranges (blank grey)
    folder = _calibration_folder(tmp_path / "frames")
    args = ["--out", str(tmp_path / "engines"), "--calib", str(folder), "--calib-frames", "6", "--holdout-frames", "2",
            "--calibration", "minmax", "--input-size", str(SIZE), str(SIZE)]
    # when edge-export builds with the default gate
    code = export_main(args)
    err = capsys.readouterr().err
    # then the held-out demo frames fail the gate: exit 1, a message with the way out, no engines
    assert code == EXIT_FAILED, err
    assert "fails the quality gate" in err and "--allow-degraded" in err
    assert not (tmp_path / "engines" / "manifest.json").exists()
    # and --allow-degraded ships it, recording that the gate was not passed
    assert export_main([*args, "--allow-degraded"]) == EXIT_OK
    quantization = load_manifest(tmp_path / "engines").quantization
    assert quantization["gate"] == "degraded (allowed)" and quantization["cosine_mean"] < DEFAULT_MIN_COSINE


# -- failures ----------------------------------------------------------------------------------


def test_corrupt_onnx_gives_a_readable_error_and_no_output(tmp_path, calib):
    # given a file that is not ONNX
    bad = tmp_path / "backbone.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    out = tmp_path / "int8.onnx"
    # when it is quantized
    with pytest.raises(QuantizationError) as excinfo:
        quantize_backbone(bad, out, calib[:8])
    # then the error names the file and says what is wrong, and nothing was written
    assert str(bad) in str(excinfo.value) and "not a valid ONNX model" in str(excinfo.value)
    assert not out.exists()


def test_failure_midway_keeps_the_previous_output_and_leaves_no_temporary_files(tmp_path, calib):
    # given a previous INT8 file, and a valid ONNX model that onnxruntime cannot run
    g = GraphBuilder("unrunnable")
    x = g.input("image", ["batch", 3, SIZE, SIZE])
    y = g.node("Frobnicate", [x], domain="com.example")
    g.output(y, "features", ["batch", 3, SIZE, SIZE])
    model = g.model(check=False)
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.checker.check_model(model)  # valid ONNX: only onnxruntime lacks the op
    src = tmp_path / "unrunnable.onnx"
    onnx.save(model, src)
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"previous good file")
    before = set(os.listdir(tmp_path))
    # when quantization fails inside onnxruntime
    with pytest.raises(QuantizationError) as excinfo:
        quantize_backbone(src, out, calib[:8])
    # then the message says which stage failed, the old file is intact and nothing is left behind
    assert "onnxruntime" in str(excinfo.value)
    assert out.read_bytes() == b"previous good file"
    assert set(os.listdir(tmp_path)) == before


def test_frames_of_the_wrong_size_are_refused(tmp_path, fp32_path):
    frames = np.zeros((4, 3, SIZE // 2, SIZE // 2), np.float32)
    with pytest.raises(QuantizationError, match="input size"):
        quantize_backbone(fp32_path, tmp_path / "int8.onnx", frames)
    assert not (tmp_path / "int8.onnx").exists()


def test_unknown_method_is_refused(tmp_path, fp32_path, calib):
    with pytest.raises(QuantizationError, match="minmax, entropy, percentile"):
        quantize_backbone(fp32_path, tmp_path / "int8.onnx", calib[:8], method="kl")
