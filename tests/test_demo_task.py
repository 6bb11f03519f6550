"""The demo task end to end: the default engines (shipped backbone + shipped head) give right labels.

Held-out demo clips (a seed the head was never trained on) go through the default build's
INT8 backbone with onnxruntime on the CPU, exactly as the runtime runs it; accuracy is
scored the way `edge-run --score` scores it. CI size: a few clips per class; the full-size
figures come from `edge-export evaluate --clips demo:60` (see export/assets/README.md).
"""
from __future__ import annotations

import numpy as np
import pytest

from export.build import BuildOptions, build
from export.clips import demo_clips
from export.evaluate import report, window_accuracy
from export.feature_cache import FeatureExtractor
from export.weights import load_state_dict
from runtime.manifest import BACKBONE, load_manifest

HELDOUT_SEED = 1001  # never used for training (the shipped head trained on --demo-seed 0)
HELDOUT_PER_CLASS = 6


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
    return report(weights, features["int8"], targets, manifest.window, drop=0.3, seed=0)


def _head(manifest):
    from export.cli import _weights_from_onnx

    return _weights_from_onnx(manifest)


def test_the_default_build_ships_the_trained_head_and_records_it(default_engines):
    manifest = load_manifest(default_engines)
    assert manifest.provenance["backbone_weights"].startswith("shipped: mobilenet_v3_small_synthetic")
    assert manifest.provenance["gru_weights"].startswith("shipped: demo_head")
    assert manifest.training["validation"]["window_accuracy"] >= 0.95
    assert manifest.quantization["gate"] == "passed"


def test_per_window_accuracy_on_held_out_clips_is_at_least_95_percent(head_report):
    assert head_report["window_accuracy"] >= 0.95, head_report


def test_per_step_accuracy_after_the_first_w_frames_is_at_least_90_percent(head_report):
    assert head_report["step_accuracy"] >= 0.90, head_report


def test_the_same_head_fed_single_frames_is_near_chance(head_report):
    # the temporal layer is what solves the task: one frame carries no class information
    assert head_report["single_frame_accuracy"] <= head_report["chance"] + 0.15, head_report
    assert head_report["window_accuracy"] - head_report["single_frame_accuracy"] >= 0.6


def test_with_30_percent_of_frames_dropped_window_accuracy_stays_at_least_90_percent(head_report):
    assert head_report["window_accuracy_drop30"] >= 0.90, head_report


def test_int8_backbone_costs_at_most_one_point_of_window_accuracy(heldout):
    manifest, features, targets = heldout
    weights = _head(manifest)
    int8, n = window_accuracy(weights, features["int8"], targets, manifest.window)
    fp32, _ = window_accuracy(weights, features["fp32"], targets, manifest.window)
    assert n >= 300 and abs(int8 - fp32) <= 0.01 + 1e-9, (int8, fp32)


def test_the_runtime_scores_the_demo_source_with_the_right_labels(default_engines):
    from runtime.demo import DemoSource
    from runtime.engine_set import open_engines
    from runtime.pipeline import Pipeline, PipelineConfig
    from runtime.result import EmitMode

    manifest = load_manifest(default_engines)
    engines = open_engines(manifest, "cpu", "int8", num_streams=1)
    source = DemoSource(seed=HELDOUT_SEED, max_frames=10 * 48)
    pipeline = Pipeline(manifest, engines, [source], PipelineConfig(emit=EmitMode.BOTH, score=True, threaded=False))
    results = list(pipeline)
    engines.close()
    accuracy = {mode: correct / total for mode, (correct, total) in pipeline.stats.accuracy.items()}
    assert len(results) > 480
    assert accuracy["window"] >= 0.9 and accuracy["step"] >= 0.85, (accuracy, pipeline.stats.accuracy)
    assert any(line.startswith("window accuracy") for line in pipeline.stats.summary_lines())
