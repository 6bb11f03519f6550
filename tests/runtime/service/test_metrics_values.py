"""Every documented metric is served, and each counter says what the run did, not merely what the stats say.

The run is made to have something in every counter: a camera faster than the loop (drops),
corrupt frames, a lost-and-reopened camera (reconnect, source-restart reset), a capture
stall longer than the reset gap (timestamp-gap reset), an API reset, and a budget no
result can meet (every result a deadline miss). The expected values come from the faults
planted and from the results themselves, so a metric that exports the wrong counter, or a
counter that is not incremented, fails.
"""
from __future__ import annotations

import math
import re
import threading
import time
from typing import Optional

import numpy as np
from helpers import REPO, PacedLiveSource, free_port, get, wait_until
from prometheus_client.parser import text_string_to_metric_families

from runtime import Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.bench.observers import ReadingClient
from runtime.capture import Backoff
from runtime.frame import Frame
from runtime.mailbox import DropPolicy
from runtime.recording import Recorder, chunk_files
from runtime.service import Service, ServiceOptions
from runtime.service.clips import EventClips
from runtime.service.metrics import engine_info
from runtime.service.preview import Preview
from runtime.service.swap import EngineReloader
from runtime.sinks import JsonLinesSink
from runtime.sinks.mqtt import MqttConfig, MqttSink

CORRUPT = {12, 13, 14}  # frames produced (counted across reopens) that arrive empty
FAIL_AT = 40  # the camera is unplugged before its 41st frame, and reopened
PAUSE_AT, PAUSE = 60, 0.6  # a capture stall, longer than RESET_GAP
RESET_GAP = 0.3
GATE_AT = 110  # the camera holds its 111th frame until the test has scraped


def documented_metrics(table: str = "metric") -> list[str]:
    """Every metric name in deploy/README.md's metrics table whose first heading is `table` (first cell of
    each `edge_` row): "metric" for every run's, "metric of an option" for --preview's, --record's, --clip-on's."""
    names, inside = [], False
    for line in (REPO / "deploy" / "README.md").read_text().splitlines():
        if line.startswith("|"):
            inside = inside or line.split("|")[1].strip() == table
            if inside and line.startswith("| `edge_"):
                names += re.findall(r"`(edge_\w+)`", line.split("|")[1])
        else:
            inside = False
    return names


