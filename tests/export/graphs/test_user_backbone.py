"""A backbone exported by another framework deploys with flags, no graph surgery.

The model here is built the way other frameworks export a classifier, not by the project's
builders: opset 11, input `[N, 3, ?, ?]` (dynamic batch, height and width), real convolutions
with random weights, GlobalAveragePool to `[N, C, 1, 1]`, then a Reshape whose target shape is
computed at run time (Shape -> Gather -> Unsqueeze -> Concat), then a classifier. Its own
normalisation is Caffe-style: BGR, pixels 0..255 (scale 1), per-channel mean and std.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.cli import main as export_main
from runtime import Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.manifest import BACKBONE, InputSpec
from runtime.preprocess import Preprocessor

SIZE = (48, 64)  # height, width deployed (the model itself accepts any)
MEAN = (103.53, 116.28, 123.675)  # BGR order, 0..255 units (the model's own, not torchvision's)
STD = (57.375, 57.12, 58.395)
CHANNELS = 16


def foreign_backbone(path, seed=0):
    """A small classifier as another framework exports it (see the module docstring)."""
    rng = np.random.default_rng(seed)

    def weight(name, *shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name)

    inits = [
        weight("conv1.w", 8, 3, 3, 3), numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "conv1.b"),
        weight("conv2.w", CHANNELS, 8, 3, 3),
        numpy_helper.from_array(rng.normal(0, 0.1, CHANNELS).astype(np.float32), "conv2.b"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        weight("fc.w", 10, CHANNELS), numpy_helper.from_array(np.zeros(10, np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", "conv1.w", "conv1.b"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("HardSigmoid", ["c1"], ["c1_gate"], alpha=1.0 / 6, beta=0.5),
        helper.make_node("Mul", ["c1", "c1_gate"], ["c1_act"]),  # hard-swish, as opset 11 exports spell it
        helper.make_node("Conv", ["c1_act", "conv2.w", "conv2.b"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["c2_act"]),
        helper.make_node("GlobalAveragePool", ["c2_act"], ["pooled"]),
        helper.make_node("Shape", ["pooled"], ["pooled_shape"]),
        helper.make_node("Gather", ["pooled_shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["pooled", "target"], ["embedding"]),
        helper.make_node("Gemm", ["embedding", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "torch_jit",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="pytorch")
    model.ir_version = 6
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference_features(model_path, images_bgr, output="embedding"):
    """The original model on an independent numpy preprocessing of already-sized BGR frames."""
    x = np.stack(images_bgr).astype(np.float64)  # BGR, 0..255: the model's own order and scale
    x = (x * 1.0 - np.asarray(MEAN)) / np.asarray(STD)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)
    model = onnx.load(str(model_path))
    if output not in [o.name for o in model.graph.output]:
        model.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([output], {"input.1": x})[0].reshape(len(images_bgr), -1)


FLAGS = ["--input-size", *map(str, SIZE), "--mean", *map(str, MEAN), "--std", *map(str, STD), "--scale", "1",
         "--color-order", "BGR", "--calib-frames", "24", "--holdout-frames", "8", "--hidden", "16", "--window", "4",
         "--stride", "2"]


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign")
    model = foreign_backbone(folder / "mobilenet_other.onnx")
    engines = folder / "engines"
    code = export_main(["--out", str(engines), "--backbone-onnx", str(model), "--feature-output", "embedding", *FLAGS])
    assert code == 0
    return model, engines


def frames(count, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for _ in range(count)]


def test_manifest_records_the_models_own_input(foreign):
    _, engines = foreign
    manifest = load_manifest(engines)
    assert manifest.input == InputSpec(height=SIZE[0], width=SIZE[1], color_order="BGR", mean=MEAN, std=STD, scale=1.0)
    assert manifest.feature_size == CHANNELS  # found by the probe run: static inference cannot see through the Reshape
    backbone = manifest.find(BACKBONE, "onnx", "fp32")
    assert backbone.inputs == {"image": ["batch", 3, *SIZE]} and backbone.outputs == {"features": ["batch", CHANNELS]}


def test_runtime_features_equal_the_original_model_on_its_own_preprocessing(foreign):
    model, engines = foreign
    manifest = load_manifest(engines)
    images = frames(3)
    engine = open_engines(manifest, "cpu", precision="fp32", num_streams=3).backbone
    preprocess = Preprocessor(manifest.input)
    for row, image in enumerate(images):
        preprocess(image, engine.input("image")[row])
    engine.run(3)  # the deployed graph takes any batch up to max_batch
    expected = reference_features(model, images)
    # Same float32 graph on the same pixels: equal to float32 rounding of the normalisation.
    np.testing.assert_allclose(engine.output("features")[:3], expected, rtol=1e-4, atol=1e-4)
    # And the recorded normalisation is what made it so: torchvision's would give other features.
    torchvision_rows = Preprocessor(InputSpec(height=SIZE[0], width=SIZE[1])).batch(images)
    other = ort.InferenceSession(str(manifest.path_of(manifest.find(BACKBONE, "onnx", "fp32"))),
                                 providers=["CPUExecutionProvider"]).run(None, {"image": torchvision_rows})[0]
    assert not np.allclose(other, expected, rtol=1e-2, atol=1e-2)


def test_int8_is_quantized_and_gated_like_the_built_in_backbone(foreign):
    model, engines = foreign
    manifest = load_manifest(engines)
    quality = manifest.quantization
    assert quality["gate"] == "passed" and quality["cosine_mean"] >= quality["min_cosine_gate"]
    int8 = open_engines(manifest, "cpu", precision="int8").backbone
    image = frames(1, seed=5)[0]
    Preprocessor(manifest.input)(image, int8.input("image")[0])
    int8.run(1)
    got, want = int8.output("features")[0], reference_features(model, [image])[0]
    cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cosine >= 0.95  # the quality gate's default requirement (DEFAULT_MIN_COSINE), on a fresh frame


def test_edge_run_runs_it_end_to_end(foreign):
    _, engines = foreign
    manifest = load_manifest(engines)
    with Pipeline(open_engines(manifest, "cpu"), [open_source("demo")], PipelineConfig(max_frames=12)) as run:
        results = list(run)
    assert len(results) == 12 and all(np.isfinite(r.probabilities).all() for r in results)


def test_pooled_output_is_flattened_inside_the_graph(foreign, tmp_path):
    model, _ = foreign
    engines = tmp_path / "engines"
    code = export_main(["--out", str(engines), "--backbone-onnx", str(model), "--feature-output", "pooled", "--no-int8", *FLAGS])
    assert code == 0
    manifest = load_manifest(engines)
    graph = onnx.load(str(manifest.path_of(manifest.find(BACKBONE, "onnx", "fp32")))).graph
    assert graph.node[-1].op_type == "Flatten" and graph.output[0].name == "features"
    images = frames(2, seed=3)
    session = ort.InferenceSession(graph_bytes(graph), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": Preprocessor(manifest.input).batch(images)})[0]
    assert got.shape == (2, CHANNELS)
    np.testing.assert_allclose(got, reference_features(model, images, "pooled"), rtol=1e-4, atol=1e-4)


def graph_bytes(graph):
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]).SerializeToString()


def test_a_json_sidecar_gives_the_same_normalisation(foreign, tmp_path):
    model, _ = foreign
    sidecar = tmp_path / "input.json"
    sidecar.write_text(json.dumps({"mean": list(MEAN), "std": list(STD), "scale": 1.0, "color_order": "BGR"}))
    engines = tmp_path / "engines"
    code = export_main(["--out", str(engines), "--backbone-onnx", str(model), "--input-json", str(sidecar),
                        "--input-size", *map(str, SIZE), "--no-int8", "--calib-frames", "4", "--holdout-frames", "2",
                        "--hidden", "16"])
    assert code == 0
    assert load_manifest(engines).input == InputSpec(SIZE[0], SIZE[1], "BGR", MEAN, STD, 1.0)


def test_dynamic_height_and_width_need_input_size(foreign, tmp_path, capsys):
    model, _ = foreign
    code = export_main(["--out", str(tmp_path / "e"), "--backbone-onnx", str(model), "--no-int8"])
    assert code == 2
    assert "dynamic height/width" in capsys.readouterr().err and not (tmp_path / "e" / "manifest.json").exists()


def test_an_unusable_feature_output_lists_the_candidates_with_shapes(foreign, tmp_path, capsys):
    model, _ = foreign
    code = export_main(["--out", str(tmp_path / "e"), "--backbone-onnx", str(model), "--feature-output", "c2_act",
                        "--input-size", *map(str, SIZE), "--no-int8"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'c2_act' is [batch, 16, 12, 16]" in err
    assert "pooled [batch, 16, 1, 1]" in err and "embedding [batch, 16]" in err and "logits [" in err


def test_bad_normalisation_values_exit_2_naming_the_flag(tmp_path, capsys):
    code = export_main(["--out", str(tmp_path / "e"), "--std", "1", "0", "1", "--no-int8"])
    assert code == 2 and "--std" in capsys.readouterr().err
    sidecar = tmp_path / "bad.json"
    sidecar.write_text(json.dumps({"mean": [0, 0, 0], "colour": "BGR"}))
    code = export_main(["--out", str(tmp_path / "e"), "--input-json", str(sidecar), "--no-int8"])
    assert code == 2 and "colour" in capsys.readouterr().err


def test_resize_happens_before_the_models_normalisation(foreign):
    """A camera frame of another size: the runtime resizes, then applies the model's own mean/std."""
    model, engines = foreign
    manifest = load_manifest(engines)
    big = np.random.default_rng(9).integers(0, 256, (SIZE[0] * 2, SIZE[1] * 2, 3), dtype=np.uint8)
    engine = open_engines(manifest, "cpu", precision="fp32").backbone
    Preprocessor(manifest.input)(big, engine.input("image")[0])
    engine.run(1)
    resized = cv2.resize(big, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(engine.output("features")[0], reference_features(model, [resized])[0], rtol=1e-4, atol=1e-4)
