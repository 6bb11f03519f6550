"""The demo task end to end: the default engines (shipped backbone + shipped head) give right labels.

Held-out demo clips (a seed the head was never trained on) go through the default build's
INT8 backbone with onnxruntime on the CPU, exactly as the runtime runs it; accuracy is
scored the way `edge-run --score` scores it. CI size: 20 clips per class; the full-size
figures come from `edge-export evaluate --clips demo:40 --demo-seed 1` (export/assets/README.md).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from export.build import BuildOptions, build
from export.graphs.weights import load_state_dict
from export.training.clips import demo_clips
from export.training.evaluate import report, window_accuracy
from export.training.feature_cache import FeatureExtractor
from runtime.manifest import BACKBONE, load_manifest
from runtime.sources.demo import CLASSES

# The fresh CI-size training fixture alone takes ~6 min on 2 idle cores (feature extraction and
# training); pyproject's 600 s per-test limit is too close to that on a shared machine.
pytestmark = pytest.mark.timeout(1800)

HELDOUT_SEED = 1001  # never used for training (the shipped head trained on --demo-seed 0)
HELDOUT_PER_CLASS = 20
# The acceptance targets, held on 120 held-out clips (1080 windows). The shipped head
# measures 96.9% per window, 96.4% per step and 97.8% per window with 30% drops on 40 held-out
# clips per class (`edge-export evaluate --clips demo:40 --demo-seed 1`).
MIN_WINDOW, MIN_STEP, MIN_WINDOW_DROPS = 0.95, 0.90, 0.90
HELDOUT_CLIPS = HELDOUT_PER_CLASS * len(CLASSES)


def _two_standard_errors(accuracy: float, clips: int) -> float:
    """Two standard errors of an accuracy measured on `clips` clips: windows of one clip are
    correlated, so the clip is the independent sample. Two accuracies closer than this on the
    same held-out clips are not distinguishably different."""
    return 2.0 * float(np.sqrt(accuracy * (1.0 - accuracy) / clips))


@pytest.fixture(scope="session")
def default_engines(tmp_path_factory):
    """What `edge-export` builds with its defaults (fewer calibration frames)."""
    out = tmp_path_factory.mktemp("default_engines")
    build(BuildOptions(out=out, calib_frames=64, holdout_frames=16))
    return out


@pytest.fixture(scope="session")
def heldout(default_engines, tmp_path_factory):
    """Held-out demo clips' features through the INT8 and the FP32 backbone, and their class indices."""
    manifest = load_manifest(default_engines)
    clips = demo_clips(HELDOUT_PER_CLASS, seed=HELDOUT_SEED).clips
    cache = tmp_path_factory.mktemp("features")
    features = {}
    for precision in ("int8", "fp32"):
        extractor = FeatureExtractor(manifest.path_of(manifest.find(BACKBONE, "onnx", precision)), manifest.input, cache)
        features[precision] = extractor.extract(clips, progress=False).features
    targets = [manifest.labels.index(c.label) for c in clips]
    return manifest, features, targets


@pytest.fixture(scope="session")
def head_report(heldout, default_engines):
    manifest, features, targets = heldout
    weights = _head(manifest)
    figures = report(weights, features["int8"], targets, manifest.window, drop=0.3, seed=0)
    print(f"shipped head on {HELDOUT_PER_CLASS} held-out clips per class: {figures}")
    return figures


def _head(manifest):
    from export.training.commands import _weights_from_onnx

    return _weights_from_onnx(manifest)


def test_the_default_build_ships_the_trained_head_and_records_it(default_engines):
    manifest = load_manifest(default_engines)
    assert manifest.provenance["backbone_weights"].startswith("shipped: mobilenet_v3_small_synthetic")
    assert manifest.provenance["gru_weights"].startswith("shipped: demo_head")
    # the shipped head's own validation figure meets the task's window target (recorded: 97.9%)
    assert manifest.training["validation"]["window_accuracy"] >= MIN_WINDOW
    assert manifest.quantization["gate"] == "passed"


