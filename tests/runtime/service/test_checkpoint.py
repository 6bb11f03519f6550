"""State checkpoints: atomic, trusted only for the same engines and when fresh, never fatal when corrupt."""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

from runtime import EmitMode, Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.service import Service, ServiceOptions
from runtime.service.checkpoint import CHECKPOINT_NAME, Checkpoint, CheckpointStore, StreamState, decode, encode, restore, snapshot


def sample(identity="abc", saved_at=None, streams=1, hidden=8):
    rng = np.random.default_rng(0)
    return Checkpoint(
        identity=identity,
        saved_at=time.time() if saved_at is None else saved_at,
        states={"h": rng.standard_normal((streams, hidden)).astype(np.float32)},
        streams=tuple(StreamState(f"demo:{i}", False, 10 + i, False, rng.standard_normal((3, 4)).astype(np.float32), 7)
                      for i in range(streams)),
    )


def test_round_trip_is_exact(tmp_path):
    store = CheckpointStore(tmp_path, "abc", max_age=60)
    saved = sample(streams=2)
    store.save(saved)
    loaded, why = store.load()
    assert why == "" and loaded.identity == "abc" and loaded.streams[1].position == 11
    np.testing.assert_array_equal(loaded.states["h"], saved.states["h"])
    np.testing.assert_array_equal(loaded.streams[0].ring, saved.streams[0].ring)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temporary file left behind


@pytest.mark.parametrize("case, expected", [
    ("other engines", "written for other engines"),
    ("too old", "old (limit 60 s)"),
    ("future", "in the future"),
])
def test_a_checkpoint_that_does_not_fit_is_not_used_and_says_why(tmp_path, case, expected):
    store = CheckpointStore(tmp_path, "abc", max_age=60)
    now = time.time()
    store.save({"other engines": sample(identity="xyz"), "too old": sample(saved_at=now - 3600),
                "future": sample(saved_at=now + 3600)}[case])
    loaded, why = store.load(now=now)
    assert loaded is None and expected in why
    assert store.path.exists()  # a valid file that does not fit is left alone


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "nan"])
def test_a_corrupt_checkpoint_is_set_aside_and_reported(tmp_path, damage):
    store = CheckpointStore(tmp_path, "abc", max_age=60)
    data = encode(sample())
    if damage == "nan":
        bad = sample()
        bad.states["h"][0, 0] = np.nan
        data = encode(bad)
    store.path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(500), "empty": b"", "nan": data}[damage])
    loaded, why = store.load()
    assert loaded is None and "unreadable" in why and "set aside" in why
    assert not store.path.exists() and len(list(tmp_path.glob(CHECKPOINT_NAME + ".corrupt-*"))) == 1


def test_decode_refuses_what_is_not_a_checkpoint():
    with pytest.raises(ValueError):
        decode(b"PK\x03\x04 not really a zip")


def test_restore_puts_state_and_window_schedule_back_and_resumes_a_file(engines_dir, demo_video):
    # given a run that processed 10 frames of a file with windows of 8 every 4
    manifest = load_manifest(engines_dir)
    config = PipelineConfig(emit=EmitMode.BOTH, max_frames=10)
    first = Pipeline(open_engines(manifest, "cpu"), [open_source(str(demo_video))], config)
    list(first)
    saved = snapshot(first, manifest.identity())
    assert saved.streams[0].position == 10 and not saved.streams[0].finished  # stopped by --max-frames, not the end
    # when a new pipeline on the same file restores it
    second = Pipeline(open_engines(manifest, "cpu"), [open_source(str(demo_video))],
                      PipelineConfig(emit=EmitMode.BOTH, max_frames=6))
    report = restore(second, decode(encode(saved)))
    # then it continues at frame 10 with the same hidden state, and the next window falls where it would have (frame 11)
    assert report.restored == (0,) and report.resumed == {0: 10}
    np.testing.assert_array_equal(second.export_state().states["h"], saved.states["h"])
    results = list(second)
    assert [r.frame_index for r in results if r.mode == "step"] == list(range(10, 16))
    assert [r.frame_index for r in results if r.mode == "window"] == [11, 15]
    assert results[0].dropped == 0


def test_a_stream_of_another_source_starts_fresh(engines_dir, demo_video):
    manifest = load_manifest(engines_dir)
    saved = sample(identity=manifest.identity(), hidden=manifest.hidden_size)
    pipeline = Pipeline(open_engines(manifest, "cpu"), [open_source(str(demo_video))], PipelineConfig(max_frames=1))
    report = restore(pipeline, saved)
    assert report.restored == () and "no saved state for source" in report.fresh[0]


def test_a_corrupt_checkpoint_never_stops_the_service(engines_dir, tmp_path, caplog):
    # given a state folder holding a damaged checkpoint
    manifest = load_manifest(engines_dir)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"\x00" * 100)
    pipeline = Pipeline(open_engines(manifest, "cpu"), [open_source("demo")], PipelineConfig(max_frames=5))
    caplog.set_level(logging.INFO, logger="edge_run")
    # when the service starts on it
    Service(pipeline, [], ServiceOptions(state_dir=tmp_path), identity=manifest.identity()).run()
    # then it runs fresh, says why in one line, keeps the bad file aside and writes a good one at the end
    assert pipeline.stats.total("frames") == 5
    fresh = [r.message for r in caplog.records if "starting fresh" in r.message]
    assert len(fresh) == 1 and "unreadable" in fresh[0] and "set aside" in fresh[0]
    assert len(list(tmp_path.glob("*.corrupt-*"))) == 1
    loaded, why = CheckpointStore(tmp_path, manifest.identity(), 60).load()
    assert why == "" and loaded.streams[0].position == 5


def test_periodic_checkpoints_are_written_while_running(engines_dir, tmp_path):
    manifest = load_manifest(engines_dir)
    pipeline = Pipeline(open_engines(manifest, "cpu"), [open_source("demo", realtime=True, fps=200)],
                        PipelineConfig(max_frames=60))
    service = Service(pipeline, [], ServiceOptions(state_dir=tmp_path, checkpoint_every=0.05), identity=manifest.identity())
    service.run()
    assert service.checkpointer.saved >= 3 and service.checkpointer.failed == 0
