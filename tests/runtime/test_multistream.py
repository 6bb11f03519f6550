"""Several streams on one pair of engines: batched results, stalls, back-pressure, per-stream state."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import PacedLiveSource, gru_weights

from export.graphs.gru import gru_step_numpy
from runtime import EmitMode, Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.mailbox import DropPolicy
from runtime.sources.demo import write_demo_video
from runtime.temporal import StepRunner


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three short clips of different scenes, different lengths (so streams end at different times)."""
    folder = tmp_path_factory.mktemp("streams")
    paths = []
    for seed, frames in ((11, 30), (12, 26), (13, 22)):
        path = folder / f"stream{seed}.avi"
        write_demo_video(path, num_frames=frames, seed=seed, width=160, height=120)
        paths.append(path)
    return paths


def run(manifest, sources, **config):
    engines = open_engines(manifest, "cpu", num_streams=len(sources))
    try:
        with Pipeline(engines, sources, PipelineConfig(**config)) as pipeline:
            results = list(pipeline)
    finally:
        engines.close()
    return results, pipeline


def by_stream(results, stream, mode):
    return [r for r in results if r.stream == stream and r.mode == mode]


@pytest.mark.parametrize("threaded", [True, False], ids=["pipelined", "serial"])
def test_batched_results_equal_each_stream_run_alone_and_unbatched(engines_dir, videos, threaded):
    manifest = load_manifest(engines_dir)
    batched, pipeline = run(manifest, [open_source(str(v), stream=i) for i, v in enumerate(videos)],
                            emit=EmitMode.BOTH, threaded=threaded)
    unbatched, _ = run(manifest, [open_source(str(v), stream=i) for i, v in enumerate(videos)],
                       emit=EmitMode.BOTH, threaded=threaded, batch_streams=False)
    assert pipeline.stats.batches < pipeline.stats.total("frames")  # frames of several streams did share calls
    for stream, video in enumerate(videos):
        alone, _ = run(manifest, [open_source(str(video))], emit=EmitMode.BOTH, threaded=threaded)
        for mode in ("step", "window"):
            expected = [r for r in alone if r.mode == mode]
            for candidate in (by_stream(batched, stream, mode), by_stream(unbatched, stream, mode)):
                assert [r.frame_index for r in candidate] == [r.frame_index for r in expected]
                np.testing.assert_allclose([r.probabilities for r in candidate], [r.probabilities for r in expected],
                                           atol=1e-5)
                assert all(r.source == str(video) for r in candidate)  # each result carries its stream's tag


def test_a_subset_of_streams_steps_only_its_own_state_rows(engines_dir):
    manifest = load_manifest(engines_dir)
    engines = open_engines(manifest, "cpu", num_streams=4)
    weights = gru_weights(manifest)
    runner = StepRunner(engines.gru_step, 4)
    runner.reset()
    expected = np.zeros((4, manifest.hidden_size), np.float32)
    rng = np.random.default_rng(5)
    for subset in ([0, 1, 2, 3], [2], [3, 1], [1, 0], [0, 2, 3], [3], [2, 0, 1]):
        x = rng.normal(size=(len(subset), manifest.feature_size)).astype(np.float32)
        runner.x[: len(subset)] = x
        logits = runner.step(subset)
        h, want = gru_step_numpy(weights, x, expected[subset])
        expected[subset] = h
        # float32 against the float32 numpy reference: 1e-5 is the suite's equivalence bound (reached: ~4e-6);
        # a state rounded to float16 (~1e-3) or a row stepped twice would break it
        np.testing.assert_allclose(logits, want, atol=1e-5)
        np.testing.assert_allclose(runner.state()["h"], expected, atol=1e-5)
    engines.close()


