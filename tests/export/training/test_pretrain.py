"""Backbone pretraining: the plain-torch MobileNet is torchvision's layout and the ONNX graph's twin."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from export.graphs.mobilenet import build_backbone, feature_shapes
from export.graphs.weights import load_state_dict

torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")

from export.training.torch_mobilenet import build_torch_backbone, load_numpy_state, state_dict_numpy  # noqa: E402


def _perturbed_batchnorm(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=g)
                module.running_var.uniform_(0.5, 2.0, generator=g)
                module.weight.normal_(1, 0.2, generator=g)
                module.bias.normal_(0, 0.2, generator=g)


def test_torch_module_has_torchvisions_feature_keys_and_shapes():
    model = build_torch_backbone("small")
    state = state_dict_numpy(model)
    expected = feature_shapes("small")
    assert set(state) == set(expected)
    assert all(tuple(state[k].shape) == expected[k] for k in expected)


def test_torch_module_computes_what_the_onnx_graph_computes_on_the_same_weights():
    # given a torch backbone with non-trivial BatchNorm statistics
    torch.manual_seed(0)
    model = build_torch_backbone("small")
    _perturbed_batchnorm(model)
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    # when its state dict is exported through the torch-free ONNX builder
    session = ort.InferenceSession(build_backbone("small", state_dict_numpy(model), (64, 64)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"image": x})[0]
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy()
    # then both give the same features
    assert np.abs(torch_out - onnx_out).max() <= 1e-4 * np.abs(onnx_out).max()
    # and a numpy state dict loads back into the module unchanged
    other = build_torch_backbone("small")
    load_numpy_state(other, state_dict_numpy(model))
    assert all(np.array_equal(a, b) for a, b in zip(state_dict_numpy(other).values(), state_dict_numpy(model).values()))


def test_pretraining_smoke_writes_weights_the_export_loads_and_a_record(tmp_path):
    from export.training.pretrain import PretrainOptions, pretrain

    out = tmp_path / "w.safetensors"
    record = pretrain(PretrainOptions(out=out, steps=2, batch=4, input_size=(48, 48), render_size=(64, 48),
                                      bn_frames=8, log_every=1), log=open("/dev/null", "w"))
    state = load_state_dict(out)
    build_backbone("small", state, (48, 48))  # loads: every key, every shape
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["sha256"] == record["sha256"] and written["images_seen"] == 8
    assert written["command"].startswith("edge-export pretrain")


def test_shipped_backbone_record_says_how_it_was_made():
    from export.build import DEFAULT_BACKBONE_WEIGHTS
    from runtime.files import sha256_file

    record = json.loads(DEFAULT_BACKBONE_WEIGHTS.with_suffix(".json").read_text())
    assert record["sha256"] == sha256_file(DEFAULT_BACKBONE_WEIGHTS)
    assert record["command"].startswith("edge-export pretrain")
    assert record["images_seen"] >= 10_000


def test_training_commands_without_torch_name_the_extra(tmp_path):
    # given a Python where `import torch` fails
    code = ("import sys; sys.modules['torch'] = None; from export.cli import main; "
            f"sys.exit(main(['pretrain', '--out', r'{tmp_path / 'w.safetensors'}', '--steps', '1']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # then the command exits 2 naming the extra and the CPU build
    assert done.returncode == 2
    assert "edge-run[train]" in done.stderr and "torch==2.13.0" in done.stderr
