"""The torch-free MobileNet-V3 builder against torchvision, and against a numpy forward of its own.

Two independent references, neither of which reads the project's `stages()` table:
- `tests/data/mobilenet_v3_small_torchvision_bn.npz`: torchvision's own `mobilenet_v3_small`
  (random weights, BatchNorm statistics re-estimated on smooth images so every block shapes
  the output) run on 4 inputs, with its pooled features and the spatial mean of every
  `features.i` block's output (`stage.i`): a mistake in one block shows at that block.
- `TORCHVISION_BNECK` below, torchvision's published `_mobilenet_v3_conf`, from which the
  plain-numpy forward is written; the project's table must equal it.
(The older `mobilenet_v3_small_torchvision.npz` gave the same features whatever the input,
to 1e-7, so it checked little more than the last layers; it is gone.)
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import DATA
from numpy.lib.stride_tricks import sliding_window_view

from export.graphs.bn_stats import reestimate_bn
from export.graphs.mobilenet import (
    BN_EPS,
    FEATURE_SIZE,
    VARIANTS,
    ConvLayer,
    build_backbone,
    count_parameters,
    feature_shapes,
    init_state_dict,
    stages,
)
from export.graphs.weights import WeightsError, load_state_dict, save_state_dict

REFERENCE = DATA / "mobilenet_v3_small_torchvision_bn.npz"
# The reference's features and block means are float32 results of ~50 layers (convs summing
# up to 576x25 products, BatchNorm, pooling); float32 accumulation in another order (torch
# against onnxruntime, folded or explicit BatchNorm, or a float64 forward) differs by a few
# 1e-6 of a block's largest mean, so 1e-5 relative to it is float32 agreement, while a wrong
# activation, stride, SE or residual in any block moves that block's means by 1e-2 or more.
RTOL = 1e-5

# torchvision/models/mobilenetv3.py, `_mobilenet_v3_conf(arch)` with width_mult 1.0, no
# dilation, no reduced tail: bneck_conf(input_channels, kernel, expanded_channels,
# out_channels, use_se, activation ("RE" ReLU, "HS" Hardswish), stride). Written out here
# from torchvision's definition, not read from export.graphs.mobilenet.
TORCHVISION_BNECK = {
    "small": (
        (16, 3, 16, 16, True, "RE", 2),
        (16, 3, 72, 24, False, "RE", 2),
        (24, 3, 88, 24, False, "RE", 1),
        (24, 5, 96, 40, True, "HS", 2),
        (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 120, 48, True, "HS", 1),
        (48, 5, 144, 48, True, "HS", 1),
        (48, 5, 288, 96, True, "HS", 2),
        (96, 5, 576, 96, True, "HS", 1),
        (96, 5, 576, 96, True, "HS", 1),
    ),
    "large": (
        (16, 3, 16, 16, False, "RE", 1),
        (16, 3, 64, 24, False, "RE", 2),
        (24, 3, 72, 24, False, "RE", 1),
        (24, 5, 72, 40, True, "RE", 2),
        (40, 5, 120, 40, True, "RE", 1),
        (40, 5, 120, 40, True, "RE", 1),
        (40, 3, 240, 80, False, "HS", 2),
        (80, 3, 200, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 480, 112, True, "HS", 1),
        (112, 3, 672, 112, True, "HS", 1),
        (112, 5, 672, 160, True, "HS", 2),
        (160, 5, 960, 160, True, "HS", 1),
        (160, 5, 960, 160, True, "HS", 1),
    ),
}


def _tv_make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible` (SE squeeze width): nearest multiple, never 10% below."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _torchvision_features(variant: str) -> list[tuple[bool, list[tuple]]]:
    """torchvision's `features` Sequential as (residual, layers), each layer a tuple:
    ("conv", key prefix, cin, cout, kernel, stride, groups, activation) or ("se", key prefix, channels, squeeze).

    MobileNetV3.__init__: a 3x3 stride-2 Hardswish stem to 16 channels; one InvertedResidual
    per bneck_conf (1x1 expand unless expanded == input, depthwise kxk, SE with ReLU and
    Hardsigmoid, 1x1 linear projection; residual when stride 1 and input == output channels);
    a 1x1 Hardswish conv to 6x the last output channels.
    """
    table = TORCHVISION_BNECK[variant]
    out = [(False, [("conv", "features.0", 3, 16, 3, 2, 1, "HS")])]
    for i, (cin, k, exp, cout, se, act, stride) in enumerate(table, start=1):
        layers: list[tuple] = []
        if exp != cin:
            layers.append(("conv", f"features.{i}.block.{len(layers)}", cin, exp, 1, 1, 1, act))
        layers.append(("conv", f"features.{i}.block.{len(layers)}", exp, exp, k, stride, exp, act))
        if se:
            layers.append(("se", f"features.{i}.block.{len(layers)}", exp, _tv_make_divisible(exp // 4)))
        layers.append(("conv", f"features.{i}.block.{len(layers)}", exp, cout, 1, 1, 1, None))
        out.append((stride == 1 and cin == cout, layers))
    last = table[-1][3]
    out.append((False, [("conv", f"features.{len(table) + 1}", last, 6 * last, 1, 1, 1, "HS")]))
    return out


def _features(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def _frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Varied normalised-looking frames: blocky colour patterns, per-frame contrast and offset, noise."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 3, height // 8 + 1, width // 8 + 1))
    frames = np.repeat(np.repeat(base, 8, axis=2), 8, axis=3)[:, :, :height, :width]
    frames = frames * rng.uniform(0.5, 1.5, (n, 1, 1, 1)) + rng.uniform(-0.5, 0.5, (n, 3, 1, 1))
    frames += 0.3 * rng.standard_normal(frames.shape)
    return frames.astype(np.float32)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def live_small():
    """A seeded Small whose BatchNorm statistics were re-estimated: features depend on the input."""
    sd = init_state_dict("small", seed=0)
    return reestimate_bn("small", sd, _frames(8, 96, 96, seed=1))


# -- architecture ---------------------------------------------------------------------------


def _project_features(variant: str) -> list[tuple[bool, list[tuple]]]:
    """The project's `stages()` in the same form as `_torchvision_features`."""
    act = {"Relu": "RE", "HardSwish": "HS", None: None}
    out = []
    for stage in stages(variant):
        layers = [("conv", layer.prefix, layer.cin, layer.cout, layer.kernel, layer.stride, layer.groups, act[layer.act])
                  if isinstance(layer, ConvLayer) else ("se", layer.prefix, layer.channels, layer.squeeze)
                  for layer in stage.layers]
        out.append((stage.residual, layers))
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_architecture_equals_torchvisions_published_definition(variant):
    # given torchvision's _mobilenet_v3_conf, written out in this test
    expected = _torchvision_features(variant)
    # then every block of the project's table has the same layers, kernels, widths, strides,
    # activations, SE widths and residual connections, block by block
    got = _project_features(variant)
    assert len(got) == len(expected)
    for index, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"features.{index}"


