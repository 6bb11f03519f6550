"""sd_notify against a real unix datagram socket: READY after the first frame, WATCHDOG only while frames flow."""
from __future__ import annotations

import os
import time

import numpy as np
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
    # and the only long silence of the watchdog is the stall, during which STATUS says so
    gaps = np.diff(pings)
    assert gaps.max() > 1.2 and np.sort(gaps)[-2] < 0.8, gaps
    start = pings[int(np.argmax(gaps))]
    stalled = [m for t, m in listener.messages if "stalled" in m]
    assert stalled and all("WATCHDOG=1" not in m for t, m in listener.messages if start < t < start + gaps.max())
    assert listener.messages[-1][1].startswith("STOPPING=1")
