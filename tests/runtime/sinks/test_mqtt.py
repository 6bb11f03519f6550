"""MQTT output through a real mosquitto on loopback: in order, nothing lost across a broker restart, never blocking."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO, free_port

from runtime.result import Result
from runtime.sinks import FanOut
from runtime.sinks.mqtt import MqttConfig, MqttConfigError, MqttSink

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (.ci/run installs it with apt)")
LABELS = ("a", "b")




class Broker:
    """A mosquitto on 127.0.0.1:`port`, persisting sessions in `folder` so a restart keeps subscriptions."""

    def __init__(self, folder: Path, password_file: Path | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        auth = f"allow_anonymous false\npassword_file {password_file}\n" if password_file else "allow_anonymous true\n"
        self.config = folder / "mosquitto.conf"
        # Started as root, mosquitto switches to its own user, which cannot write pytest's private folders.
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.config.write_text(f"listener {self.port} 127.0.0.1\n{auth}persistence true\npersistence_location {folder}/\n"
                               f"user {user}\nlog_dest none\n")
        self.process = None

    def start(self) -> "Broker":
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert self.process.poll() is None, self.process.stderr.read().decode()
                time.sleep(0.02)
        raise AssertionError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a clean stop writes the persistence file
            self.process.wait(timeout=10)


class Subscriber:
    """A persistent-session QoS 1 subscriber: what an operator's dashboard would receive."""

    def __init__(self, port: int, topic: str, username=None, password=None) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}", clean_session=False)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode()))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def frames(self, topic):
        return [json.loads(p)["frame"] for t, p in self.messages if t == topic]

    def wait_for(self, topic, count, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(set(self.frames(topic))) < count:
            time.sleep(0.02)
        return self.frames(topic)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


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


def test_the_url_carries_no_credentials_and_they_come_from_the_environment():
    with pytest.raises(MqttConfigError, match="EDGE_RUN_MQTT_USERNAME"):
        MqttConfig.from_url("mqtt://user:secret@broker:1883", "p")
    config = MqttConfig.from_url("mqtts://broker", "site/box-1", environ={"EDGE_RUN_MQTT_USERNAME": "u", "EDGE_RUN_MQTT_PASSWORD": "pw"})
    assert (config.host, config.port, config.tls, config.prefix, config.username) == ("broker", 8883, True, "site/box-1", "u")
    assert "pw" not in repr(config)
    with pytest.raises(MqttConfigError, match="wildcard"):
        MqttConfig.from_url("mqtt://broker", "site/#")


@needs_broker
def test_results_arrive_in_order_with_nothing_lost_across_a_broker_restart(tmp_path):
    # given a broker, a subscriber and the sink behind its worker thread, as the service runs it
    broker = Broker(tmp_path).start()
    subscriber = Subscriber(broker.port, "test/box/#")
    config = MqttConfig(host="127.0.0.1", port=broker.port, prefix="test/box", queue=1000, reconnect_min=0.05, reconnect_max=0.2,
                        client_id="edge-run-under-test")
    sink = MqttSink.connect(config, LABELS)
    fanout = FanOut([sink])
    try:
        # when 300 results are published at ~200/s and the broker restarts after the first 100
        offer_times = []
        for frame in range(300):
            if frame == 100:
                broker.stop()
                stopped = time.monotonic()
            if frame == 200:
                broker.start()
                print(f"broker down {time.monotonic() - stopped:.2f} s")
            t0 = time.perf_counter()
            fanout(result(frame))
            offer_times.append(time.perf_counter() - t0)
            time.sleep(0.005)
        assert fanout.close(timeout=15)
        received = subscriber.wait_for("test/box/0", 300)
    finally:
        subscriber.close()
        broker.stop()
    # then every result arrived, in order (duplicates from QoS 1 resends aside), none dropped, the loop never waited
    assert first_occurrences(received) == list(range(300))
    assert sink.dropped == 0 and fanout.dropped == 0
    assert max(offer_times) < 0.05
    print(f"MQTT across a broker restart: {len(set(received))}/300 delivered, {len(received) - len(set(received))} duplicates")


@needs_broker
def test_an_absent_broker_never_blocks_and_the_overflow_is_counted():
    config = MqttConfig(host="127.0.0.1", port=free_port(), prefix="test/none", queue=50, reconnect_min=0.05, reconnect_max=0.1)
    sink = MqttSink.connect(config, LABELS)
    started = time.perf_counter()
    for frame in range(500):
        sink(result(frame))
    took = time.perf_counter() - started
    closed = time.perf_counter()
    assert sink.close(timeout=0.2) is False
    assert took < 1.0 and time.perf_counter() - closed < 3.0
    assert sink.dropped == 450 and sink.pending == 50 and not sink.connected


@needs_broker
def test_edge_run_publishes_with_credentials_from_the_environment(engines_dir, tmp_path):
    # given a broker that requires a password, and edge-run given the credentials only through its environment
    passwords = tmp_path / "passwd"
    subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", "-c", str(passwords), "edge", "s3cret!"],
                   check=True, capture_output=True)
    broker = Broker(tmp_path, password_file=passwords).start()
    subscriber = Subscriber(broker.port, "site/box/#", "edge", "s3cret!")
    env = {**os.environ, "EDGE_RUN_MQTT_USERNAME": "edge", "EDGE_RUN_MQTT_PASSWORD": "s3cret!"}
    try:
        done = subprocess.run([sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--source", "demo",
                               "--max-frames", "10", "--backend", "cpu", "--quiet", "--mqtt", f"mqtt://127.0.0.1:{broker.port}",
                               "--mqtt-prefix", "site/box", "--log-level", "INFO"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        frames = subscriber.wait_for("site/box/0", 10)
        status = [p for t, p in subscriber.messages if t == "site/box/status"]
    finally:
        subscriber.close()
        broker.stop()
    # then each result arrived on the stream's topic, in order, and the password appears nowhere in the output
    assert frames == list(range(10))
    assert status and status[-1] == "offline"  # said goodbye at shutdown
    assert "s3cret" not in done.stderr + done.stdout
    assert "connection lost" not in done.stderr  # its own disconnect at the end is not an outage


@needs_broker
def test_sigterm_with_a_broker_that_never_acknowledges_exits_1_and_names_the_loss(engines_dir, tmp_path):
    # given edge-run publishing to a broker that then freezes (SIGSTOP: the connection stays up, nothing is acknowledged)
    broker = Broker(tmp_path).start()
    subscriber = Subscriber(broker.port, "frozen/box/#")
    env = {key: value for key, value in os.environ.items() if key != "STATE_DIRECTORY"}
    process = subprocess.Popen([sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--source", "demo",
                                "--max-frames", "100000", "--backend", "cpu", "--quiet", "--mqtt", f"mqtt://127.0.0.1:{broker.port}",
                                "--mqtt-prefix", "frozen/box", "--stop-timeout", "4"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert len(subscriber.wait_for("frozen/box/0", 20, timeout=60)) >= 20, "edge-run published nothing"
        subscriber.close()
        broker.process.send_signal(signal.SIGSTOP)
        time.sleep(1.0)  # results pile up unacknowledged
        # when systemd stops edge-run
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
        broker.process.send_signal(signal.SIGCONT)
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
