"""The loop end to end on real engines: carried state, windows, drops, resets, non-finite outputs."""
from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from helpers import PacedLiveSource, gru_weights, naive

from export.graphs.gru import gru_step_numpy
from runtime import EmitMode, Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.mailbox import DropPolicy
from runtime.pipeline import PipelineState


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def offline_features(manifest, video):
    """Decode every frame with OpenCV and run the FP32 backbone with plain session.run."""
    session = ort.InferenceSession(str(manifest.folder / "backbone_fp32.onnx"))
    capture = cv2.VideoCapture(str(video))
    features = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        x = naive(image, manifest.input)[None]
        features.append(session.run(None, {"image": x})[0][0])
    return np.array(features)




def run(manifest, sources, **config):
    engines = open_engines(manifest, "cpu", num_streams=len(sources))
    with Pipeline(engines, sources, PipelineConfig(**config)) as pipeline:
        results = list(pipeline)
    return results, pipeline


def test_per_step_results_equal_the_offline_gru_over_the_same_features(engines_dir, demo_video):
    manifest = load_manifest(engines_dir)
    features = offline_features(manifest, demo_video)
    results, pipeline = run(manifest, [open_source(str(demo_video))], emit=EmitMode.STEP)
    assert [r.frame_index for r in results] == list(range(len(features)))
    h = np.zeros((1, manifest.hidden_size), np.float32)
    weights = gru_weights(manifest)
    for result, feature in zip(results, features):
        h, logits = gru_step_numpy(weights, feature[None], h)
        # 1e-5: float32 engines against the float32 numpy GRU on the same features reach ~1e-7; a state
        # carried in float16 (~1e-3 relative) or a wrong gate is far outside it
        np.testing.assert_allclose(result.probabilities, softmax(logits[0]), atol=1e-5)
        assert result.label == manifest.labels[int(np.argmax(logits[0]))]
    assert pipeline.stats.total("dropped") == 0


@pytest.mark.parametrize("window_engine", ["sequence", "step"])
def test_per_window_decisions_equal_the_gru_over_exactly_those_features(engines_dir, demo_video, window_engine):
    manifest = load_manifest(engines_dir)
    features = offline_features(manifest, demo_video)
    engines = open_engines(manifest, "cpu", window_engine=window_engine)
    assert engines.window_is_sequence == (window_engine == "sequence")
    with Pipeline(engines, [open_source(str(demo_video))], PipelineConfig(emit=EmitMode.WINDOW)) as pipeline:
        results = list(pipeline)
    W, S = manifest.window, manifest.stride
    expected_ends = list(range(W - 1, len(features), S))
    assert [r.frame_index for r in results] == expected_ends
    weights = gru_weights(manifest)
    for result in results:
        h = np.zeros((1, manifest.hidden_size), np.float32)
        for feature in features[result.frame_index - W + 1 : result.frame_index + 1]:
            h, logits = gru_step_numpy(weights, feature[None], h)
        np.testing.assert_allclose(result.probabilities, softmax(logits[0]), atol=1e-5)  # as for the steps
        assert result.mode == "window"


def test_both_modes_tag_their_results(engines_dir, demo_video):
    manifest = load_manifest(engines_dir)
    results, _ = run(manifest, [open_source(str(demo_video))], emit=EmitMode.BOTH, max_frames=20)
    modes = [r.mode for r in results]
    assert modes.count("step") == 20
    assert modes.count("window") == len(range(manifest.window - 1, 20, manifest.stride))