def test_per_window_accuracy_on_held_out_clips(head_report):
    assert head_report["window_accuracy"] >= MIN_WINDOW, head_report


def test_per_step_accuracy_after_the_first_w_frames(head_report):
    assert head_report["step_accuracy"] >= MIN_STEP, head_report


def test_the_same_head_fed_single_frames_is_near_chance(head_report):
    # The temporal layer is what solves the task: fed one frame, the head is not distinguishable
    # from chance on these clips (two standard errors; measured 13.5% against 16.7%), while the
    # window accuracy above meets its target.
    chance = head_report["chance"]
    assert head_report["single_frame_accuracy"] <= chance + _two_standard_errors(chance, HELDOUT_CLIPS), head_report


def test_with_30_percent_of_frames_dropped_window_accuracy_holds(head_report):
    assert head_report["window_accuracy_drop30"] >= MIN_WINDOW_DROPS, head_report
    # "holds": not distinguishably below the accuracy without drops on the same clips
    window = head_report["window_accuracy"]
    assert head_report["window_accuracy_drop30"] >= window - _two_standard_errors(window, HELDOUT_CLIPS), head_report


def test_int8_backbone_costs_at_most_one_point_of_window_accuracy(heldout):
    manifest, features, targets = heldout
    weights = _head(manifest)
    int8, n = window_accuracy(weights, features["int8"], targets, manifest.window)
    fp32, _ = window_accuracy(weights, features["fp32"], targets, manifest.window)
    print(f"held-out window accuracy: INT8 {int8:.4f}, FP32 {fp32:.4f} ({n} windows)")
    # The stated requirement: INT8 window accuracy within one point of FP32's on the same clips
    # (measured: 97.78% INT8, 97.69% FP32 on 1080 held-out windows).
    assert n >= 1000 and abs(int8 - fp32) <= 0.01 + 1e-9, (int8, fp32)


DEMO_STREAM_FRAMES = 40 * 48  # 40 clips of the held-out demo stream


def _run_demo(engines_dir, drop: float = 0.0, frames: int = DEMO_STREAM_FRAMES):
    """The runtime (Pipeline, INT8 backbone, onnxruntime CPU) on a held-out demo stream, scored."""
    from runtime.backends import open_engines
    from runtime.pipeline import Pipeline, PipelineConfig
    from runtime.result import EmitMode
    from runtime.sources.demo import DemoSource

    manifest = load_manifest(engines_dir)
    engines = open_engines(manifest, "cpu", "int8", num_streams=1)
    source = DemoSource(seed=HELDOUT_SEED, max_frames=frames) if not drop else RandomDrops(HELDOUT_SEED, frames, drop)
    pipeline = Pipeline(engines, [source], PipelineConfig(emit=EmitMode.BOTH, score=True, threaded=False))
    results = list(pipeline)
    engines.close()
    return pipeline.stats, results


class RandomDrops:
    """The demo stream with a fraction of frames dropped at random, as the runtime drops stale frames."""

    def __new__(cls, seed: int, frames: int, drop: float):
        from runtime.sources.demo import DemoSource

        class _Dropping(DemoSource):
            def _read(self, out):
                while True:
                    frame = super()._read(out)
                    if frame is None or self._rng.random() >= drop:
                        return frame
                    self.dropped += 1

            def _open(self):
                super()._open()
                self._rng = np.random.default_rng(seed + 7)

        return _Dropping(seed=seed, max_frames=frames)


def test_the_runtime_scores_the_demo_source_with_the_right_labels(default_engines):
    stats, results = _run_demo(default_engines)
    accuracy = {mode: correct / total for mode, (correct, total) in stats.accuracy.items()}
    print(f"runtime on the held-out demo stream: {stats.accuracy}")
    assert len(results) > DEMO_STREAM_FRAMES
    # the targets themselves (window 0.95, step 0.90); the stream is seeded and onnxruntime on the
    # CPU deterministic, so the figures are the same on every run (measured 95.2% / 96.1%)
    assert accuracy["window"] >= MIN_WINDOW and accuracy["step"] >= MIN_STEP, (accuracy, stats.accuracy)
    assert any(line.startswith("window accuracy") for line in stats.summary_lines())


