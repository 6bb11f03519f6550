"""`edge-export` bad input: a clear message, a non-zero exit, and the previous engines left intact."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import DATA

from export.cli import main as export_main
from export.graphs.mobilenet import init_state_dict
from runtime.manifest import load_manifest

FAST = ["--no-int8", "--calib-frames", "8", "--holdout-frames", "4", "--input-size", "96", "96"]


def run(capsys, *args):
    code = export_main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_unknown_variant(capsys, tmp_path):
    code, err = run(capsys, "--out", tmp_path, "--variant", "huge", *FAST)
    assert code == 2 and "unknown --variant 'huge'" in err and "small, large" in err


def test_missing_weights_file(capsys, tmp_path):
    code, err = run(capsys, "--out", tmp_path, "--weights", tmp_path / "nope.safetensors", *FAST)
    assert code == 2 and "no such file" in err


def test_mis_shaped_and_missing_weights_are_listed(capsys, tmp_path):
    state = init_state_dict("small", seed=0)
    state["features.0.0.weight"] = np.zeros((8, 3, 3, 3), np.float32)
    del state["features.12.0.weight"]
    path = tmp_path / "bad.npz"
    np.savez(path, **state)
    code, err = run(capsys, "--out", tmp_path / "out", "--weights", path, *FAST)
    assert code == 2 and "features.0.0.weight" in err and "features.12.0.weight" in err


def test_corrupt_backbone_onnx(capsys, tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x01garbage")
    code, err = run(capsys, "--out", tmp_path / "out", "--backbone-onnx", path, *FAST)
    assert code == 2 and "not a valid ONNX model" in err


def test_empty_calibration_source(capsys, tmp_path):
    empty = tmp_path / "frames"
    empty.mkdir()
    code, err = run(capsys, "--out", tmp_path / "out", "--calib", empty, *FAST)
    assert code == 2 and "frames" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; permissions cannot be tested as root")
def test_unwritable_output_folder(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, err = run(capsys, "--out", locked / "engines", *FAST)
    assert code == 2 and "cannot write" in err


def test_output_path_that_is_a_file(capsys, tmp_path):
    blocker = tmp_path / "engines"
    blocker.write_text("a file, not a folder")
    code, err = run(capsys, "--out", blocker, *FAST)
    assert code == 2 and "cannot write to output folder" in err


def test_a_failed_build_leaves_the_previous_engines_and_manifest_intact(capsys, tmp_path):
    out = tmp_path / "engines"
    assert run(capsys, "--out", out, *FAST)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.npz"
    np.savez(bad, nothing=np.zeros(1))
    code, _ = run(capsys, "--out", out, "--weights", bad, *FAST)
    assert code == 2
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # no staging leftovers, no half-written manifest
    load_manifest(out)  # still valid, hashes and all


def test_gru_weights_of_other_sizes_are_refused(capsys, tmp_path):
    from export.graphs.gru import init_gru_weights

    path = tmp_path / "gru.npz"
    np.savez(path, **init_gru_weights(576, 64, 6))
    code, err = run(capsys, "--out", tmp_path / "out", "--gru-weights", path, *FAST)
    assert code == 2 and "H=64" in err and "H=256" in err


def test_torch_trained_gru_weights_load(capsys, tmp_path):
    reference = np.load(DATA / "gru_cell_torch.npz")
    weights = {k: reference[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "head.weight", "head.bias")}
    path = tmp_path / "gru.npz"
    np.savez(path, **weights)
    code, err = run(capsys, "--out", tmp_path / "out", "--gru-weights", path, "--labels", "a,b,c,d,e", *FAST[:-3])
    assert code == 0, err
    assert load_manifest(tmp_path / "out").labels == ("a", "b", "c", "d", "e")


def test_inspect_and_verify(capsys, engines_dir):
    code, _ = run(capsys, "inspect", "--out", engines_dir)
    assert code == 0
    code = export_main(["inspect", "--out", str(engines_dir), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["schema_version"] == 1
    code = export_main(["verify", "--out", str(engines_dir), "--frames", "8", "--min-cosine", "0.5"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "backbone onnx/fp32 on cpu" in out and "backbone onnx/int8 on cpu" in out and "gru_step" in out


def test_verify_fails_on_a_mismatching_engine(capsys, engines_copy):
    code = export_main(["verify", "--out", str(engines_copy), "--frames", "4", "--min-cosine", "0.9999999"])
    out = capsys.readouterr().out
    assert code == 1 and "MISMATCH" in out  # INT8 cannot reach a 0.9999999 cosine


def test_trt_without_tensorrt_names_the_extra(capsys, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    code, err = run(capsys, "--out", tmp_path / "out", "--trt", *FAST)
    assert code == 2 and "tensorrt" in err.lower() and "pip install" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