def test_a_live_source_faster_than_the_loop_drops_frames_and_counts_them_exactly(engines_dir):
    manifest = load_manifest(engines_dir)
    source = PacedLiveSource(fps=2000.0)  # far faster than the ~2-5 ms per frame loop
    results, pipeline = run(manifest, [source], emit=EmitMode.STEP, max_frames=600)
    stats = pipeline.stats
    assert stats.total("dropped") > 0
    assert stats.total("frames") + stats.total("dropped") == source.produced == 600
    assert sum(r.dropped for r in results) == stats.total("dropped")
    indices = [r.frame_index for r in results]
    assert indices == sorted(set(indices))  # strictly increasing
    # Newest wins: a result is never more than the mailbox's one frame behind, however long the run.
    gaps = np.diff(indices) - 1
    assert np.array_equal(gaps, [r.dropped for r in results[1:]])
    late = [r.latency for r in results[len(results) // 2 :]]
    early = [r.latency for r in results[: len(results) // 2]]
    # Bounded, not growing with run length: a queue that kept every frame would end ~1 s behind (600 frames
    # produced in 0.3 s, ~2 ms of work each); 0.25 s is 5x a loaded 2-core machine's 50 ms scheduling hiccup.
    assert np.median(late) < np.median(early) + 0.25


def test_drop_policy_none_processes_every_frame_of_a_live_source(engines_dir):
    manifest = load_manifest(engines_dir)
    source = PacedLiveSource(fps=2000.0)
    results, pipeline = run(manifest, [source], drop_policy=DropPolicy.NONE, queue_frames=2, max_frames=300)
    assert [r.frame_index for r in results] == list(range(300))
    assert pipeline.stats.total("dropped") == 0


def test_a_capture_gap_resets_the_state_and_the_next_step_starts_from_zero(engines_dir):
    manifest = load_manifest(engines_dir)
    source = PacedLiveSource(fps=100.0, pause_at={6: 0.35})
    results, pipeline = run(manifest, [source], reset_gap=0.2, drop_policy=DropPolicy.NONE, max_frames=12)
    assert pipeline.stats.streams[0].resets == {"timestamp gap": 1}
    # After the reset the step at frame 6 equals a step from h = 0 on frame 6's features.
    fresh, _ = run(manifest, [PacedLiveSource(fps=100.0)], drop_policy=DropPolicy.NONE, max_frames=7)
    assert len(results) == 12
    # frame 6 of the first run: state reset -> same as stepping frame 6 alone from zero
    engines = open_engines(manifest, "cpu")
    scene_frames = [f.image.copy() for f in _frames(PacedLiveSource(fps=1000.0, total=7))]
    from runtime.preprocess import Preprocessor

    Preprocessor(manifest.input)(scene_frames[6], engines.backbone.input("image")[0])
    engines.backbone.run(1)
    engines.gru_step.input("x")[0] = engines.backbone.output("features")[0]
    engines.gru_step.step(1)
    np.testing.assert_allclose(results[6].probabilities, softmax(engines.gru_step.output("logits")[0]), atol=1e-5)  # same engines, same frame
    assert not np.allclose(results[6].probabilities, fresh[6].probabilities, atol=1e-4)


def _frames(source):
    source.open()
    while (frame := source.read()) is not None:
        yield frame


def test_api_reset_zeroes_the_carried_state(engines_dir, demo_video):
    manifest = load_manifest(engines_dir)
    engines = open_engines(manifest, "cpu")
    pipeline = Pipeline(engines, [open_source(str(demo_video))], PipelineConfig(max_frames=10))
    iterator = iter(pipeline)
    for _ in range(5):
        next(iterator)
    assert np.abs(pipeline.export_state().states["h"]).sum() > 0
    pipeline.request_reset(0)
    list(iterator)
    assert pipeline.stats.streams[0].resets == {"api": 1}


def test_state_export_import_round_trip(engines_dir, demo_video):
    manifest = load_manifest(engines_dir)
    engines = open_engines(manifest, "cpu")
    first = Pipeline(engines, [open_source(str(demo_video))], PipelineConfig(max_frames=12, emit=EmitMode.BOTH))
    list(first)
    state = first.export_state()
    second = Pipeline(open_engines(manifest, "cpu"), [open_source(str(demo_video))], PipelineConfig(max_frames=1))
    second.import_state(state)
    np.testing.assert_array_equal(second.export_state().states["h"], state.states["h"])
    np.testing.assert_array_equal(second.export_state().streams[0].ring, state.streams[0].ring)
    with pytest.raises(ValueError, match="shape|expected"):
        second.import_state(PipelineState({"h": np.zeros((2, 3))}, ()))
    with pytest.raises(ValueError, match="expected h"):  # a state under another name is refused, not taken by position
        second.import_state(PipelineState({"c": state.states["h"]}, state.streams))