def test_a_stalled_stream_does_not_hold_back_the_others(engines_dir):
    manifest = load_manifest(engines_dir)
    healthy = PacedLiveSource(fps=100.0, seed=1)
    stalled = PacedLiveSource(fps=100.0, seed=2, pause_at={10: 1.0}, stream=1)
    engines = open_engines(manifest, "cpu", num_streams=2)
    received = []  # (perf_counter when the result came out, result)
    with Pipeline(engines, [healthy, stalled], PipelineConfig(reset_gap=0.5, max_frames=150)) as pipeline:
        for result in pipeline:
            received.append((time.perf_counter(), result))
    engines.close()
    before = max(t for t, r in received if r.stream == 1 and r.frame_index < 10)
    after = min(t for t, r in received if r.stream == 1 and r.frame_index >= 10)
    during = [r for t, r in received if r.stream == 0 and before < t < after]
    # A loop that waited for the stalled stream would emit nothing for stream 0 during its 1 s stall;
    # at 100 fps the healthy stream delivers ~90 frames meanwhile. 10 results is what a loop at 90 ms
    # per frame still gives (over 10x slower than this loop on a loaded 2-core machine), and none of
    # them waited for the stall (half the stall: a frame held back for it would be ~1 s late).
    assert after - before >= 0.9  # time.sleep(1.0) in the stalled camera, minus the loop's own delays
    assert len(during) >= 10
    assert np.median([r.latency for r in during]) < 0.5
    # Each stream has its own reset policy: the gap resets the stalled stream only.
    assert pipeline.stats.streams[1].resets.get("timestamp gap") == 1
    assert pipeline.stats.streams[0].resets == {}


def test_drop_policy_none_processes_every_frame_of_a_live_source_and_back_pressures_it(engines_dir):
    manifest = load_manifest(engines_dir)
    source = PacedLiveSource(fps=5000.0)  # far faster than the loop
    engines = open_engines(manifest, "cpu")
    indices, in_flight = [], []
    config = PipelineConfig(drop_policy=DropPolicy.NONE, max_frames=200)
    with Pipeline(engines, [source], config) as pipeline:
        for result in pipeline:
            indices.append(result.frame_index)
            in_flight.append(source.produced - (result.frame_index + 1))
    engines.close()
    stats = pipeline.stats
    assert stats.total("frames") == 200 and stats.total("dropped") == 0
    assert pipeline.streams[0].mailbox.high_water <= config.queue_frames
    # Frames read ahead of the loop stay bounded: the queue, plus the one being decoded.
    assert max(in_flight) <= config.queue_frames + 1
    assert indices == list(range(200))


def test_every_result_of_a_none_policy_live_source_arrives_in_order(engines_dir):
    manifest = load_manifest(engines_dir)
    results, pipeline = run(manifest, [PacedLiveSource(fps=5000.0), PacedLiveSource(fps=5000.0, seed=3, stream=1)],
                            drop_policy=DropPolicy.NONE, max_frames=120)
    for stream in (0, 1):
        assert [r.frame_index for r in results if r.stream == stream] == list(range(120))
        assert all(r.dropped == 0 for r in results if r.stream == stream)
    assert pipeline.stats.total("dropped") == 0


def test_sources_file_runs_every_listed_source_as_its_own_stream(engines_dir, videos, tmp_path):
    listing = tmp_path / "sources.txt"
    listing.write_text(f"# two cameras' worth of clips\n{videos[0]}\n\n  {videos[1]}  \n# the end\n")
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--sources-file",
                           str(listing), "--max-frames", "12", "--backend", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    for stream, video in enumerate(videos[:2]):
        mine = [r for r in records if r["stream"] == stream]
        assert [r["frame"] for r in mine] == list(range(12))
        assert {r["source"] for r in mine} == {str(video)}


def test_an_empty_sources_file_is_a_usage_error(engines_dir, tmp_path):
    listing = tmp_path / "sources.txt"
    listing.write_text("# nothing here\n\n")
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--sources-file",
                           str(listing), "--backend", "cpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "sources.txt" in done.stderr and "no source" in done.stderr