def test_feature_keys_and_shapes_are_torchvisions():
    # given torchvision's own mobilenet_v3_small state dict
    ref = np.load(REFERENCE)
    torchvision_keys = {k for k in ref.files
                        if k.startswith("features.") and not k.endswith("num_batches_tracked")}
    # then the builder expects exactly those keys, with the same shapes
    shapes = feature_shapes("small")
    assert set(shapes) == torchvision_keys
    assert all(ref[k].shape == shape for k, shape in shapes.items())


@pytest.mark.parametrize("variant, with_classifier, without", [("small", 2_542_856, 927_008),
                                                               ("large", 5_483_032, 2_971_952)])
def test_parameter_counts_equal_torchvisions_published_totals(variant, with_classifier, without):
    assert count_parameters(variant, include_classifier=True) == with_classifier
    assert count_parameters(variant) == without


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(224, 224), (160, 128)])
def test_output_is_batch_by_feature_size_for_any_batch_and_input_size(variant, size):
    # given a backbone built for an input size
    model = build_backbone(variant, init_state_dict(variant), input_size=size)
    # then its declared input has a dynamic batch and the requested (height, width)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, *size]
    # and it returns [N, F] for different batch sizes
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        (out,) = session.run(None, {"image": np.zeros((batch, 3, *size), np.float32)})
        assert out.shape == (batch, FEATURE_SIZE[variant])


