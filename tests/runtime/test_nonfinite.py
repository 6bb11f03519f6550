"""NaN/Inf from an engine: the stream's state is reset, the event counted, nothing emitted.

The backbone here is a real ONNX model brought in through `--backbone-onnx`: its features
are log(max pixel + 2) per channel, which is NaN exactly for black frames.
"""
import numpy as np
import onnx
import pytest
from helpers import PacedLiveSource
from onnx import TensorProto, helper

from export.cli import main as export_main
from runtime import Pipeline, PipelineConfig, load_manifest, open_engines
from runtime.mailbox import DropPolicy


def tiny_backbone(path, size=32, features=8):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("GlobalMaxPool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Add", ["flat", "two"], ["shifted"]),
        helper.make_node("Log", ["shifted"], ["logged"]),
        helper.make_node("MatMul", ["logged", "proj"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "nan_on_black",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", features])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
         onnx.numpy_helper.from_array(rng.normal(size=(3, features)).astype(np.float32), "proj")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def nan_engines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nan")
    model = tiny_backbone(folder / "tiny.onnx")
    code = export_main(["--out", str(folder / "engines"), "--backbone-onnx", str(model), "--feature-output", "embedding",
                        "--no-int8", "--calib-frames", "8", "--hidden", "16", "--window", "4", "--stride", "2"])
    assert code == 0
    return folder / "engines"


def test_user_backbone_is_used_as_is_with_its_geometry(nan_engines):
    manifest = load_manifest(nan_engines)
    assert (manifest.input.height, manifest.input.width, manifest.feature_size) == (32, 32, 8)
    assert manifest.backbone_arch == "onnx:tiny.onnx"


def test_black_frames_reset_the_stream_are_counted_and_never_emitted(nan_engines):
    manifest = load_manifest(nan_engines)
    engines = open_engines(manifest, "cpu")
    source = PacedLiveSource(fps=500.0, dark={5, 6})
    config = PipelineConfig(max_frames=12, drop_policy=DropPolicy.NONE)
    with Pipeline(engines, [source], config) as pipeline:
        results = list(pipeline)
    assert [r.frame_index for r in results] == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]
    assert all(np.all(np.isfinite(r.probabilities)) for r in results)
    assert pipeline.stats.streams[0].nonfinite == 2
    assert pipeline.stats.streams[0].resets == {"non-finite output": 2}
    # Frame 7 was stepped from a zero state: it equals a fresh run whose first frame is frame 7.
    fresh_engines = open_engines(manifest, "cpu")
    replay = PacedLiveSource(fps=500.0)
    replay.open()
    images = [replay.read().image.copy() for _ in range(8)]
    from runtime.preprocess import Preprocessor

    Preprocessor(manifest.input)(images[7], fresh_engines.backbone.input("image")[0])
    fresh_engines.backbone.run(1)
    fresh_engines.gru_step.input("x")[0] = fresh_engines.backbone.output("features")[0]
    fresh_engines.gru_step.step(1)
    logits = fresh_engines.gru_step.output("logits")[0]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(results[5].probabilities, expected, atol=1e-5)
