"""Results to an MQTT broker (paho-mqtt 2.x): one topic per stream, QoS 1, bounded queue.

Topic `{prefix}/{stream}` carries each result as the same JSON object the JSON-lines
sink writes; `{prefix}/status` holds a retained `online`/`offline` (the broker publishes
`offline` as our last will if the connection dies).

A slow or absent broker never stalls the loop: the sink runs behind its `SinkWorker`
thread and only appends to a bounded queue (`queue` messages); a publisher thread feeds
paho from it. While the broker is away, results wait in that queue and are sent in order
once paho has reconnected (exponential backoff from `reconnect_min` to `reconnect_max`
seconds); beyond the bound they are dropped and counted, never waited on.

Credentials and TLS files come from the environment (the service's environment file),
never from the command line: a URL with a user or password in it is refused.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from runtime.errors import UsageError
from runtime.result import Result

log = logging.getLogger("edge_run.mqtt")

DEFAULT_QUEUE = 10000  # ~5 minutes of results at 30 fps; a few MB at most
ENV_USERNAME = "EDGE_RUN_MQTT_USERNAME"
ENV_PASSWORD = "EDGE_RUN_MQTT_PASSWORD"
ENV_CA_FILE = "EDGE_RUN_MQTT_CA_FILE"
ENV_CERT_FILE = "EDGE_RUN_MQTT_CERT_FILE"
ENV_KEY_FILE = "EDGE_RUN_MQTT_KEY_FILE"


class MqttConfigError(UsageError):
    """An --mqtt setting that cannot work; the message says what to change."""


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    prefix: str
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = None
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    queue: int = DEFAULT_QUEUE
    keepalive: int = 30
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    client_id: str = ""

    def __repr__(self) -> str:  # never print the password
        return f"MqttConfig({self.host}:{self.port}, prefix={self.prefix!r}, tls={self.tls}, user={self.username!r})"

    @classmethod
    def from_url(cls, url: str, prefix: Optional[str] = None, queue: int = DEFAULT_QUEUE,
                 environ: Mapping[str, str] = os.environ) -> "MqttConfig":
        """`mqtt://host[:port]` or `mqtts://host[:port]` (TLS); credentials from `environ`."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise MqttConfigError(f"--mqtt takes mqtt://host[:port] or mqtts://host[:port], got scheme {parts.scheme!r}")
        if parts.username is not None or parts.password is not None:
            raise MqttConfigError(f"--mqtt must not carry credentials (command lines are visible to every user): set "
                                  f"{ENV_USERNAME} and {ENV_PASSWORD} in the environment file instead")
        if not parts.hostname:
            raise MqttConfigError(f"--mqtt {url!r} names no broker host")
        if parts.path not in ("", "/"):
            raise MqttConfigError("--mqtt takes no path; set the topic prefix with --mqtt-prefix")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise MqttConfigError(f"--mqtt {url!r}: {exc}") from None
        prefix = (prefix or f"edge-run/{socket.gethostname()}").strip("/")
        if not prefix or any(ch in prefix for ch in "#+\0"):
            raise MqttConfigError(f"MQTT topic prefix {prefix!r} must be non-empty and hold no wildcard (# or +)")
        if queue < 1:
            raise MqttConfigError("--mqtt-queue must be at least 1")
        username = environ.get(ENV_USERNAME) or None
        password = environ.get(ENV_PASSWORD) or None
        if password and not username:
            raise MqttConfigError(f"{ENV_PASSWORD} is set but {ENV_USERNAME} is not")
        files = {name: environ.get(var) or None for name, var in
                 (("ca_file", ENV_CA_FILE), ("cert_file", ENV_CERT_FILE), ("key_file", ENV_KEY_FILE))}
        for name, path in files.items():
            if path and not os.path.isfile(path):
                raise MqttConfigError(f"MQTT TLS {name.replace('_', ' ')} {path} does not exist")
        if any(files.values()) and not tls:
            raise MqttConfigError("TLS files are set for MQTT but the URL is mqtt://; use mqtts://")
        return cls(host=parts.hostname, port=port, prefix=prefix, tls=tls, username=username, password=password,
                   queue=queue, client_id=f"edge-run-{socket.gethostname()}-{os.getpid()}", **files)


