"""The recent frame rate follows stalls and recoveries that the lifetime average hides."""
from __future__ import annotations

import math
import threading
import time

import pytest
from helpers import NotifyListener, PacedLiveSource, get, wait_until
from prometheus_client.parser import text_string_to_metric_families

from runtime import Pipeline, PipelineConfig, load_manifest, open_engines
from runtime.mailbox import DropPolicy
from runtime.service import Service, ServiceOptions
from runtime.service.metrics import Health
from runtime.service.notify import Heartbeat, Notifier
from runtime.stats import RecentRate, RunStats


def test_the_rate_is_unknown_until_two_samples_then_spans_the_window():
    rate = RecentRate(window=10.0)
    assert rate.rate() is None
    rate.sample(0, now=100.0)
    assert rate.rate() is None
    for second in range(1, 31):  # 15 fps for 30 s
        rate.sample(15 * second, now=100.0 + second)
    assert rate.rate() == pytest.approx(15.0)
    assert len(rate._samples) == 11  # the window's ten seconds and the sample at its start: memory stays bounded


def test_a_stall_drives_the_rate_to_zero_and_a_recovery_brings_it_back_within_one_window():
    rate = RecentRate(window=10.0)
    stats = RunStats(1)
    total, now = 0, 0.0
    for _ in range(60):  # a minute at 15 fps
        now += 1.0
        total += 15
        rate.sample(total, now)
    assert rate.rate() == pytest.approx(15.0)
    readings = []
    for _ in range(10):  # the camera stalls: the total stands still
        now += 1.0
        rate.sample(total, now)
        readings.append(rate.rate())
    assert readings == sorted(readings, reverse=True) and len(set(readings)) == 10  # falls every second
    assert readings[-1] == 0.0
    for _ in range(10):  # and comes back at 15 fps after an outage that would drag a lifetime average to 8
        now += 1.0
        total += 15
        rate.sample(total, now)
    assert rate.rate() == pytest.approx(15.0)
    # which is what /healthz and STATUS= say, beside the rate since the first frame
    stats.last_frame_time = time.perf_counter()
    stats.started, stats.streams[0].frames = stats.last_frame_time - 80.0, 641  # 8 fps on average, after the outage
    ok, text = Health(stats, stall_after=1e9, rate=rate).check()
    assert ok and text == "ok: 15.0 fps over the last 10 s, 8.0 fps since the first frame"
    assert Heartbeat(Notifier(None), stats, rate=rate).describe().startswith("15.0 fps, 641 frames")
    assert math.isnan(Health(stats).recent_fps()) and "measuring" in Health(stats).check()[1]


def gauges(base):
    found = {family.name: family for family in text_string_to_metric_families(get(base + "/metrics")[1])}
    return found["edge_frames_per_second"].samples[0].value, found["edge_frames_per_second_lifetime"].samples[0].value


def test_a_served_run_that_stalls_shows_a_falling_recent_rate_while_the_lifetime_one_stays(engines_dir):
    # given a service with metrics and a 50 fps camera that stalls for 8 s after 150 frames (3 s)
    manifest = load_manifest(engines_dir)
    source = PacedLiveSource(fps=50.0, pause_at={150: 8.0})
    pipeline = Pipeline(open_engines(manifest, "cpu"), [source], PipelineConfig(max_frames=170, drop_policy=DropPolicy.NONE))
    service = Service(pipeline, [], ServiceOptions(metrics_port=0, stall_after=0.5))
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: service.metrics_server is not None, timeout=30)
        base = f"http://127.0.0.1:{service.metrics_server.port}"
        # when the camera's stall has begun and been noticed (on a loaded machine a slow frame
        # before it can turn /healthz to 503 for a moment: that is not the stall compared here)
        assert wait_until(lambda: pipeline.stats.total("frames") == 150 and get(base + "/healthz")[0] == 503, timeout=30)
        recent, lifetime = gauges(base)
        # then within a few of the monitor's one-second samples the recent rate is lower while the lifetime
        # one has not moved (5 s: five samples, and at least 2 s left of the 8 s stall)
        assert wait_until(lambda: gauges(base)[0] < recent, timeout=5)
        later, lifetime_later = gauges(base)
        assert later < recent < lifetime and lifetime_later == lifetime > 0
        assert pipeline.stats.total("frames") == 150  # still in the stall: the comparison was of one stall
    finally:
        runner.join(timeout=60)
    assert not runner.is_alive() and pipeline.stats.total("frames") == 170


def test_status_shows_the_recent_rate(engines_dir):
    address = f"@edge-run-rate-{time.monotonic_ns()}"
    listener = NotifyListener(address)
    try:
        manifest = load_manifest(engines_dir)
        pipeline = Pipeline(open_engines(manifest, "cpu"), [PacedLiveSource(fps=50.0)],
                            PipelineConfig(max_frames=150, drop_policy=DropPolicy.NONE))
        service = Service(pipeline, [], ServiceOptions(), Notifier(address))
        service.heartbeat.status_every = 0.5
        service.run()
        assert listener.wait_for("STOPPING=1")
        statuses = [m for _, m in listener.messages if m.startswith("STATUS=") and " fps, " in m]
        assert statuses and service.heartbeat.rate is service.recent_rate and service.recent_rate.rate() is not None
        # the last STATUS= before the end reported the tracker's figure, near the camera's 50 fps
        fps = float(statuses[-1].split("=", 1)[1].split(" fps")[0])
        assert 10.0 < fps < 100.0
    finally:
        listener.close()
