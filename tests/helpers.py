"""What several test files share: paths, a live-camera stand-in, independent references, small real peers.

Not a test file; `pyproject.toml` puts tests/ on the path so any test can `from helpers import ...`.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from export.graphs.gru import init_gru_weights
from runtime.frame import Frame
from runtime.sources import Source, SourceError, SourceReadError
from runtime.sources.demo import DemoScene, write_demo_video

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DATA = TESTS / "data"


class PacedLiveSource(Source):
    """Renders the demo scene at `fps` like a camera: frames come when their time comes.

    `pause_at` (frame index -> seconds) stalls before that frame, like a camera hiccup;
    `fail_at` indices raise SourceReadError once each (device unplugged); `end_after`
    ends the stream (returns None) after that many frames; `dark` indices are black frames.
    """

    def __init__(self, fps: float = 200.0, total: Optional[int] = None, seed: int = 0, pause_at=None,
                 fail_at=(), dark=(), reopen_fails: int = 0, size=(160, 120), stream: int = 0) -> None:
        super().__init__(f"paced:{seed}", live=True, fps=fps, stream=stream)
        self.total = total
        self.pause_at = dict(pause_at or {})
        self.fail_at = set(fail_at)
        self.dark = set(dark)
        self.reopen_fails = reopen_fails
        self.opens = 0
        self.produced = 0
        self.scene = DemoScene(seed, *size)
        self._next_time = None

    def _open(self) -> None:
        self.opens += 1
        if 1 < self.opens <= 1 + self.reopen_fails:
            raise SourceError("device busy")
        self._next_time = time.perf_counter()

    def _close(self) -> None:
        pass

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        if self.total is not None and self.produced >= self.total:
            return None
        index = self.produced
        if index in self.fail_at:
            self.fail_at.discard(index)
            raise SourceReadError("read failed (injected)")
        if index in self.pause_at:
            time.sleep(self.pause_at.pop(index))
            self._next_time = time.perf_counter()
        delay = self._next_time - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        self._next_time = max(self._next_time + 1.0 / self.fps, time.perf_counter() - 1.0 / self.fps)
        image = out if out is not None and out.shape == self.scene.shape else np.empty(self.scene.shape, np.uint8)
        label = self.scene.render_into(image)
        if index in self.dark:
            image[...] = 0
        self.produced += 1
        return self._emit(image, time.perf_counter(), label=label)


def naive(image, spec):
    """The textbook version: resize, BGR->RGB, scale, normalise, HWC->CHW (allocates at every step)."""
    resized = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
    if spec.color_order == "RGB":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    x = resized.astype(np.float32) * spec.scale
    x = (x - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return x.transpose(2, 0, 1)


def gru_weights(manifest):
    """The GRU weights the build used, read independently of the engines: the shipped demo head or seed 0."""
    source = manifest.provenance["gru_weights"]
    if source.startswith("shipped: demo_head"):
        from export.build import DEFAULT_DEMO_HEAD
        from export.graphs.gru import canonical_gru_weights
        from export.graphs.weights import load_state_dict

        return canonical_gru_weights(load_state_dict(DEFAULT_DEMO_HEAD))
    assert source == "seeded:0", source
    return init_gru_weights(manifest.feature_size, manifest.hidden_size, manifest.num_classes, seed=0)


def get(url):
    """(status, body) without raising on 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotifyListener:
    """What systemd's end of NOTIFY_SOCKET sees: (arrival time, message) for every datagram."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: list[tuple[float, str]] = []
        self.on_message = None  # called on the listener thread with each message
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self._socket.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except socket.timeout:
                continue
            message = data.decode()
            self.messages.append((time.monotonic(), message))
            if self.on_message is not None:
                self.on_message(message)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self._socket.close()

    def with_field(self, field: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self.messages if field in m.split("\n")]

    def wait_for(self, field: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.with_field(field):
                return True
            time.sleep(0.01)
        return False


def corrupt_mp4(path: Path) -> Path:
    """A 120-frame demo mp4 with 200 random bytes overwritten between its first and last tenth."""
    write_demo_video(path, num_frames=120, width=320, height=240, seed=2)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for where in rng.integers(len(data) // 10, len(data) * 9 // 10, size=200):
        data[where] = int(rng.integers(256))
    path.write_bytes(bytes(data))
    return path


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, poll: float = 0.02) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False): waits on events, not sleeps."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def read_jsonl(path: Path) -> list[dict]:
    """The whole JSON lines a running edge-run has written so far (a line still being written is left out)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def metric_value(exposition: str, name: str, **labels: str) -> Optional[float]:
    """The value of sample `name` with `labels` in a Prometheus text exposition, None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


class OnnxReference:
    """A folder's engines as plain onnxruntime sessions, apart from the runtime's engine classes: the FP32
    backbone and the GRU step (x, h -> h_next, logits), fed by the runtime's own preprocessing."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        from runtime.manifest import BACKBONE, GRU_STEP, load_manifest
        from runtime.preprocess import Preprocessor

        manifest = self.manifest = load_manifest(folder)
        self.preprocess = Preprocessor(manifest.input)
        cpu = ["CPUExecutionProvider"]
        self.backbone = ort.InferenceSession(str(folder / manifest.find(BACKBONE, "onnx", "fp32").file), providers=cpu)
        self.gru = ort.InferenceSession(str(folder / manifest.find(GRU_STEP, "onnx").file), providers=cpu)
        self.image = np.zeros((1, 3, manifest.input.height, manifest.input.width), np.float32)

    def features(self, image: np.ndarray) -> np.ndarray:
        self.preprocess(image, self.image[0])
        return self.backbone.run(None, {self.backbone.get_inputs()[0].name: self.image})[0]

    def step(self, features: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(h_next, class probabilities) of one GRU step."""
        h_next, logits = self.gru.run(["h_next", "logits"], {"x": features, "h": h})
        probs = np.exp(logits - logits.max())
        return h_next, (probs / probs.sum())[0]


def demo_reference(frames: list[int], seed: int, engines_for: Callable[[int], OnnxReference],
                   reset_at: Optional[int] = None) -> dict[int, np.ndarray]:
    """Per-step probabilities for the demo scene `seed`, fed only the frame indices in `frames` (the ones a
    run processed), frame i through `engines_for(i)`, the GRU state carried from a zero state (and set to
    zero again at frame `reset_at`)."""
    from runtime.sources.demo import DemoSource

    source = DemoSource(seed=seed).open()
    wanted, probs = set(frames), {}
    h = None
    try:
        for index in range(max(frames) + 1):
            frame = source.read()
            if index not in wanted:
                continue
            engines = engines_for(index)
            if h is None or index == reset_at:
                h = np.zeros((1, engines.manifest.hidden_size), np.float32)
            h, probs[index] = engines.step(engines.features(frame.image), h)
    finally:
        source.close()
    return probs


# A real mosquitto and a real subscriber on loopback ----------------------------------------------------
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)


def require_mosquitto() -> str:
    """The broker binary. CI (which sets CI) must test the broker paths: there a missing mosquitto fails the test;
    a developer without it gets a skip that says why."""
    if MOSQUITTO is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("mosquitto is not installed but CI is set: .ci/run installs it with apt, and CI must not skip the MQTT tests")
        pytest.skip("mosquitto is not installed (.ci/run installs it with apt; CI fails instead of skipping)")
    return MOSQUITTO


class Broker:
    """A mosquitto on 127.0.0.1:`port`, persisting sessions in `folder` so a restart keeps subscriptions."""

    def __init__(self, binary: str, folder: Path, password_file: Path | None = None, extra: str = "") -> None:
        """`extra`: more configuration lines (a bridge, a queue bound)."""
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        auth = f"allow_anonymous false\npassword_file {password_file}\n" if password_file else "allow_anonymous true\n"
        self.config = folder / "mosquitto.conf"
        # Started as root, mosquitto switches to its own user, which cannot write pytest's private folders.
        user = pwd.getpwuid(os.geteuid()).pw_name
        # Autosave after every change: a broker killed with SIGKILL (no clean shutdown to write the database)
        # still comes back with the subscriber's session, so what the sink sends after the restart is queued for it.
        self.config.write_text(f"listener {self.port} 127.0.0.1\n{auth}persistence true\npersistence_location {folder}/\n"
                               f"autosave_interval 1\nautosave_on_changes true\nuser {user}\nlog_dest none\n{extra}")
        self.process = None

    def start(self) -> "Broker":
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert self.process.poll() is None, self.process.stderr.read().decode()
                time.sleep(0.02)
        raise AssertionError("mosquitto did not start")

    def freeze(self) -> None:
        """SIGSTOP: connections stay up, nothing is read or acknowledged."""
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL (a frozen broker too): whatever it had not read is gone, no clean shutdown."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen one must run to stop cleanly
            self.process.send_signal(signal.SIGTERM)  # a clean stop writes the persistence file
            self.process.wait(timeout=10)


class Message(NamedTuple):
    topic: str
    payload: str
    qos: int
    retain: bool


class Subscriber:
    """A persistent-session QoS 1 subscriber: what an operator's dashboard would receive."""

    def __init__(self, port: int, topic: str, username=None, password=None, client_id: str | None = None,
                 clean_session: bool = False) -> None:
        self.messages: list[Message] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-sub-{port}", clean_session=clean_session)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.05, 0.2)
        # Subscribing at QoS 1 means a message arrives with the QoS it was published with (the lower of the two).
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(Message(m.topic, m.payload.decode(), m.qos, bool(m.retain)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]

    def frames(self, topic):
        return [json.loads(m.payload)["frame"] for m in self.on(topic)]

    def wait_for(self, topic, count, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(set(self.frames(topic))) < count:
            time.sleep(0.02)
        return self.frames(topic)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str, expect: str, timeout: float = 10.0) -> Message | None:
    """The retained message a dashboard connecting now is handed on `topic`, asked again until it reads `expect`
    (the broker publishes a last will a moment after the connection drops) or `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        late = Subscriber(port, topic, client_id=f"test-late-{time.monotonic_ns()}", clean_session=True)
        wait_until(lambda late=late: late.on(topic), 2.0)  # sent right after SUBACK: 2 s is ~100x what loopback needs
        late.close()
        seen = late.on(topic)[0] if late.on(topic) else None
        if (seen is not None and seen.payload == expect) or time.monotonic() >= deadline:
            return seen
        time.sleep(0.05)


def require_tensorrt_gpu():
    """The real `tensorrt` module where TensorRT, pycuda and a usable CUDA device are (a Jetson,
    the on-box run); the calling test skips elsewhere, saying what it needs."""
    trt = pytest.importorskip("tensorrt", reason="needs TensorRT, pycuda and an NVIDIA GPU (the tensorrt extra on a Jetson / GPU machine)")
    cuda = pytest.importorskip("pycuda.driver", reason="needs TensorRT, pycuda and an NVIDIA GPU (the tensorrt extra on a Jetson / GPU machine)")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            pytest.skip("no CUDA device")
    except cuda.Error as exc:
        pytest.skip(f"no usable CUDA driver: {exc}")
    return trt