# -- numerics -------------------------------------------------------------------------------


def _with_block_means(model: onnx.ModelProto) -> onnx.ModelProto:
    """The built graph itself, with each `features.i` block's spatial mean as an extra output `stage.i`.

    A block's output is the last node of the graph named `features.i.*` (its residual Add, or
    its last conv/activation), so the graph under test is the one shipped, not a rebuild.
    """
    model = copy.deepcopy(model)
    last: dict[int, str] = {}
    for node in model.graph.node:
        parts = node.name.split(".")
        if parts[0] == "features" and parts[1].isdigit():
            last[int(parts[1])] = node.output[0]
    for index, tensor in sorted(last.items()):
        pooled = f"stage.{index}.pooled"
        model.graph.node.append(onnx.helper.make_node("GlobalAveragePool", [tensor], [pooled]))
        model.graph.node.append(onnx.helper.make_node("Flatten", [pooled], [f"stage.{index}"], axis=1))
        model.graph.output.append(onnx.helper.make_tensor_value_info(f"stage.{index}", onnx.TensorProto.FLOAT, None))
    return model


def _run_all(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the graph as written. onnxruntime's extended optimizations (NCHWc layout,
    fused kernels) add up to 4e-5 at block 1 on the zero image, where a BatchNorm of variance
    1.3e-3 amplifies rounding 28x; basic optimizations keep float32 kernels exact, so what is
    compared is the graph, not onnxruntime's kernel choice."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": x})))


