"""MQTT output through a real mosquitto on loopback: in order, nothing lost across a broker restart, never blocking."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO, Broker, Message, Subscriber, free_port, require_mosquitto, retained, wait_until

from runtime.result import Result
from runtime.sinks import FanOut
from runtime.sinks.mqtt import MqttConfig, MqttConfigError, MqttSink

LABELS = ("a", "b")


@pytest.fixture()
def mosquitto() -> str:
    return require_mosquitto()


class SlowLog(logging.Handler):
    """A log destination that takes its time, as journald or a full stderr pipe under load do. The sink logs from paho's
    network thread when the broker comes back, between its on_connect and paho's resends of the unacknowledged messages:
    a slow log there gives a new result every chance to overtake those resends unless the sink holds new ones back."""

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.05)


def offer_all(fanout: FanOut, frames, streams: int = 2) -> bool:
    """Offer each frame's results of `streams` streams from a thread; True when every offer returned within 30 s (200
    offers need ~20 ms: an offer that waits on the broker would wait for as long as it is frozen or down, here for ever)."""
    done = threading.Event()

    def offer() -> None:
        for frame in frames:
            for stream in range(streams):
                fanout(result(frame, stream))
        done.set()

    threading.Thread(target=offer, daemon=True).start()
    return done.wait(30)


def result(frame: int, stream: int = 0) -> Result:
    return Result(stream=stream, frame_index=frame, capture_time=time.time(), mode="step", label="a", score=0.9,
                  probabilities=(0.9, 0.1), latency=0.01, dropped=0, source="demo:0")


def first_occurrences(frames):
    seen, ordered = set(), []
    for frame in frames:
        if frame not in seen:  # QoS 1 is at-least-once: a resend after a reconnect may repeat one
            seen.add(frame)
            ordered.append(frame)
    return ordered


def edge_run(engines_dir: Path, port: int, prefix: str, *extra: str, env=None) -> subprocess.Popen:
    """edge-run on the demo as the service runs it (a process of its own, so it can be killed)."""
    env = {key: value for key, value in (env or os.environ).items() if key != "STATE_DIRECTORY"}
    return subprocess.Popen([sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--source", "demo", "--backend", "cpu",
                             "--quiet", "--mqtt", f"mqtt://127.0.0.1:{port}", "--mqtt-prefix", prefix, *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_url_carries_no_credentials_and_they_come_from_the_environment():
    with pytest.raises(MqttConfigError, match="EDGE_RUN_MQTT_USERNAME"):
        MqttConfig.from_url("mqtt://user:secret@broker:1883", "p")
    config = MqttConfig.from_url("mqtts://broker", "site/box-1", environ={"EDGE_RUN_MQTT_USERNAME": "u", "EDGE_RUN_MQTT_PASSWORD": "pw"})
    assert (config.host, config.port, config.tls, config.prefix, config.username) == ("broker", 8883, True, "site/box-1", "u")
    assert "pw" not in repr(config)
    with pytest.raises(MqttConfigError, match="wildcard"):
        MqttConfig.from_url("mqtt://broker", "site/#")


def test_results_arrive_at_qos_1_in_order_with_nothing_lost_across_a_frozen_then_killed_broker(mosquitto, tmp_path):
    # given a broker, a subscriber and the sink behind its worker thread, as the service runs it, with two streams
    broker = Broker(mosquitto, tmp_path).start()
    subscriber = Subscriber(broker.port, "test/box/#")
    config = MqttConfig(host="127.0.0.1", port=broker.port, prefix="test/box", queue=1000, reconnect_min=0.05, reconnect_max=0.2,
                        client_id="edge-run-under-test")
    slow_log = SlowLog()
    logging.getLogger("edge_run.mqtt").addHandler(slow_log)
    sink = MqttSink.connect(config, LABELS)
    fanout = FanOut([sink])
    topics = ("test/box/0", "test/box/1")
    try:
        assert offer_all(fanout, range(100))
        assert wait_until(lambda: all(len(set(subscriber.frames(topic))) == 100 for topic in topics), 15)
        # each is delivered at QoS 1 (the subscriber asked for 1, so a QoS 0 publish would arrive as 0)
        assert {m.qos for topic in topics for m in subscriber.on(topic)} == {1}
        assert wait_until(lambda: sink.pending == 0, 15)  # every acknowledgement is in, so what follows is all in flight
        # when the broker freezes (SIGSTOP) while results keep coming, so some are in paho's hands, sent but never
        # acknowledged; then it is killed (their bytes die unread in its socket) and restarted on the same port
        broker.freeze()
        assert offer_all(fanout, range(100, 105)), "an offer waited on the frozen broker"
        # fewer than the sink's window (20) are in flight, so after the reconnect there is room to hand new results at
        # once: only the sink's resync guard keeps them behind paho's resends of these ten
        assert wait_until(lambda: sink.handed - sink.acknowledged == 10, 10), (sink.handed, sink.acknowledged)
        broker.kill()
        assert wait_until(lambda: not sink.connected, 10)
        assert offer_all(fanout, range(105, 200)), "an offer waited on the dead broker"
        in_flight = sink.handed - sink.acknowledged
        broker.start()
        for frame in range(200, 300):  # paced (~200 frames/s) so the reconnect happens while results still arrive
            fanout(result(frame, 0))
            fanout(result(frame, 1))
            time.sleep(0.005)
        assert fanout.close(timeout=15)
        received = {topic: subscriber.wait_for(topic, 300) for topic in topics}
    finally:
        logging.getLogger("edge_run.mqtt").removeHandler(slow_log)
        subscriber.close()
        broker.stop()
    # then every result of each stream arrived once at least and in order (QoS 1 may repeat one after a reconnect)
    assert in_flight == 10
    for topic in topics:
        assert first_occurrences(received[topic]) == list(range(300)), topic
    assert sink.dropped == 0 and fanout.dropped == 0
    assert {m.qos for topic in topics for m in subscriber.on(topic)} == {1}
    # and the status went online again after the restart
    assert [m.payload for m in subscriber.on("test/box/status")].count("online") >= 2
    duplicates = sum(len(frames) - len(set(frames)) for frames in received.values())
    print(f"MQTT across a frozen then killed broker: 600/600 delivered in order, {duplicates} duplicates, "
          "10 unacknowledged across the restart")


def test_an_absent_broker_never_blocks_and_the_overflow_is_counted(mosquitto):
    # given the sink itself (no FanOut worker in front to absorb a wait) and no broker at its address
    config = MqttConfig(host="127.0.0.1", port=free_port(), prefix="test/none", queue=50, reconnect_min=0.05, reconnect_max=0.1)
    sink = MqttSink.connect(config, LABELS)
    # when 500 results are offered, from a thread so that an offer waiting on the broker fails the test instead of hanging it
    took: list[float] = []

    def offer() -> None:
        started = time.perf_counter()
        for frame in range(500):
            sink(result(frame))
        took.append(time.perf_counter() - started)

    offering = threading.Thread(target=offer, daemon=True)
    offering.start()
    offering.join(10)
    closed = time.perf_counter()
    assert sink.close(timeout=0.2) is False
    # then no offer waited: 500 offers take ~10 ms (a JSON dump and an append each); 1 s is far above what a loaded 2-core
    # machine needs and far below the connect attempts a waiting offer would sit through; close gives up after its 0.2 s
    assert took and took[0] < 1.0, "offering to the sink waited on the absent broker"
    assert time.perf_counter() - closed < 3.0
    # and what did not fit the bounded queue is counted as dropped, the rest still pending
    assert sink.dropped == 450 and sink.pending == 50 and not sink.connected


def test_edge_run_publishes_with_credentials_from_the_environment(mosquitto, engines_dir, tmp_path):
    # given a broker that requires a password, and edge-run given the credentials only through its environment
    passwords = tmp_path / "passwd"
    subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", "-c", str(passwords), "edge", "s3cret!"],
                   check=True, capture_output=True)
    broker = Broker(mosquitto, tmp_path, password_file=passwords).start()
    subscriber = Subscriber(broker.port, "site/box/#", "edge", "s3cret!")
    env = {**os.environ, "EDGE_RUN_MQTT_USERNAME": "edge", "EDGE_RUN_MQTT_PASSWORD": "s3cret!"}
    try:
        done = subprocess.run([sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--source", "demo",
                               "--max-frames", "10", "--backend", "cpu", "--quiet", "--mqtt", f"mqtt://127.0.0.1:{broker.port}",
                               "--mqtt-prefix", "site/box", "--log-level", "INFO"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        frames = subscriber.wait_for("site/box/0", 10)
        status = [m.payload for m in subscriber.on("site/box/status")]
    finally:
        subscriber.close()
        broker.stop()
    # then each result arrived on the stream's topic, in order, and the password appears nowhere in the output
    assert frames == list(range(10))
    assert {m.qos for m in subscriber.on("site/box/0")} == {1}
    assert status and status[-1] == "offline"  # said goodbye at shutdown
    assert "s3cret" not in done.stderr + done.stdout
    assert "connection lost" not in done.stderr  # its own disconnect at the end is not an outage


def test_status_is_retained_online_and_the_last_will_says_offline_when_edge_run_is_killed(mosquitto, engines_dir, tmp_path):
    # given edge-run publishing the demo to a broker, watched by a dashboard
    broker = Broker(mosquitto, tmp_path).start()
    subscriber = Subscriber(broker.port, "will/box/#")
    process = edge_run(engines_dir, broker.port, "will/box", "--max-frames", "100000")
    try:
        assert len(subscriber.wait_for("will/box/0", 20, timeout=60)) >= 20, "edge-run published nothing"
        # then a dashboard connecting now is handed the retained "online"
        online = retained(broker.port, "will/box/status", "online")
        # when edge-run dies without a goodbye (SIGKILL: no DISCONNECT, the broker sees the socket close)
        process.kill()
        process.wait(timeout=30)
        # then the broker publishes its last will, and a dashboard connecting afterwards is handed "offline"
        offline = retained(broker.port, "will/box/status", "offline")
        assert wait_until(lambda: [m.payload for m in subscriber.on("will/box/status")][-1:] == ["offline"], 10)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
        subscriber.close()
        broker.stop()
    assert online == Message("will/box/status", "online", 1, True)
    assert offline == Message("will/box/status", "offline", 1, True)
    # and every result reached the subscriber at QoS 1 (it subscribed at 1, so a QoS 0 publish would arrive as 0)
    results = subscriber.on("will/box/0")
    assert len(results) >= 20 and {m.qos for m in results} == {1}


def test_sigterm_with_a_broker_that_never_acknowledges_exits_1_and_names_the_loss(mosquitto, engines_dir, tmp_path):
    # given edge-run publishing to a broker that then freezes (SIGSTOP: the connection stays up, nothing is acknowledged)
    broker = Broker(mosquitto, tmp_path).start()
    subscriber = Subscriber(broker.port, "frozen/box/#")
    env = {key: value for key, value in os.environ.items() if key != "STATE_DIRECTORY"}
    process = subprocess.Popen([sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--source", "demo",
                                "--max-frames", "100000", "--backend", "cpu", "--quiet", "--mqtt", f"mqtt://127.0.0.1:{broker.port}",
                                "--mqtt-prefix", "frozen/box", "--stop-timeout", "4"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert len(subscriber.wait_for("frozen/box/0", 20, timeout=60)) >= 20, "edge-run published nothing"
        subscriber.close()
        broker.freeze()
        time.sleep(1.0)  # results pile up unacknowledged
        # when systemd stops edge-run
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
        broker.stop()
    # then it exits 1 from the end of its flush (not the overrun timer: the summary is there) and names the count
    assert process.returncode == 1, stderr
    where = f"mqtt://127.0.0.1:{broker.port}"
    lost = [line for line in stderr.splitlines() if line.startswith("edge-run: output lost: ") and where in line]
    assert len(lost) == 1, stderr
    count = int(lost[0].split()[3])
    assert count > 0 and f"({count} not acknowledged by the broker by the stop timeout)" in lost[0]
    assert stderr.splitlines()[-1] == f"edge-run: error: {count} result(s) lost: {where}: {count} not acknowledged by the " \
                                      "broker by the stop timeout"
    assert "Traceback" not in stderr and "connection lost" not in stderr
    print(f"frozen broker: SIGTERM to exit 1 in {took:.1f} s (stop timeout 4 s), {count} results unacknowledged")
