"""`edge-export train` measures the INT8 backbone against FP32 on the clips it is given, records it, gates it."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from export.cli import main as export_main
from export.training.clips import demo_clips, read_clip
from export.training.train import split_by_clip
from runtime.manifest import BACKBONE, load_manifest
from runtime.preprocess import Preprocessor
from runtime.sources.demo import CLASSES

CLIPS = ["--clips", "demo:2", "--demo-frames", "8", "--demo-size", "40", "30", "--demo-seed", "5"]
TRAIN = ["--epochs", "1", "--iterations", "1", "--batch", "4", "--hidden", "8", "--window", "4", "--no-progress"]


@pytest.fixture(scope="module")
def int8_engines(tmp_path_factory):
    from export.build import BuildOptions, build

    out = tmp_path_factory.mktemp("int8_engines")
    build(BuildOptions(out=out, input_size=(32, 32), calib_frames=16, holdout_frames=4, window=4, stride=2,
                       calibration="minmax", allow_degraded=True))
    return out


def independent_cosine(manifest, clips):
    """Per-frame cosine of the INT8 to the FP32 ONNX on every frame of `clips`, computed here."""
    sessions = {p: ort.InferenceSession(str(manifest.path_of(manifest.find(BACKBONE, "onnx", p))),
                                        providers=["CPUExecutionProvider"]) for p in ("fp32", "int8")}
    frames = np.concatenate([read_clip(c, Preprocessor(manifest.input)) for c in clips])
    fp32, int8 = (sessions[p].run(None, {"image": frames})[0].astype(np.float64) for p in ("fp32", "int8"))
    return np.sum(fp32 * int8, 1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))


def test_the_cosine_on_the_validation_clips_is_recorded_beside_the_calibration_figure(int8_engines, tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    code = export_main(["train", *CLIPS, *TRAIN, "--engines", str(int8_engines), "--out", str(out),
                        "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 0, err
    manifest = load_manifest(out)
    quality = manifest.quantization
    on_clips = quality["on_clips"]
    # The validation clips, chosen as training chooses them (split by clip, seed 0): one of the two per class.
    clips = demo_clips(2, seed=5, frames=8, size=(40, 30)).clips
    _, val = split_by_clip([CLASSES.index(c.label) for c in clips], 0.2, seed=0)
    cosine = independent_cosine(manifest, [clips[i] for i in val])
    assert on_clips["clips"] == len(val) == manifest.training["validation_clips"] and on_clips["frames"] == 8 * len(val)
    # The same two float graphs on the same frames: equal to the rounding of the record (5 decimals).
    assert on_clips["cosine_mean"] == pytest.approx(float(cosine.mean()), abs=2e-5)
    assert on_clips["cosine_min"] == pytest.approx(float(cosine.min()), abs=2e-5)
    assert "validation clips of demo:2" in on_clips["measured_on"]
    assert "held-out frames of the calibration source 'demo'" in quality["measured_on"]
    assert "INT8 vs FP32 features on" in err


def test_min_cosine_above_what_the_clips_measure_fails_and_writes_nothing(int8_engines, tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    code = export_main(["train", *CLIPS, *TRAIN, "--engines", str(int8_engines), "--out", str(out),
                        "--cache", str(tmp_path / "cache"), "--min-cosine", "1.0"])
    err = capsys.readouterr().err
    assert code == 1  # a quality gate that fails is a failed build (exit 1), as at build time
    assert "below --min-cosine 1.0000" in err and "--calib" in err
    assert not (out / "manifest.json").exists()


def test_verify_measures_int8_on_the_clips_it_is_given(int8_engines, capsys):
    code = export_main(["verify", "--out", str(int8_engines), "--clips", "demo:1", "--frames", "4", "--min-cosine", "-1"])
    out = capsys.readouterr().out
    assert code == 0, out
    line = next(text for text in out.splitlines() if "int8 vs fp32 on 6 clips of demo:1" in text)
    cosine = independent_cosine(load_manifest(int8_engines), demo_clips(1).clips)
    assert f"cosine mean {cosine.mean():.5f}" in line and f"over {len(cosine)} frames -> ok" in line
    code = export_main(["verify", "--out", str(int8_engines), "--clips", "demo:1", "--frames", "4", "--min-cosine", "1"])
    assert code == 1 and "-> BELOW (threshold 1.0" in capsys.readouterr().out
