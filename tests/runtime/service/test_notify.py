"""sd_notify against a real unix datagram socket: READY after the first frame, WATCHDOG only while frames flow."""
from __future__ import annotations

import os
import re
import time

import pytest
from helpers import NotifyListener, PacedLiveSource

from runtime import Pipeline, PipelineConfig, load_manifest, open_engines
from runtime.mailbox import DropPolicy
from runtime.service import Service, ServiceOptions
from runtime.service.notify import Notifier


@pytest.fixture()
def listener():
    address = f"@edge-run-test-{os.getpid()}-{time.monotonic_ns()}"
    listening = NotifyListener(address)
    yield listening
    listening.close()


def test_outside_systemd_the_notifier_does_nothing():
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False and notifier.stopping() is False


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_the_watched_pid():
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environment(env).watchdog_interval == 15.0
    assert Notifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 15.0
    assert Notifier.from_environment({**env, "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_messages_reach_the_socket_and_the_watchdog_is_rate_limited(listener):
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"})
    assert notifier.ready("warming up")
    assert notifier.watchdog(now=100.0) and not notifier.watchdog(now=100.5) and notifier.watchdog(now=101.0)
    notifier.stopping()
    assert listener.wait_for("STOPPING=1")
    texts = [m for _, m in listener.messages]
    assert texts == ["READY=1\nSTATUS=warming up", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]


def test_an_unreachable_socket_never_raises(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "nobody-listens"), 0.01)
    assert notifier.ready() is False and notifier.watchdog() is False and notifier.status("x") is False
    assert sum("cannot notify systemd" in r.message for r in caplog.records) == 1


def test_ready_after_the_first_frame_watchdog_while_flowing_and_none_while_stalled(engines_dir, listener):
    # given a live source that stalls for 1.5 s after 30 frames, and systemd asking for a ping every 0.1 s
    manifest = load_manifest(engines_dir)
    source = PacedLiveSource(fps=100.0, pause_at={30: 1.5})
    pipeline = Pipeline(open_engines(manifest, "cpu"), [source],
                        PipelineConfig(max_frames=60, drop_policy=DropPolicy.NONE))
    frames_at_ready = []
    listener.on_message = lambda m: frames_at_ready.append(pipeline.stats.total("frames")) if "READY=1" in m else None
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "100000"})
    # when the service runs it to the end
    Service(pipeline, [], ServiceOptions(stall_after=0.5), notifier).run()
    assert listener.wait_for("STOPPING=1")
    # then READY came once, after a frame had been processed, before any WATCHDOG
    ready = listener.with_field("READY=1")
    assert len(ready) == 1 and frames_at_ready and frames_at_ready[0] >= 1
    pings = [t for t, _ in listener.with_field("WATCHDOG=1")]
    assert len(pings) >= 4 and pings[0] >= ready[0][0]
    # and the watchdog is silent through the stall, during which STATUS says so: by event order, not by
    # timing (a loaded machine may delay any ping): every STATUS=stalled lies inside one ping gap, and
    # that gap covers the 1.5 s stall (the camera slept that long between two frames, so no result, so no ping)
    stalled = [t for t, m in listener.messages if "stalled" in m]
    assert stalled
    before = max(t for t in pings if t < stalled[0])
    after = min(t for t in pings if t > stalled[0])
    assert all(before < t < after for t in stalled)
    assert after - before >= 1.5 * 0.9  # time.sleep(1.5) never returns early; 10% for the two clocks' reads
    assert listener.messages[-1][1].startswith("STOPPING=1")
    # and pings came on both sides of the stall: the loop pinged while frames flowed, before and after
    assert before > ready[0][0] and after < listener.with_field("STOPPING=1")[0][0]


def test_status_says_the_fps_frames_drops_and_late_results_of_the_run(engines_dir, listener):
    # given a live camera faster than the loop (drops) and a budget no result meets (every result late)
    manifest = load_manifest(engines_dir)
    pipeline = Pipeline(open_engines(manifest, "cpu"), [PacedLiveSource(fps=2000.0)],
                        PipelineConfig(max_frames=150, budget=1e-6))
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.address})
    service = Service(pipeline, [], ServiceOptions(), notifier)
    service.heartbeat.status_every = 0.0  # a STATUS= after every result, so the last one is the run's end
    service.run()
    assert listener.wait_for("STOPPING=1")
    statuses = [m.split("STATUS=")[1] for _, m in listener.messages if "STATUS=" in m and "STOPPING=1" not in m]
    last = re.fullmatch(r"([\d.]+) fps, (\d+) frames, (\d+) dropped, (\d+) late, (\d+) reconnects", statuses[-1])
    assert last, statuses[-1]
    stats = pipeline.stats
    # then the last STATUS= before stopping is the run's own: every frame, drop and late result counted
    assert int(last[2]) == stats.total("frames") == stats.total("results")
    assert int(last[3]) == stats.total("dropped") > 0 and int(last[4]) == stats.total("results")
    assert int(last[5]) == 0 and float(last[1]) > 0
    # and READY came with the status after the first processed frame
    ready = re.search(r"STATUS=[\d.]+ fps, (\d+) frames,", listener.with_field("READY=1")[0][1])
    assert ready and int(ready[1]) >= 1