class MqttSink:
    """A sink publishing each result at QoS 1 on `{prefix}/{stream}`, in order, never blocking.

    Results wait in a bounded queue of our own (`queue` messages; beyond it they are
    dropped and counted). One publisher thread hands them to paho at most `window` at a
    time, and only while connected. paho keeps what it was handed until the broker
    acknowledges it and resends it after a reconnect, but a message published just as the
    connection comes back would overtake those resends; so after a reconnect nothing new is
    handed over until paho has had every older message acknowledged. That is what keeps
    the order across a broker restart.

    Takes a paho client (its network loop running or about to); `connect` makes one from
    an `MqttConfig`.
    """

    WINDOW = 20  # messages in paho's hands at once (paho's default in-flight limit)

    def __init__(self, client, prefix: str, labels: tuple[str, ...], queue: int = DEFAULT_QUEUE, qos: int = 1,
                 name: str = "mqtt") -> None:
        self.client = client
        self.name = name  # how the summary and edge_sink_lost_total{sink} call it
        self.prefix = prefix
        self.labels = labels
        self.bound = queue
        self.qos = qos
        self.handed = 0  # messages given to paho
        self.acknowledged = 0  # messages the broker acknowledged
        self.dropped = 0  # results turned away by the full queue
        self.unacknowledged = 0  # messages the broker had not acknowledged when `close` gave up on it
        self.connected = False
        self._waiting: deque[tuple[str, str, bool]] = deque()  # (topic, payload, retain), oldest first
        self._topics: dict[int, str] = {}
        # One condition for everything: paho's callbacks take it while holding paho's own
        # lock, so it is never held while calling into paho (the publisher releases it first).
        self._cond = threading.Condition()
        self._resync = False  # reconnected: wait for paho's resends before handing more
        self._closing = False
        self._down_since: Optional[float] = None
        self._dropping = False
        client.on_publish = self._on_publish
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._publisher = threading.Thread(target=self._publish_loop, name="mqtt-publisher", daemon=True)
        self._publisher.start()

    @classmethod
    def connect(cls, config: MqttConfig, labels: tuple[str, ...]) -> "MqttSink":
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=mqtt.MQTTv311)
        if config.username:
            client.username_pw_set(config.username, config.password)
        if config.tls:
            client.tls_set(ca_certs=config.ca_file, certfile=config.cert_file, keyfile=config.key_file)
        client.max_inflight_messages_set(cls.WINDOW)
        client.reconnect_delay_set(config.reconnect_min, config.reconnect_max)
        client.will_set(f"{config.prefix}/status", "offline", qos=1, retain=True)
        sink = cls(client, config.prefix, labels, config.queue, name=f"mqtt://{config.host}:{config.port}")
        # Asynchronous: an absent broker at start is retried by paho's network thread, not fatal.
        client.connect_async(config.host, config.port, keepalive=config.keepalive)
        client.loop_start()
        log.info("MQTT: publishing to %s:%d under %s/<stream>", config.host, config.port, config.prefix)
        return sink

    # The sink ------------------------------------------------------------------------------------
    def __call__(self, result: Result) -> None:
        topic = self._topics.get(result.stream)
        if topic is None:
            topic = self._topics[result.stream] = f"{self.prefix}/{result.stream}"
        payload = json.dumps(result.to_json(self.labels), separators=(",", ":"))
        with self._cond:
            if len(self._waiting) >= self.bound:
                self.dropped += 1
                first, self._dropping = not self._dropping, True
            else:
                self._waiting.append((topic, payload, False))
                self._cond.notify_all()
                first = False
                if self._dropping:
                    self._dropping = False
                    log.warning("MQTT queue accepting results again (%d dropped so far)", self.dropped)
        if first:
            log.warning("MQTT queue full (%d; broker away or too slow): dropping results until it drains", self.bound)

    def metrics(self) -> Iterable[Metric]:
        """Connection, acknowledged, dropped and pending messages, for /metrics."""
        return [
            GaugeMetricFamily("edge_mqtt_connected", "1 while connected to the MQTT broker.", value=float(self.connected)),
            CounterMetricFamily("edge_mqtt_published", "Messages (results and status) the broker acknowledged (QoS 1).",
                                value=self.acknowledged),
            CounterMetricFamily("edge_mqtt_dropped", "Results dropped because the MQTT outbound queue was full.", value=self.dropped),
            GaugeMetricFamily("edge_mqtt_pending", "Messages queued or in flight, not yet acknowledged by the broker.",
                              value=self.pending),
        ]

    @property
    def lost(self) -> int:
        """Results that will never reach the broker: dropped on the full queue, or unacknowledged at `close`."""
        return self.dropped + self.unacknowledged

    @property
    def lost_why(self) -> str:
        parts = [f"{self.dropped} dropped on the full MQTT queue" if self.dropped else "",
                 f"{self.unacknowledged} not acknowledged by the broker by the stop timeout" if self.unacknowledged else ""]
        return ", ".join(part for part in parts if part)

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged: waiting here or in paho's hands."""
        with self._cond:
            return len(self._waiting) + self.handed - self.acknowledged

    def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged everything queued so far; False if `timeout` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._waiting and self.acknowledged >= self.handed, timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Wait (up to `timeout`) for the broker to acknowledge what is queued, then disconnect.

        False when the broker had not acknowledged everything by then; `unacknowledged` counts it."""
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout)
        if not flushed:
            self.unacknowledged = self.pending
            log.error("MQTT: %d message(s) not acknowledged by the broker at shutdown", self.unacknowledged)
        elif self.connected:
            self._status("offline")
            self.flush(max(0.0, min(1.0, deadline - time.monotonic())))
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._publisher.join(timeout=1.0)
        self.client.disconnect()
        self.client.loop_stop()
        return flushed

    # The publisher thread ------------------------------------------------------------------------
    def _ready(self) -> bool:
        if self._closing:
            return True
        if not (self.connected and self._waiting):
            return False
        in_paho = self.handed - self.acknowledged
        if self._resync:
            if in_paho > 0:
                return False
            self._resync = False
        return in_paho < self.WINDOW

    def _publish_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(self._ready)
                if self._closing:
                    return
                room = self.WINDOW - (self.handed - self.acknowledged)
                batch = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                self.handed += len(batch)
            for topic, payload, retain in batch:
                # Not connected any more? paho keeps the message and resends it, in order, on reconnect.
                self.client.publish(topic, payload, qos=self.qos, retain=retain)

    def _status(self, text: str) -> None:
        with self._cond:
            self._waiting.appendleft((f"{self.prefix}/status", text, True))  # status is never dropped
            self._cond.notify_all()

    # paho callbacks (network thread) ---------------------------------------------------------------
    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self._cond:
            self.acknowledged += 1
            self._cond.notify_all()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if getattr(reason_code, "is_failure", False):
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        with self._cond:
            self.connected = True
            self._cond.notify_all()
        self._status("online")
        if self._down_since is not None:
            log.warning("MQTT broker back after %.1f s; sending %d queued message(s)", time.monotonic() - self._down_since, self.pending)
            self._down_since = None

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._cond:
            was_connected, self.connected = self.connected, False
            self._resync = True
            closing = self._closing
        if closing:  # our own disconnect at shutdown: nothing is lost and nothing reconnects
            return
        if was_connected and self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("MQTT broker connection lost (%s); reconnecting with backoff, queueing up to %d results", reason_code, self.bound)
