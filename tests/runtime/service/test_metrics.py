"""Prometheus metrics and /healthz, scraped over HTTP on loopback while a run flows, stalls and resumes."""
from __future__ import annotations

import threading

from helpers import PacedLiveSource, get, wait_until
from prometheus_client.parser import text_string_to_metric_families

from runtime import Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.mailbox import DropPolicy
from runtime.service import Service, ServiceOptions
from runtime.service.metrics import build, engine_info


def families(text):
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_value(family, suffix="", **labels):
    for sample in family.samples:
        if sample.name == family.name + suffix and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    raise KeyError((family.name + suffix, labels))


def test_health_follows_the_frames_and_metrics_are_served_while_running(engines_dir):
    # given a service with metrics on a free loopback port and a camera that stalls for 1.5 s after 40 frames
    manifest = load_manifest(engines_dir)
    source = PacedLiveSource(fps=100.0, pause_at={40: 1.5})
    pipeline = Pipeline(open_engines(manifest, "cpu"), [source], PipelineConfig(max_frames=140, drop_policy=DropPolicy.NONE))
    service = Service(pipeline, [], ServiceOptions(metrics_port=0, stall_after=0.4), identity=manifest.identity(),
                      engine_info=engine_info("cpu", "fp32", manifest.identity()))
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    assert wait_until(lambda: service.metrics_server is not None)
    base = f"http://127.0.0.1:{service.metrics_server.port}"
    # when frames flow, /healthz is 200 and /metrics shows them
    assert wait_until(lambda: get(base + "/healthz")[0] == 200)
    status, text = get(base + "/metrics")
    assert status == 200 and sample_value(families(text)["edge_frames"], "_total", stream="0") > 0
    # when the camera stalls, /healthz turns 503 and says so
    assert wait_until(lambda: get(base + "/healthz")[0] == 503, timeout=5)
    assert "stalled" in get(base + "/healthz")[1]
    # and when frames come back it is 200 again
    assert wait_until(lambda: get(base + "/healthz")[0] == 200, timeout=5)
    # and nothing but the two paths is served
    for path in ("/", "/config", "/metrics/x", "/healthz/../etc/passwd"):
        assert get(base + path)[0] == 404
    runner.join(timeout=30)
    assert service.metrics_server.host == "127.0.0.1"


def test_metrics_match_the_run_counters_and_name_no_source(engines_dir):
    # given a finished run of 30 frames
    manifest = load_manifest(engines_dir)
    pipeline = Pipeline(open_engines(manifest, "cpu"), [open_source("demo")], PipelineConfig(max_frames=30))
    results = list(pipeline)
    # when its metrics are scraped
    server, _ = build(pipeline, engine_info("cpu", "fp32", manifest.identity()))
    try:
        status, text = get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.close()
    # then the counters are the run's, in base units with the edge_ prefix
    assert status == 200
    found = families(text)
    assert sample_value(found["edge_frames"], "_total", stream="0") == 30
    assert sample_value(found["edge_results"], "_total", stream="0") == len(results) == 30
    counters = pipeline.stats.streams[0]
    for name, field in (("edge_dropped_frames", "dropped"), ("edge_deadline_misses", "misses"), ("edge_reconnects", "reconnects"),
                        ("edge_nonfinite_outputs", "nonfinite"), ("edge_corrupt_frames", "corrupt")):
        assert found[name].type == "counter" and sample_value(found[name], "_total", stream="0") == getattr(counters, field)
    # and each loop stage has a latency histogram in seconds whose count is the frames it saw
    latency = found["edge_stage_latency_seconds"]
    assert latency.type == "histogram"
    for stage in ("capture_wait", "preprocess", "cnn", "gru"):
        assert sample_value(latency, "_count", stage=stage, stream="0") == 30
        assert sample_value(latency, "_bucket", stage=stage, stream="0", le="+Inf") == 30
    assert 0 < sample_value(latency, "_sum", stage="cnn", stream="0") < 30 * 1.0  # seconds, not milliseconds
    info = found["edge_engine_info"]
    assert sample_value(info, backend="cpu", precision="fp32", manifest=manifest.identity()[:16]) == 1
    # and no source name, path or setting leaks
    assert "demo:0" not in text and str(engines_dir) not in text


def test_end_to_end_latency_is_per_stream_from_the_results(engines_dir):
    manifest = load_manifest(engines_dir)
    pipeline = Pipeline(open_engines(manifest, "cpu", num_streams=2), [open_source("demo:1"), open_source("demo:2", stream=1)],
                        PipelineConfig(max_frames=10))
    service = Service(pipeline, [], ServiceOptions(metrics_port=0))
    scraped = {}

    def scrape(result):
        if pipeline.stats.total("results") == 20:  # the last result of both streams has been handed to the sinks
            service.fanout.flush(5)
            scraped["text"] = get(f"http://127.0.0.1:{service.metrics_server.port}/metrics")[1]

    service.on_result = scrape
    service.run()
    latency = families(scraped["text"])["edge_stage_latency_seconds"]
    assert sample_value(latency, "_count", stage="end_to_end", stream="0") == 10
    assert sample_value(latency, "_count", stage="end_to_end", stream="1") == 10
    assert sample_value(latency, "_count", stage="cnn", stream="all") == 20
