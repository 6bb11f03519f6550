"""`edge-export train` input handling: clip folders, CSVs, bad input, the split, the feature cache."""
from __future__ import annotations

import numpy as np
import pytest

from export.training.clips import ClipsError, demo_clips, find_clips, read_clip
from export.training.train import TrainError, split_by_clip
from runtime.manifest import InputSpec
from runtime.preprocess import Preprocessor
from runtime.sources.demo import write_demo_video


def _video(path, frames=12, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_demo_video(path, num_frames=frames, seed=seed, width=64, height=48, clip_frames=frames)
    return path


def _image_folder(path, frames=12):
    import cv2

    path.mkdir(parents=True)
    for i in range(frames):
        cv2.imwrite(str(path / f"{i:04d}.png"), np.full((48, 64, 3), 10 * i, np.uint8))
    return path


def test_a_folder_of_class_folders_with_videos_and_image_sequences(tmp_path):
    _video(tmp_path / "clips" / "left" / "a.avi")
    _video(tmp_path / "clips" / "left" / "b.mp4", seed=1)
    _image_folder(tmp_path / "clips" / "right" / "seq1")
    clip_set = find_clips(tmp_path / "clips")

    assert clip_set.labels == ("left", "right")
    assert clip_set.per_class() == {"left": 2, "right": 1}
    frames = read_clip(clip_set.clips[2], Preprocessor(InputSpec(height=32, width=32)))
    assert frames.shape == (12, 3, 32, 32) and frames.dtype == np.float32


def test_a_csv_of_path_and_label_relative_to_the_csv(tmp_path):
    _video(tmp_path / "v" / "one.avi")
    _video(tmp_path / "v" / "two.avi", seed=2)
    (tmp_path / "labels.csv").write_text("path,label\nv/one.avi,open\nv/two.avi,closed\n")
    clip_set = find_clips(tmp_path / "labels.csv")
    assert clip_set.labels == ("closed", "open")
    assert [c.label for c in clip_set.clips] == ["open", "closed"]
    assert clip_set.clips[0].path == tmp_path / "v" / "one.avi"


def test_a_class_with_no_clips_is_named(tmp_path):
    _video(tmp_path / "clips" / "left" / "a.avi")
    (tmp_path / "clips" / "right").mkdir()
    with pytest.raises(ClipsError, match="no clips: right"):
        find_clips(tmp_path / "clips")


def test_a_single_class_is_refused(tmp_path):
    _video(tmp_path / "clips" / "only" / "a.avi")
    with pytest.raises(ClipsError, match="only one class"):
        find_clips(tmp_path / "clips")


def test_missing_folder_and_malformed_csv(tmp_path):
    with pytest.raises(ClipsError, match="no such file or folder"):
        find_clips(tmp_path / "nowhere")
    (tmp_path / "bad.csv").write_text("just-a-path\n")
    with pytest.raises(ClipsError, match="line 1: expected path,label"):
        find_clips(tmp_path / "bad.csv")


def test_demo_clips_are_deterministic_and_balanced():
    a, b = demo_clips(2, seed=3, frames=6, size=(40, 30)), demo_clips(2, seed=3, frames=6, size=(40, 30))
    assert a.per_class() == {label: 2 for label in a.labels}
    prep = Preprocessor(InputSpec(height=24, width=24))
    assert np.array_equal(read_clip(a.clips[5], prep), read_clip(b.clips[5], prep))
    assert a.clips[0].key != demo_clips(2, seed=4, frames=6, size=(40, 30)).clips[0].key


def test_split_is_by_clip_stratified_and_seeded():
    targets = [0] * 10 + [1] * 5 + [2] * 2
    train, val = split_by_clip(targets, 0.2, seed=0)
    assert sorted(train + val) == list(range(17)) and not set(train) & set(val)
    assert sorted(targets[i] for i in val) == [0, 0, 1, 2]
    assert split_by_clip(targets, 0.2, seed=0) == (train, val)
    assert split_by_clip(targets, 0.2, seed=1) != (train, val)


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory):
    from export.build import BuildOptions, build

    out = tmp_path_factory.mktemp("tiny_engines")
    build(BuildOptions(out=out, input_size=(32, 32), calib_frames=8, holdout_frames=4, int8=False, window=4, stride=2))
    return out


def test_feature_cache_is_keyed_by_engine_and_clip_and_reused(tmp_path, tiny_engines):
    from export.training.feature_cache import FeatureExtractor
    from runtime.manifest import BACKBONE, load_manifest

    manifest = load_manifest(tiny_engines)
    backbone = manifest.path_of(manifest.find(BACKBONE, "onnx", "fp32"))
    clips = demo_clips(1, frames=5, size=(40, 30)).clips[:3]
    first = FeatureExtractor(backbone, manifest.input, tmp_path / "cache").extract(clips, progress=False)
    again = FeatureExtractor(backbone, manifest.input, tmp_path / "cache").extract(clips, progress=False)
    assert first.cached == 0 and again.cached == 3
    assert all(np.array_equal(a, b) for a, b in zip(first.features, again.features))
    assert first.features[0].shape == (5, manifest.feature_size)


