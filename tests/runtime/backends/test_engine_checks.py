"""Engines that disagree with each other or with their manifest are refused before the first frame.

Each test builds the mismatched engine with the project's own graph builders, puts it into a
copy of the session engines, rehashes the manifest entry (so the hash check passes and only
the shape check can catch it), and runs `edge-run`: exit 3, one line naming both numbers and
the rebuild command. Malformed manifest fields are exit 3 naming the field.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from export.graphs.gru import build_gru_sequence, build_gru_step, init_gru_weights
from export.graphs.mobilenet import build_backbone, init_state_dict
from runtime.backends import open_engines
from runtime.cli import main as edge_run_main
from runtime.errors import EngineError
from runtime.files import sha256_file
from runtime.manifest import load_manifest, save_manifest

F, H, C = 576, 256, 6  # the session engines: MobileNet-V3-Small 224, GRU H=256, the 6 demo labels


def replace_engine(folder: Path, file: str, model: onnx.ModelProto) -> None:
    """Overwrite `file` with `model` and rehash its manifest entry, as a careless rebuild would."""
    onnx.save(model, str(folder / file))
    manifest = load_manifest(folder, verify_hashes=False)
    engines = tuple(dataclasses.replace(e, sha256=sha256_file(folder / e.file)) if e.file == file else e
                    for e in manifest.engines)
    save_manifest(dataclasses.replace(manifest, engines=engines), folder)


def edit_manifest_json(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def run(capsys, folder: Path, *extra) -> tuple[int, str]:
    code = edge_run_main(["--engines", str(folder), "--source", "demo", "--max-frames", "2", "--backend", "cpu",
                          *map(str, extra)])
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any frame: not one result
    return code, captured.err


def assert_refused(code: int, err: str, folder: Path, *expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 3, err
    assert len(lines) == 1 and lines[0].startswith("edge-run: error: "), err
    assert "Traceback" not in err
    assert f"edge-export --out {folder}" in lines[0]
    for text in expected:
        assert text in lines[0], lines[0]


def test_the_session_engines_pass_the_checks(engines_dir):
    engines = open_engines(load_manifest(engines_dir), backend="cpu")
    try:
        assert engines.window_is_sequence and engines.window == 8
    finally:
        engines.close()


def test_another_backbone_variant_is_exit_3(capsys, engines_copy):
    replace_engine(engines_copy, "backbone_fp32.onnx", build_backbone("large", init_state_dict("large", seed=0)))
    code, err = run(capsys, engines_copy)
    assert_refused(code, err, engines_copy, "backbone_fp32.onnx gives 960 features", "feature_size is 576")


def test_a_wrong_feature_size_in_the_manifest_is_exit_3(capsys, engines_copy):
    edit_manifest_json(engines_copy, lambda data: data.update(feature_size=123))
    code, err = run(capsys, engines_copy)
    assert_refused(code, err, engines_copy, "gives 576 features", "feature_size is 123")


def test_a_backbone_for_another_input_height_is_exit_3(capsys, engines_copy):
    replace_engine(engines_copy, "backbone_fp32.onnx", build_backbone("small", init_state_dict("small"), input_size=(160, 224)))
    code, err = run(capsys, engines_copy)
    assert_refused(code, err, engines_copy, "takes images of 3x160x224", "the manifest's input is 3x224x224")


def test_a_gru_of_another_hidden_size_is_exit_3(capsys, engines_copy):
    replace_engine(engines_copy, "gru_step.onnx", build_gru_step(init_gru_weights(F, 128, C)))
    code, err = run(capsys, engines_copy)
    assert_refused(code, err, engines_copy, "gru_step.onnx carries state h of size 128", "hidden_size is 256")


def test_a_sequence_engine_of_another_hidden_size_is_exit_3(capsys, engines_copy):
    replace_engine(engines_copy, "gru_window8.onnx", build_gru_sequence(init_gru_weights(F, 64, C), 8))
    code, err = run(capsys, engines_copy, "--emit", "window")
    assert_refused(code, err, engines_copy, "gru_window8.onnx carries state h_last of size 64", "hidden_size is 256")


def test_a_gru_for_another_feature_size_is_exit_3(capsys, engines_copy):
    replace_engine(engines_copy, "gru_step.onnx", build_gru_step(init_gru_weights(960, H, C)))
    code, err = run(capsys, engines_copy)
    assert_refused(code, err, engines_copy, "gru_step.onnx takes x of shape 960", "feature_size 576")


def test_a_gru_with_another_label_count_is_exit_3(capsys, engines_copy):
    replace_engine(engines_copy, "gru_step.onnx", build_gru_step(init_gru_weights(F, H, 4)))
    code, err = run(capsys, engines_copy)
    assert_refused(code, err, engines_copy, "gru_step.onnx gives 4 logits", "the manifest has 6 labels")


def test_a_label_list_longer_than_the_logits_is_exit_3(capsys, engines_copy):
    edit_manifest_json(engines_copy, lambda data: data["labels"].append("wave"))
    code, err = run(capsys, engines_copy)
    assert_refused(code, err, engines_copy, "gives 6 logits", "the manifest has 7 labels")


def test_a_sequence_engine_built_for_another_window_is_exit_3(capsys, engines_copy):
    replace_engine(engines_copy, "gru_window8.onnx", build_gru_sequence(init_gru_weights(F, H, C), 16))
    code, err = run(capsys, engines_copy, "--emit", "window")
    assert_refused(code, err, engines_copy, "gru_window8.onnx is built for windows of 16 frames", "the run's window is 8")


def test_a_rehashed_file_that_is_no_model_is_exit_3_with_the_command(capsys, engines_copy):
    model = build_gru_step(init_gru_weights(F, H, C)).SerializeToString()
    (engines_copy / "gru_step.onnx").write_bytes(model[: len(model) // 2])
    manifest = load_manifest(engines_copy, verify_hashes=False)
    engines = tuple(dataclasses.replace(e, sha256=sha256_file(engines_copy / e.file)) for e in manifest.engines)
    save_manifest(dataclasses.replace(manifest, engines=engines), engines_copy)
    code, err = run(capsys, engines_copy)
    assert_refused(code, err, engines_copy, "cannot load", "gru_step.onnx")


def test_a_step_engine_without_the_state_pair_is_exit_3(capsys, engines_copy):
    """The sequence graph has no h input: as the step engine it carries no state."""
    replace_engine(engines_copy, "gru_step.onnx", build_gru_sequence(init_gru_weights(F, H, C), 1))
    code, err = run(capsys, engines_copy)
    assert_refused(code, err, engines_copy, "gru_step has no state pair h -> h_next", "inputs: x; outputs: h_last, logits")


def test_the_python_api_refuses_before_a_pipeline_exists(engines_copy):
    replace_engine(engines_copy, "gru_step.onnx", build_gru_step(init_gru_weights(F, 32, C)))
    with pytest.raises(EngineError, match="size 32.*hidden_size is 256") as caught:
        open_engines(load_manifest(engines_copy), backend="cpu")
    assert caught.value.exit_code == 3


def test_the_installed_command_exits_3_for_a_hidden_size_mismatch(engines_copy):
    """The console script as a user (and systemd's RestartPreventExitStatus=3) sees it."""
    replace_engine(engines_copy, "gru_step.onnx", build_gru_step(init_gru_weights(F, 128, C)))
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "--engines", str(engines_copy), "--source", "demo",
                           "--max-frames", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert "carries state h of size 128, the manifest's hidden_size is 256" in done.stderr


def _set_engine(index: int, key: str, value):
    return lambda data: data["engines"][index].__setitem__(key, value)


MALFORMED = [
    ("file null", _set_engine(0, "file", None), "engines[0] (backbone).file is null"),
    ("file outside", _set_engine(2, "file", "../gru_step.onnx"), "engines[2] (gru_step).file is \"../gru_step.onnx\""),
    ("sha256 5", _set_engine(0, "sha256", 5), "engines[0] (backbone).sha256 is 5, expected 64 lowercase hex digits"),
    ("max_batch string", _set_engine(2, "max_batch", "8"), "engines[2] (gru_step).max_batch is \"8\", expected an integer from 1 to"),
    ("max_batch zero", _set_engine(2, "max_batch", 0), "engines[2] (gru_step).max_batch is 0"),
    ("unknown precision", _set_engine(1, "precision", "fp64"), "engines[1] (backbone).precision is \"fp64\", expected one of fp32"),
    ("unknown role", _set_engine(1, "role", "decoder"), "engines[1].role is \"decoder\""),
    ("extra not a dict", _set_engine(3, "extra", [8]), "engines[3] (gru_sequence).extra is [8], expected a JSON object"),
    ("unknown field", _set_engine(2, "layers", 2), "engines[2] (gru_step).layers is not a field"),
    ("hidden_size string", lambda d: d.update(hidden_size="256"), "hidden_size is \"256\", expected an integer from 1 to"),
    ("window zero", lambda d: d.update(window=0), "window is 0, expected an integer from 1 to"),
    ("window huge", lambda d: d.update(window=100_000_000), "window is 100000000, expected an integer from 1 to"),
    ("sequence window missing", _set_engine(3, "extra", {}), "engines[3] (gru_sequence).extra.window is missing"),
    ("feature_size float", lambda d: d.update(feature_size=576.0), "feature_size is 576.0, expected a positive integer"),
    ("stride bool", lambda d: d.update(stride=True), "stride is true, expected an integer from 1 to"),
    ("labels repeated", lambda d: d.update(labels=["a", "b", "a"]), "expected unique labels (a repeated)"),
    ("labels empty", lambda d: d.update(labels=[]), "labels is [], expected a non-empty list"),
    ("label not a string", lambda d: d.update(labels=["a", 3]), "labels[1] is 3, expected a non-empty string"),
    ("mean of 2", lambda d: d["input"].update(mean=[0.5, 0.5]), "input.mean is [0.5, 0.5], expected 3"),
    ("std zero", lambda d: d["input"].update(std=[0.2, 0.0, 0.2]), "input.std is [0.2, 0.0, 0.2], expected 3 positive"),
    ("height negative", lambda d: d["input"].update(height=-224), "input.height is -224, expected a positive integer"),
    ("colour order", lambda d: d["input"].update(color_order="RGBA"), "input.color_order is \"RGBA\", expected one of RGB, BGR"),
    ("missing hidden_size", lambda d: d.pop("hidden_size"), "hidden_size is missing, expected an integer from 1 to"),
]


@pytest.mark.parametrize("edit, expected", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_a_malformed_manifest_field_is_exit_3_naming_it(capsys, engines_copy, edit, expected):
    edit_manifest_json(engines_copy, edit)
    code, err = run(capsys, engines_copy)
    assert_refused(code, err, engines_copy, expected)