def test_the_runtime_holds_its_window_accuracy_with_30_percent_of_frames_dropped(default_engines):
    stats, results = _run_demo(default_engines, drop=0.3)
    correct, total = stats.accuracy["window"]
    print(f"runtime with 30% of frames dropped: {stats.accuracy}")
    assert stats.total("dropped") > 0.2 * DEMO_STREAM_FRAMES and total >= 100
    assert correct / total >= MIN_WINDOW_DROPS, stats.accuracy  # measured 97.3%


# A fresh training run at CI size: the command that made the shipped head (400 clips per
# class, up to 4000 steps), with 150 clips per class and 1500 steps: ~2.5 min of INT8 feature
# extraction and ~2 min of training on 2 cores. The 0.95 window target is the shipped head's
# (tested above); a run on 3/8 of its clips and 3/8 of its steps is not that head (measured on
# the held-out clips: 93.4% per window, 95.7% with 30% drops; the shipped head 97.8%). It is
# held to FRESH_MIN_WINDOW, which is not a stated target but the bound this test has always
# had (no stated target exists for a reduced run); it must not be loosened.
CI_TRAIN_PER_CLASS = 150
CI_TRAIN = dict(epochs=15, iterations=100, batch=128, patience=15, threads=2)
FRESH_MIN_WINDOW = 0.92
# Reproducibility is checked on a smaller run (its clips come from the same feature cache).
REPRO_PER_CLASS = 40
REPRO_TRAIN = dict(epochs=6, iterations=40, batch=64, patience=6, threads=2)


def _train(engines, out, cache, per_class: int, settings: dict) -> dict:
    from export.training.train import TrainOptions, run_training

    options = TrainOptions(clips=f"demo:{per_class}", engines=engines, out=out, cache_dir=cache, progress=False,
                           compare_fp32=False, seed=0, **settings)
    with open(os.devnull, "w") as log:
        return run_training(options, log=log)


@pytest.fixture(scope="session")
def train_cache(tmp_path_factory):
    pytest.importorskip("torch", reason="the train extra (torch) is not installed")
    return tmp_path_factory.mktemp("train_cache")


@pytest.fixture(scope="session")
def fresh_training(default_engines, train_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    return _train(default_engines, out, train_cache, CI_TRAIN_PER_CLASS, CI_TRAIN), out


def test_a_fresh_training_run_reaches_the_task_targets_on_held_out_clips(fresh_training, heldout):
    _, features, targets = heldout
    training, out = fresh_training
    weights = load_state_dict(out / "gru_head.safetensors")
    figures = report(weights, features["int8"], targets, load_manifest(out).window, drop=0.3)
    print(f"fresh CI-size training, held-out: {figures}; validation: {training['validation']}")
    assert figures["window_accuracy"] >= FRESH_MIN_WINDOW, figures
    assert figures["window_accuracy_drop30"] >= FRESH_MIN_WINDOW, figures
    chance = figures["chance"]
    assert figures["single_frame_accuracy"] <= chance + _two_standard_errors(chance, HELDOUT_CLIPS), figures
    # the validation figures are the run's own; what the deployed manifest records is what it measured
    assert load_manifest(out).training["validation"] == training["validation"]


def test_training_is_reproducible_with_the_same_seed(default_engines, train_cache, tmp_path_factory):
    outs = [tmp_path_factory.mktemp(f"repro{i}") for i in range(2)]
    runs = [_train(default_engines, out, train_cache, REPRO_PER_CLASS, REPRO_TRAIN) for out in outs]
    a, b = runs[0]["validation"], runs[1]["validation"]
    print(f"two runs with seed 0: {a['window_accuracy']:.4f} / {b['window_accuracy']:.4f} per window")
    assert a["window_accuracy"] > 0.5, a  # it learnt something, so the comparison means something
    # the same seed, clips and thread count give the same run: identical weights and figures
    assert a == b
    weights = [load_state_dict(out / "gru_head.safetensors") for out in outs]
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
