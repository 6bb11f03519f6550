"""`edge-export` bad input: a clear message, a non-zero exit, and the previous engines left intact."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import onnx
import pytest
from helpers import DATA
from onnx import numpy_helper

from export.cli import main as export_main
from export.graphs.mobilenet import init_state_dict
from runtime.files import sha256_file
from runtime.manifest import load_manifest, save_manifest

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


def test_inspect(capsys, engines_dir):
    code, _ = run(capsys, "inspect", "--out", engines_dir)
    assert code == 0
    code = export_main(["inspect", "--out", str(engines_dir), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["schema_version"] == 1


def _verify(capsys, folder) -> tuple[int, list[tuple[str, str]]]:
    """verify's exit code and its lines as (subject, line): ("reference backbone", ...),
    ("backbone onnx/int8", ...), ("gru_step onnx", ...)."""
    code = export_main(["verify", "--out", str(folder), "--frames", "8"])
    lines = capsys.readouterr().out.splitlines()
    return code, [(line.split(":")[0] if line.startswith("reference") else line.split(" on ")[0], line)
                  for line in lines if " -> " in line or line.startswith("reference")]


def _rehash(folder) -> None:
    """Record every file's current SHA-256 in the manifest, so a changed engine passes the hash check."""
    manifest = load_manifest(folder, verify_hashes=False)
    engines = tuple(dataclasses.replace(e, sha256=sha256_file(folder / e.file)) for e in manifest.engines)
    save_manifest(dataclasses.replace(manifest, engines=engines), folder)


def _scale_initializer(path, name: str, factor: float) -> None:
    model = onnx.load(str(path))
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), name))
    onnx.save(model, str(path))


def test_verify_passes_untouched_engines_at_the_default_gate(capsys, engines_dir):
    # given the engines as built (no --min-cosine: the default gate)
    code, verdicts = _verify(capsys, engines_dir)
    # then every engine is checked, every check is ok, and the exit is 0
    assert code == 0, verdicts
    assert {engine for engine, _ in verdicts} == {"reference backbone", "backbone onnx/fp32", "backbone onnx/int8",
                                                  "gru_step onnx"}
    assert all(line.split(" -> ")[1].startswith("ok") for _, line in verdicts if " -> " in line), verdicts
    # and the backbones are compared with the backbone rebuilt from its recorded weights
    assert ("reference backbone", "reference backbone: mobilenet_v3_small rebuilt from the recorded weights "
            "(mobilenet_v3_small_synthetic.safetensors)") in verdicts, verdicts
    # and the GRU is compared with the weights the build recorded, not with its own file
    assert all("the recorded weights (demo_head.safetensors" in line
               for engine, line in verdicts if engine == "gru_step onnx"), verdicts


def test_verify_fails_a_gru_step_engine_whose_weights_changed(capsys, engines_copy):
    # given engines whose GRU step file has W_ih 1% larger than the build's weights (hash updated, so it loads)
    _scale_initializer(engines_copy / "gru_step.onnx", "weight_ih", 1.01)
    _rehash(engines_copy)
    # when verified
    code, verdicts = _verify(capsys, engines_copy)
    # then it exits 1, every GRU line says MISMATCH and the backbones still pass
    assert code == 1, verdicts
    gru = [line for engine, line in verdicts if engine == "gru_step onnx"]
    assert gru and all("-> MISMATCH" in line for line in gru), verdicts
    assert all("-> ok" in line for engine, line in verdicts if engine.startswith("backbone")), verdicts


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_verify_fails_a_backbone_whose_weights_changed(capsys, engines_copy, precision):
    # given engines whose backbone file has its last conv's weights negated (hash updated)
    path = engines_copy / f"backbone_{precision}.onnx"
    model = onnx.load(str(path))
    last_conv = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    weight = last_conv.input[1]
    if precision == "int8":  # float weight -> QuantizeLinear -> DequantizeLinear -> Conv
        producers = {out: node for node in model.graph.node for out in node.output}
        weight = producers[producers[weight].input[0]].input[0]
    _scale_initializer(path, weight, -1.0)
    _rehash(engines_copy)
    # when verified at the default gate
    code, verdicts = _verify(capsys, engines_copy)
    # then it exits 1 naming that backbone, and only it (the FP32 one too: the reference is
    # rebuilt from the recorded weights, not read from the file under test)
    assert code == 1, verdicts
    assert {engine for engine, line in verdicts if "-> MISMATCH" in line} == {f"backbone onnx/{precision}"}


def _record_gru_weights(folder, recorded: str) -> None:
    manifest = load_manifest(folder)
    save_manifest(dataclasses.replace(manifest, provenance={**manifest.provenance, "gru_weights": recorded}), folder)


def test_verify_compares_the_gru_with_the_weights_the_manifest_records(capsys, engines_copy):
    # given engines built with the shipped demo head, whose manifest says they were built with seeded:0
    _record_gru_weights(engines_copy, "seeded:0")
    # then verify compares with the seeded weights, so the GRU engine does not match them: exit 1
    code, verdicts = _verify(capsys, engines_copy)
    assert code == 1 and all("seeded:0" in line and "-> MISMATCH" in line
                             for engine, line in verdicts if engine == "gru_step onnx"), verdicts
    # given recorded weights that cannot be found, then the GRU window engine's weights are the
    # reference (another file than the one under test), named in the verdict
    _record_gru_weights(engines_copy, f"{engines_copy / 'gone.npz'} (sha256 0123456789abcdef)")
    code, verdicts = _verify(capsys, engines_copy)
    assert code == 0 and all("the weights inside gru_window8.onnx" in line and "-> ok" in line
                             for engine, line in verdicts if engine == "gru_step onnx"), verdicts


def test_trt_without_tensorrt_names_the_extra(capsys, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    code, err = run(capsys, "--out", tmp_path / "out", "--trt", *FAST)
    assert code == 2 and "tensorrt" in err.lower() and "pip install" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