class FaultyCamera(PacedLiveSource):
    """A paced live camera with corrupt frames, that holds frame GATE_AT until `release` is set."""

    def __init__(self, **kwargs) -> None:
        super().__init__(fps=1000.0, pause_at={PAUSE_AT: PAUSE}, fail_at={FAIL_AT}, **kwargs)
        self.reached = threading.Event()
        self.release = threading.Event()
        self.last_index: Optional[int] = None  # index of the last frame emitted before the gate

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        if self.produced == GATE_AT and not self.release.is_set():
            self.reached.set()
            self.release.wait(30)
        frame = super()._read(out)
        if frame is not None and self.produced - 1 in CORRUPT:
            frame = Frame(np.empty((0, 0, 3), np.uint8), frame.index, frame.timestamp, frame.stream, frame.label)
        if frame is not None:
            self.last_index = frame.index
        return frame


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name, **labels) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_every_documented_metric_is_served_and_each_counter_is_what_the_run_did(engines_dir, tmp_path):
    manifest = load_manifest(engines_dir)
    source = FaultyCamera()
    pipeline = Pipeline(open_engines(manifest, "cpu"), [source],
                        PipelineConfig(drop_policy=DropPolicy.NEWEST, budget=1e-6, reset_gap=RESET_GAP,
                                       backoff=Backoff(initial=0.02, factor=2.0, maximum=0.2, jitter=0.2)))
    out = tmp_path / "results.jsonl"
    jsonl = JsonLinesSink.to_path(str(out), manifest.labels)
    # A broker nobody listens on: the MQTT sink exists (its metrics are served) and never connects.
    mqtt = MqttSink.connect(MqttConfig.from_url(f"mqtt://127.0.0.1:{free_port()}"), manifest.labels)
    service = Service(pipeline, [jsonl, mqtt],
                      ServiceOptions(metrics_port=0, state_dir=tmp_path / "state", checkpoint_every=3600.0,
                                     stall_after=60.0, flush_timeout=0.5),
                      identity=manifest.identity(), engine_info=engine_info("cpu", "fp32", manifest.identity()),
                      watchers=[EngineReloader(pipeline, engines_dir, lambda found: open_engines(found, "cpu"))])
    results, scraped = [], {}
    started = time.time()

    def on_result(result) -> None:
        results.append(result)
        if len(results) == 5:
            pipeline.request_reset(0)
        # The gate holds the camera: once the frame before it is out, no counter can move.
        if source.reached.is_set() and result.frame_index == source.last_index and "text" not in scraped:
            service.fanout.flush(5)
            assert service.checkpointer.save_now()
            scraped["text"] = get(f"http://127.0.0.1:{service.metrics_server.port}/metrics")[1]
            scraped["fps"] = pipeline.stats.fps()
            scraped["results"] = list(results)
            service.stop()
            source.release.set()

    service.on_result = on_result
    service.run()
    assert "text" in scraped, "the run ended before the gate"
    found = samples(scraped["text"])
    seen = list(scraped["results"])

    # every documented name is served (histograms as _bucket/_count/_sum)
    names = {name for name, _ in found}
    missing = [n for n in documented_metrics() if n not in names and n + "_count" not in names]
    assert documented_metrics() and not missing, missing

    # what the results say the run did
    indices = [r.frame_index for r in seen]
    restarts = sum(1 for a, b in zip(indices, indices[1:]) if b <= a)
    gaps = sum(1 for a, b in zip(seen, seen[1:]) if b.frame_index > a.frame_index
               and b.capture_time - a.capture_time > RESET_GAP)
    s = {"stream": "0"}
    assert value(found, "edge_frames_total", **s) == len(seen)  # one step result per processed frame
    assert value(found, "edge_results_total", **s) == len(seen)
    assert value(found, "edge_deadline_misses_total", **s) == len(seen)  # a 1 µs budget: every result is late
    assert value(found, "edge_corrupt_frames_total", **s) == len(CORRUPT)
    assert value(found, "edge_reconnects_total", **s) == 1 == restarts
    assert value(found, "edge_nonfinite_outputs_total", **s) == 0  # this backbone cannot produce NaN on a demo frame
    # Results report every frame they did not follow: stale ones and corrupt ones (whose indices were skipped).
    dropped = value(found, "edge_dropped_frames_total", **s)
    assert dropped > 0 and dropped == sum(r.dropped for r in seen) - len(CORRUPT)
    assert value(found, "edge_resets_total", reason="api", **s) == 1
    assert value(found, "edge_resets_total", reason="source restart", **s) == restarts
    assert gaps >= 1 and value(found, "edge_resets_total", reason="timestamp gap", **s) == gaps
    # and the same from the run's own stats (a metric reading another field fails here too)
    counters = pipeline.stats.streams[0]
    assert (counters.frames, counters.results, counters.misses, counters.dropped, counters.corrupt) == (
        len(seen), len(seen), len(seen), dropped, len(CORRUPT))

    # latency histograms: one sample per processed frame per loop stage, one per result end to end
    for stage in ("capture_wait", "preprocess", "cnn", "gru"):
        assert value(found, "edge_stage_latency_seconds_count", stage=stage, **s) == len(seen)
    assert value(found, "edge_stage_latency_seconds_count", stage="end_to_end", **s) == len(seen)
    assert value(found, "edge_engine_info", backend="cpu", precision="fp32", manifest=manifest.identity()[:16]) == 1
    # no new engines were offered: no swap, no rollback, and the model is the one every result names
    assert value(found, "edge_engine_swaps_total") == 0 and value(found, "edge_engine_rollbacks_total") == 0
    assert value(found, "edge_model_info", model=manifest.model_id()) == 1 and {r.model for r in seen} == {manifest.model_id()}
    fps = value(found, "edge_frames_per_second")
    assert math.isnan(fps) or fps >= 0  # NaN for the first 2 s (documented)
    assert value(found, "edge_frames_per_second_lifetime") == scraped["fps"]
    assert value(found, "edge_last_frame_age_seconds") >= 0 and value(found, "edge_healthy") == 1

    # sinks: the JSON file delivered everything so far; the MQTT sink never connected, nothing acknowledged
    for name in ("edge_sink_dropped_total", "edge_sink_failures_total", "edge_sink_lost_total"):
        assert value(found, name, sink=str(out)) == 0
    assert value(found, "edge_mqtt_connected") == 0 and value(found, "edge_mqtt_published_total") == 0
    assert value(found, "edge_mqtt_dropped_total") == 0 and value(found, "edge_mqtt_pending") >= len(seen)
    # checkpoints: the one written just before the scrape
    assert value(found, "edge_checkpoints_total", result="ok") == 1
    assert value(found, "edge_checkpoints_total", result="failed") == 0
    assert started <= value(found, "edge_checkpoint_last_success_timestamp_seconds") <= time.time()