def _assert_close(got: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Within RTOL of the block's largest mean over all inputs (the zero image's means are ~1e-3
    at block 0, too small to scale by on their own)."""
    err = np.abs(got - expected).max(axis=1) / np.abs(expected).max()
    assert err.max() <= RTOL, f"{name}: relative error {err} per input"


@pytest.fixture(scope="module")
def torchvision_reference() -> dict[str, np.ndarray]:
    return dict(np.load(REFERENCE))


def test_the_reference_depends_on_its_input(torchvision_reference):
    # the reference is only worth comparing with if its 4 inputs give 4 different outputs
    features = torchvision_reference["output.features"]
    for a in range(len(features)):
        for b in range(a):
            assert _rel_err(features[a], features[b]) > 0.1, (a, b)


@pytest.mark.parametrize("fold_bn", [True, False])
def test_features_and_every_block_equal_torchvision_on_the_reference(torchvision_reference, fold_bn):
    # given torchvision's state dict (classifier and num_batches_tracked included), its 4 inputs,
    # its pooled features and each block's mean
    ref = torchvision_reference
    # when the graph built from it runs the same inputs, every block's output exposed
    outputs = _run_all(_with_block_means(build_backbone("small", ref, fold_bn=fold_bn)), ref["input.x"])
    # then every block's mean, and the features, agree with torchvision's to float32 precision
    blocks = sorted((k for k in ref if k.startswith("stage.")), key=lambda k: int(k.split(".")[1]))
    assert len(blocks) == len(stages("small")) == 13
    for key in blocks:
        _assert_close(outputs[key], ref[key], key)
    _assert_close(outputs["features"], ref["output.features"], "features")


@pytest.mark.parametrize("variant", VARIANTS)
def test_equals_live_torchvision_when_installed(variant):
    torch = pytest.importorskip("torch", reason="torch not installed: live torchvision comparison skipped")
    torchvision = pytest.importorskip("torchvision", reason="torchvision not installed")
    # given well-conditioned weights (re-estimated BatchNorm) loaded into torchvision too
    frames = _frames(4, 128, 128, seed=5)
    sd = reestimate_bn(variant, init_state_dict(variant, seed=2), frames)
    net = getattr(torchvision.models, f"mobilenet_v3_{variant}")().eval()
    missing, _ = net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert all(k.startswith("classifier.") or k.endswith("num_batches_tracked") for k in missing)
    # when both run the same frames
    with torch.no_grad():
        expected = torch.flatten(net.avgpool(net.features(torch.from_numpy(frames))), 1).numpy()
    got = _run_all(build_backbone(variant, sd, input_size=(128, 128)), frames)["features"]
    # then they agree to float32 precision (RTOL, as on the stored reference)
    _assert_close(got, expected, "features")


def test_folded_batchnorm_equals_explicit_batchnorm(live_small):
    x = _frames(2, 96, 96, seed=9)
    folded = _run_all(_with_block_means(build_backbone("small", live_small, (96, 96), fold_bn=True)), x)
    explicit = _run_all(_with_block_means(build_backbone("small", live_small, (96, 96), fold_bn=False)), x)
    assert not any(n.op_type == "BatchNormalization"
                   for n in build_backbone("small", live_small, (96, 96)).graph.node)
    # folding only reorders float32 arithmetic: every block agrees to RTOL
    for key in explicit:
        _assert_close(folded[key], explicit[key], key)


def _np_conv(x, w, b, stride, groups):
    n, c, _, _ = x.shape
    o, _, k, _ = w.shape
    p = (k - 1) // 2
    win = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))), (k, k), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]
    win = win.reshape(n, groups, c // groups, *win.shape[2:])
    y = np.einsum("ngchwij,gocij->ngohw", win, w.reshape(groups, o // groups, -1, k, k), optimize=True)
    return y.reshape(n, o, *y.shape[3:]) + b[None, :, None, None]


def _np_forward(variant, sd, x):
    """Plain numpy MobileNet-V3 forward in float64 from `_torchvision_features` (not the project's table).

    Returns (features [N, F], {"stage.i": each block's spatial mean [N, C_i]}).
    """
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    hardsigmoid = lambda v: np.clip(v / 6 + 0.5, 0, 1)  # noqa: E731 - torch.nn.Hardsigmoid
    act = {"RE": lambda v: np.maximum(v, 0), "HS": lambda v: v * hardsigmoid(v), None: lambda v: v}
    y = x.astype(np.float64)
    means = {}
    for index, (residual, layers) in enumerate(_torchvision_features(variant)):
        inp = y
        for layer in layers:
            if layer[0] == "conv":
                _, prefix, _, cout, _, stride, groups, activation = layer
                y = _np_conv(y, sd[f"{prefix}.0.weight"], np.zeros(cout), stride, groups)
                bn = lambda n, prefix=prefix: sd[f"{prefix}.1.{n}"][None, :, None, None]  # noqa: E731
                y = (y - bn("running_mean")) / np.sqrt(bn("running_var") + BN_EPS) * bn("weight") + bn("bias")
                y = act[activation](y)
            else:
                prefix = layer[1]
                s = y.mean(axis=(2, 3), keepdims=True)
                s = np.maximum(_np_conv(s, sd[f"{prefix}.fc1.weight"], sd[f"{prefix}.fc1.bias"], 1, 1), 0)
                s = _np_conv(s, sd[f"{prefix}.fc2.weight"], sd[f"{prefix}.fc2.bias"], 1, 1)
                y = y * hardsigmoid(s)
        if residual:
            y = y + inp
        means[f"stage.{index}"] = y.mean(axis=(2, 3))
    return y.mean(axis=(2, 3)), means


def test_graph_equals_a_plain_numpy_forward_on_well_conditioned_weights(live_small):
    # given weights where every layer matters and two different frames
    x = _frames(2, 64, 48, seed=11)
    # when the graph and the float64 numpy forward (written from torchvision's table) run them
    got = _run_all(_with_block_means(build_backbone("small", live_small, (64, 48))), x)
    expected, means = _np_forward("small", live_small, x)
    # then every block and the features agree to float32 precision (RTOL; this also catches
    # op-attribute slips, e.g. ONNX's default HardSigmoid alpha)
    for key, mean in means.items():
        _assert_close(got[key], mean, key)
    _assert_close(got["features"], expected, "features")
    assert _rel_err(expected[0], expected[1]) > 1e-2


# -- batchnorm re-estimation -----------------------------------------------------------------


def test_reestimated_batchnorm_turns_vanishing_features_into_informative_ones():
    # given a seeded torchvision-style init, whose BatchNorm statistics are the identity
    sd = init_state_dict("small", seed=0)
    frames = _frames(8, 128, 128, seed=3)
    before = _features(build_backbone("small", sd, (128, 128)), frames)
    # when the statistics are re-estimated on a handful of frames
    updated = reestimate_bn("small", sd, frames, batch_size=3)
    after = _features(build_backbone("small", updated, (128, 128)), frames)
    # then the features go from ~0 to O(1), and differ between frames
    assert np.linalg.norm(before, axis=1).max() < 1e-3
    norms = np.linalg.norm(after, axis=1)
    assert np.all((norms > 0.1) & (norms < 100))
    assert np.linalg.norm(after[0] - after[1]) > 0.05 * norms.mean()
    # and only running statistics changed, and the input state dict was left alone
    changed = {k for k in sd if not np.array_equal(sd[k], updated[k])}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)
    assert np.all(sd["features.0.1.running_var"] == 1)


def test_reestimation_is_in_network_order_so_a_second_pass_changes_nothing(live_small):
    # given statistics already re-estimated on these frames (the fixture's)
    frames = _frames(8, 96, 96, seed=1)
    # when re-estimated again on the same frames
    again = reestimate_bn("small", live_small, frames, batch_size=5)
    # then every BatchNorm already saw the inputs its predecessors produce: a fixed point
    for key in live_small:
        if key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(again[key], live_small[key], rtol=1e-3, atol=1e-5, err_msg=key)


# -- errors and files ------------------------------------------------------------------------


def test_missing_and_mis_shaped_keys_are_all_listed():
    # given a state dict with two keys missing and one of the wrong shape
    sd = init_state_dict("small")
    del sd["features.0.0.weight"], sd["features.12.1.running_var"]
    sd["features.3.block.1.0.weight"] = np.zeros((5, 1, 3, 3), np.float32)
    # when building, then one error names all three, with expected and actual shapes
    with pytest.raises(WeightsError) as err:
        build_backbone("small", sd)
    message = str(err.value)
    assert "features.0.0.weight" in message and "features.12.1.running_var" in message
    assert "features.3.block.1.0.weight: expected (88, 1, 3, 3), got (5, 1, 3, 3)" in message


@pytest.mark.parametrize("call", [feature_shapes, init_state_dict, count_parameters,
                                  lambda v: build_backbone(v, {})])
def test_unknown_variant_is_a_value_error_naming_the_choices(call):
    with pytest.raises(ValueError, match="small, large"):
        call("medium")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_state_dict_round_trips_through_files(tmp_path, suffix):
    sd = init_state_dict("small", seed=4)
    path = tmp_path / f"backbone{suffix}"
    save_state_dict(sd, path)
    loaded = load_state_dict(path)
    assert set(loaded) == set(sd) and all(np.array_equal(loaded[k], sd[k]) for k in sd)


def test_unreadable_weights_file_is_a_weights_error_naming_the_path(tmp_path):
    for name in ("broken.safetensors", "broken.npz", "weights.pt"):
        path = tmp_path / name
        path.write_bytes(b"not a weights file")
        with pytest.raises(WeightsError, match=name):
            load_state_dict(path)
    with pytest.raises(WeightsError, match="absent.npz"):
        load_state_dict(tmp_path / "absent.npz")
