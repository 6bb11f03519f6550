"""The torch-free MobileNet-V3 builder against torchvision and against itself.

About the stored torchvision reference (tests/data/mobilenet_v3_small_torchvision.npz):
its random weights let the signal die out with depth, so its two outputs are the same to
1e-7 whatever the input and it mostly checks the last stages. The plain-numpy forward
below and the folded/unfolded comparison run on weights with re-estimated BatchNorm
statistics, where every layer shapes the output.
"""
from __future__ import annotations

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

REFERENCE = DATA / "mobilenet_v3_small_torchvision.npz"


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


@pytest.mark.parametrize("fold_bn", [True, False])
def test_equals_torchvision_on_the_stored_reference(fold_bn):
    # given torchvision's state dict (classifier and num_batches_tracked included) and output
    ref = dict(np.load(REFERENCE))
    # when our graph runs the same input
    got = _features(build_backbone("small", ref, fold_bn=fold_bn), ref["input.x"])
    # then the features agree
    assert _rel_err(got, ref["output.features"]) < 1e-4


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
    got = _features(build_backbone(variant, sd, input_size=(128, 128)), frames)
    # then they agree
    assert _rel_err(got, expected) < 1e-4


def test_folded_batchnorm_equals_explicit_batchnorm(live_small):
    x = _frames(2, 96, 96, seed=9)
    folded = _features(build_backbone("small", live_small, (96, 96), fold_bn=True), x)
    explicit = _features(build_backbone("small", live_small, (96, 96), fold_bn=False), x)
    assert not any(n.op_type == "BatchNormalization"
                   for n in build_backbone("small", live_small, (96, 96)).graph.node)
    assert _rel_err(folded, explicit) < 1e-4


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
    """Plain numpy MobileNet-V3 forward in float64, written from torchvision's definitions."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    hardsigmoid = lambda v: np.clip(v / 6 + 0.5, 0, 1)  # noqa: E731 - torch.nn.Hardsigmoid
    act = {"Relu": lambda v: np.maximum(v, 0), "HardSwish": lambda v: v * hardsigmoid(v), None: lambda v: v}
    y = x.astype(np.float64)
    for stage in stages(variant):
        inp = y
        for layer in stage.layers:
            if isinstance(layer, ConvLayer):
                y = _np_conv(y, sd[f"{layer.prefix}.0.weight"], np.zeros(layer.cout), layer.stride, layer.groups)
                bn = lambda n, layer=layer: sd[f"{layer.bn}.{n}"][None, :, None, None]  # noqa: E731
                y = (y - bn("running_mean")) / np.sqrt(bn("running_var") + BN_EPS) * bn("weight") + bn("bias")
                y = act[layer.act](y)
            else:
                s = y.mean(axis=(2, 3), keepdims=True)
                s = np.maximum(_np_conv(s, sd[f"{layer.prefix}.fc1.weight"], sd[f"{layer.prefix}.fc1.bias"], 1, 1), 0)
                s = _np_conv(s, sd[f"{layer.prefix}.fc2.weight"], sd[f"{layer.prefix}.fc2.bias"], 1, 1)
                y = y * hardsigmoid(s)
        if stage.residual:
            y = y + inp
    return y.mean(axis=(2, 3))


def test_graph_equals_a_plain_numpy_forward_on_well_conditioned_weights(live_small):
    # given weights where every layer matters and two different frames
    x = _frames(2, 64, 48, seed=11)
    # when the graph and the numpy forward run them
    got = _features(build_backbone("small", live_small, (64, 48)), x)
    expected = _np_forward("small", live_small, x)
    # then they agree (this catches op-attribute slips, e.g. ONNX's default HardSigmoid alpha)
    assert _rel_err(got, expected) < 1e-4
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