class HeldCamera(PacedLiveSource):
    """A live camera whose first frame comes only when the test releases it."""

    def __init__(self) -> None:
        super().__init__(fps=100.0)
        self.waiting = threading.Event()
        self.release = threading.Event()

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        if self.produced == 0:
            self.waiting.set()
            self.release.wait(30)
        return super()._read(out)


def test_healthz_is_503_before_the_first_frame_and_200_once_frames_flow(engines_dir):
    manifest = load_manifest(engines_dir)
    source = HeldCamera()
    pipeline = Pipeline(open_engines(manifest, "cpu"), [source], PipelineConfig(drop_policy=DropPolicy.NONE))
    # stall_after 60 s: only "no frame yet" can make it unhealthy here, not a slow machine
    service = Service(pipeline, [], ServiceOptions(metrics_port=0, stall_after=60.0))
    flowing = threading.Event()
    service.on_result = lambda _result: flowing.set()
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        assert source.waiting.wait(30)  # the service is up and the camera has not delivered a frame
        base = f"http://127.0.0.1:{service.metrics_server.port}"
        before = get(base + "/healthz")
        metrics_before = samples(get(base + "/metrics")[1])
    finally:
        source.release.set()
    assert flowing.wait(30)
    after = get(base + "/healthz")  # the run goes on until stopped: the server is still up
    service.stop()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert before[0] == 503, before
    assert value(metrics_before, "edge_healthy") == 0 and value(metrics_before, "edge_last_frame_age_seconds") == -1
    assert after[0] == 200, after


def test_the_metrics_of_preview_record_and_clips_are_served_and_count_what_they_did(engines_dir, tmp_path):
    # given a run of 90 demo frames with the preview watched, a recording in chunks of 30, and a clip on any label
    manifest = load_manifest(engines_dir)
    engines = open_engines(manifest, "cpu")
    pipeline = Pipeline(engines, [open_source("demo")], PipelineConfig(max_frames=90))
    preview = Preview(manifest.labels, pipeline.stats, ["demo:0"], fps=60)
    recorder = Recorder(tmp_path / "rec", manifest.labels, manifest.feature_size, {"h": manifest.hidden_size}, 1,
                        max_bytes=10**8, chunk_frames=30)
    clips = EventClips(tmp_path / "clips", manifest.labels, manifest.labels, ["demo:0"], [30.0], pre=0.2, post=0.2,
                       min_score=0.0, holdoff=60.0)
    port = free_port()
    service = Service(pipeline, [], ServiceOptions(metrics_port=port), observers=[preview, recorder, clips])
    gate = threading.Event()
    original = preview.result

    def held(result):  # the loop waits at its last result until the test has scraped
        original(result)
        if result.frame_index == 89:
            gate.wait(30)

    preview.result = held
    runner = threading.Thread(target=service.run)
    runner.start()
    assert wait_until(lambda: service.metrics_server is not None)
    reader = ReadingClient(port)
    try:
        assert wait_until(lambda: pipeline.stats.total("frames") == 90 and len(chunk_files(tmp_path / "rec")) == 2, timeout=60)
        found = samples(get(f"http://127.0.0.1:{port}/metrics")[1])
        on_disk = sum(p.stat().st_size for p in chunk_files(tmp_path / "rec"))
    finally:
        gate.set()
        runner.join(timeout=30)
        reader.close()
        engines.close()
    names = {name for name, _ in found}
    missing = [n for n in documented_metrics("metric of an option") if n not in names]
    assert documented_metrics("metric of an option") and not missing, missing
    # then the counters are what the run did
    # the loop is held at its last step before the recorder sees it: two chunks are full, the third is written at shutdown
    assert value(found, "edge_record_chunks_total") == 2
    assert value(found, "edge_record_bytes") == on_disk and len(chunk_files(tmp_path / "rec")) == 3
    assert value(found, "edge_record_lost_steps_total") == 0 and value(found, "edge_record_removed_chunks_total") == 0
    assert value(found, "edge_clip_triggers_total") == 1  # the first label enters the set; the hold-off outlasts the run
    assert value(found, "edge_preview_viewers", stream="0") == 1
    assert value(found, "edge_preview_frames_encoded_total") >= 1
    assert value(found, "edge_preview_clients_dropped_total") == 0
    assert len(list((tmp_path / "clips").glob("*.avi"))) == 1 and clips.clips_written == 1