def test_unreadable_clips_are_skipped_and_listed_then_abort_past_the_threshold(tmp_path, tiny_engines, capsys):
    pytest.importorskip("torch")
    from export.training.train import TrainOptions, run_training

    for label in ("a", "b"):
        for i in range(3):
            _video(tmp_path / "clips" / label / f"{i}.avi", frames=8, seed=i)
    (tmp_path / "clips" / "a" / "broken.mp4").write_text("not a video")
    options = TrainOptions(clips=str(tmp_path / "clips"), engines=tiny_engines, out=tmp_path / "out", precision="fp32",
                           epochs=1, iterations=1, batch=4, hidden=8, cache_dir=tmp_path / "cache", progress=False,
                           max_failed=0.1, compare_fp32=False)
    with pytest.raises(TrainError, match="1 of 7 clips could not be read"):
        run_training(options)
    assert "broken.mp4" in capsys.readouterr().err

    options.max_failed = 0.5
    training = run_training(options)
    assert training["skipped"]["unreadable"][0]["clip"].endswith("broken.mp4")
    assert training["clips_per_class"] == {"a": 3, "b": 3}


def test_clips_shorter_than_the_window_are_reported(tmp_path, tiny_engines):
    pytest.importorskip("torch")
    from export.training.train import TrainOptions, run_training

    for label in ("a", "b"):
        _video(tmp_path / "clips" / label / "long.avi", frames=8)
    _video(tmp_path / "clips" / "b" / "short.avi", frames=3)
    options = TrainOptions(clips=str(tmp_path / "clips"), engines=tiny_engines, out=tmp_path / "out", precision="fp32",
                           window=4, epochs=1, iterations=1, batch=4, hidden=8, cache_dir=tmp_path / "cache",
                           progress=False, compare_fp32=False)
    training = run_training(options)
    assert training["skipped"]["shorter_than_window"] == [{"clip": str(tmp_path / "clips" / "b" / "short.avi"),
                                                          "frames": 3}]
    options.window = 10
    with pytest.raises(TrainError, match="no usable clip .* W=10"):
        run_training(options)


def test_train_cli_writes_head_engines_and_manifest(tmp_path, tiny_engines, capsys):
    pytest.importorskip("torch")
    from export.cli import main
    from runtime.manifest import GRU_SEQUENCE, load_manifest

    code = main(["train", "--clips", "demo:2", "--demo-frames", "10", "--demo-size", "40", "30",
                 "--engines", str(tiny_engines), "--out", str(tmp_path / "out"), "--precision", "fp32",
                 "--epochs", "1", "--iterations", "2", "--hidden", "16", "--window", "6",
                 "--cache", str(tmp_path / "cache"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    manifest = load_manifest(tmp_path / "out")
    assert manifest.hidden_size == 16 and manifest.window == 6
    assert manifest.find(GRU_SEQUENCE, "onnx").file == "gru_window6.onnx"
    assert manifest.training["clips_per_class"] == {label: 2 for label in manifest.labels}
    assert "window_accuracy" in manifest.training["validation"]
    assert (tmp_path / "out" / "gru_head.safetensors").is_file()
    assert load_manifest(tiny_engines).hidden_size == 256  # the source engines are untouched


def test_default_build_uses_the_shipped_backbone_and_seeded_is_still_available(tmp_path):
    from export.build import BuildOptions, build

    shipped = build(BuildOptions(out=tmp_path / "a", input_size=(32, 32), calib_frames=4, holdout_frames=2, int8=False))
    seeded = build(BuildOptions(out=tmp_path / "b", input_size=(32, 32), calib_frames=4, holdout_frames=2, int8=False,
                                seeded_backbone=True))
    assert shipped.provenance["backbone_weights"].startswith("shipped: mobilenet_v3_small_synthetic.safetensors")
    assert seeded.provenance["backbone_weights"].startswith("seeded:0")
    assert seeded.provenance["gru_weights"] == "seeded:0"  # the shipped head belongs to the shipped backbone


def test_export_cli_accepts_seeded_for_both_weights(tmp_path, capsys):
    from export.cli import main

    code = main(["--out", str(tmp_path / "e"), "--weights", "seeded", "--gru-weights", "seeded", "--no-int8",
                 "--calib-frames", "4", "--holdout-frames", "2", "--input-size", "32", "32"])
    assert code == 0, capsys.readouterr().err
    from runtime.manifest import load_manifest

    manifest = load_manifest(tmp_path / "e")
    assert manifest.provenance["gru_weights"] == "seeded:0" and manifest.provenance["backbone_weights"].startswith("seeded")
