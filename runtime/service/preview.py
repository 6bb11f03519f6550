"""`--preview`: a live page per stream on the metrics server: MJPEG frames, label, score, class bars, history, counters.

Pages (served by the `/metrics` server; 127.0.0.1 unless `--metrics-host` says otherwise):

    /                         the streams, with their current label
    /stream/<i>               the live page (the MJPEG image, and what the model says beside it)
    /stream/<i>/video.mjpg    multipart/x-mixed-replace JPEG frames
    /stream/<i>/status.json   what the page shows: the latest result, the label history, the counters

The loop's part (`frame`, `result`, in the loop thread) is cheap and never waits: with no
client watching a stream, a frame costs one integer test and a result two stores; while
a client watches, at most `fps` frames a second are copied into a preallocated buffer
(skipped if the encoder holds it). One encoder thread JPEG-encodes the newest copy; each
client's handler thread sends the newest JPEG when there is one, so a slow client skips
frames instead of queueing them, and a client that stops reading is dropped once its
socket buffer is full for `SEND_TIMEOUT` seconds.
"""
from __future__ import annotations

import html
import json
import logging
import re
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Iterable, Optional

import cv2
import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from runtime.frame import Frame
from runtime.pipeline import Observer
from runtime.result import Result
from runtime.service.metrics import send_page
from runtime.stats import RunStats

log = logging.getLogger("edge_run.preview")

DEFAULT_FPS = 5.0  # frames a second encoded per watched stream
DEFAULT_HISTORY = 150  # labels in the history strip (5 s at 30 fps)
JPEG_QUALITY = 80
SEND_TIMEOUT = 2.0  # seconds a client's socket may stay full before the client is dropped
SEND_BUFFER = 256 * 1024  # bytes queued per client in the kernel: a few frames, not minutes of them
MAX_VIEWERS = 8  # MJPEG clients per stream; more get 503
_STREAM_PATH = re.compile(r"/stream/(\d+)(/video\.mjpg|/status\.json)?")


class _View:
    """One stream's preview state, shared by the loop, the encoder and the clients."""

    def __init__(self, index: int, history: int) -> None:
        self.index = index
        self.source = ""
        self.viewers = 0  # MJPEG clients now; the loop copies frames only while it is > 0
        self.next_copy = 0.0  # capture time (perf_counter) of the next frame worth copying
        self.lock = threading.Lock()  # guards back/pending between the loop and the encoder
        self.back: Optional[np.ndarray] = None
        self.front: Optional[np.ndarray] = None
        self.back_frame = -1
        self.pending = False
        self.jpeg = b""
        self.jpeg_seq = 0
        self.jpeg_frame = -1
        self.result: Optional[Result] = None
        self.strip = np.full(history, -1, np.int16)
        self.strip_next = 0
        self.rate: deque[tuple[float, int]] = deque(maxlen=32)


class Preview(Observer):
    """The observer that feeds the pages, and the pages themselves (`serve`, a metrics-server route)."""

    def __init__(self, labels: tuple[str, ...], stats: RunStats, sources: list[str], mode: str = "step",
                 fps: float = DEFAULT_FPS, history: int = DEFAULT_HISTORY) -> None:
        """`mode`: which results the page shows ("step", or "window" when the run emits only windows)."""
        self.labels = tuple(labels)
        self.stats = stats
        self.mode = mode
        self.period = 1.0 / fps
        self._label_index = {label: i for i, label in enumerate(self.labels)}
        self._views = [_View(i, history) for i in range(len(sources))]
        for view, name in zip(self._views, sources):
            view.source = name
        self._wake = threading.Event()
        self._new_jpeg = threading.Condition()
        self._viewers_lock = threading.Lock()
        self._closed = False
        self.frames_encoded = 0
        self.clients_dropped = 0
        self.clients_served = 0
        self._encoder = threading.Thread(target=self._encode_loop, name="preview-encoder", daemon=True)
        self._encoder.start()

    # Observer (loop thread) -------------------------------------------------------------------------
    def frame(self, stream: int, frame: Frame) -> None:
        view = self._views[stream]
        if not view.viewers or frame.timestamp < view.next_copy:
            return
        if not view.lock.acquire(blocking=False):  # the encoder is swapping buffers: the next frame will do
            return
        try:
            if view.back is None or view.back.shape != frame.image.shape:
                view.back = np.empty_like(frame.image)  # once per client session (or a new frame size)
            np.copyto(view.back, frame.image)
            view.back_frame = frame.index
            view.pending = True
        finally:
            view.lock.release()
        view.next_copy = frame.timestamp + self.period
        self._wake.set()

    def result(self, result: Result) -> None:
        if result.mode != self.mode:
            return
        view = self._views[result.stream]
        view.result = result  # one reference store: readers take a whole, immutable Result
        view.strip[view.strip_next % len(view.strip)] = self._label_index[result.label]
        view.strip_next += 1

    # Encoder thread ----------------------------------------------------------------------------------
    def _encode_loop(self) -> None:
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        while not self._closed:
            self._wake.wait(0.5)
            self._wake.clear()
            for view in self._views:
                with view.lock:
                    if not view.pending:
                        continue
                    view.back, view.front = view.front, view.back
                    view.pending = False
                    index = view.back_frame
                ok, encoded = cv2.imencode(".jpg", view.front, params)
                if not ok:
                    continue
                with self._new_jpeg:
                    view.jpeg, view.jpeg_frame = encoded.tobytes(), index
                    view.jpeg_seq += 1
                    self.frames_encoded += 1
                    self._new_jpeg.notify_all()

    def close(self) -> None:
        """End every MJPEG response and the encoder (the server's shutdown does not end running responses)."""
        self._closed = True
        self._wake.set()
        with self._new_jpeg:
            self._new_jpeg.notify_all()
        self._encoder.join(timeout=2.0)

    # Pages (HTTP handler threads) --------------------------------------------------------------------
    def serve(self, handler: BaseHTTPRequestHandler, path: str, send_body: bool) -> bool:
        if path in ("/", "/index.html"):
            send_page(handler, 200, self._index_page().encode(), "text/html; charset=utf-8", send_body)
            return True
        match = _STREAM_PATH.fullmatch(path)
        if match is None:
            return False
        index = int(match.group(1))
        if index >= len(self._views):
            send_page(handler, 404, b"no such stream\n", "text/plain; charset=utf-8", send_body)
            return True
        view = self._views[index]
        if match.group(2) == "/video.mjpg":
            self._stream_mjpeg(handler, view, send_body)
        elif match.group(2) == "/status.json":
            send_page(handler, 200, json.dumps(self.status(index)).encode(), "application/json", send_body)
        else:
            send_page(handler, 200, self._stream_page(index).encode(), "text/html; charset=utf-8", send_body)
        return True

    def status(self, index: int) -> dict:
        """What stream `index`'s page shows now."""
        view = self._views[index]
        result = view.result
        counters = self.stats.streams[index]
        now, frames = time.perf_counter(), counters.frames
        view.rate.append((now, frames))
        while len(view.rate) > 2 and now - view.rate[0][0] > 5.0:
            view.rate.popleft()
        (t0, n0) = view.rate[0]
        fps = (frames - n0) / (now - t0) if now - t0 >= 0.5 else self.stats.fps() / max(1, len(self._views))
        p99 = self.stats.stream_latency[index].percentiles((99,))["p99"]
        count, strip = view.strip_next, view.strip
        if count < len(strip):
            history = strip[:count].tolist()
        else:
            start = count % len(strip)
            history = np.concatenate([strip[start:], strip[:start]]).tolist()
        return {
            "stream": index, "source": view.source, "mode": self.mode, "labels": list(self.labels),
            "frame": None if result is None else result.frame_index,
            "label": None if result is None else result.label,
            "score": None if result is None else round(result.score, 6),
            "probs": None if result is None else [round(p, 6) for p in result.probabilities],
            "history": history,
            "frames": frames, "fps": round(fps, 2), "dropped": counters.dropped, "misses": counters.misses,
            "p99_ms": None if p99 != p99 else round(p99 * 1e3, 3),
            "image_frame": view.jpeg_frame, "viewers": view.viewers,
        }

    def _stream_mjpeg(self, handler: BaseHTTPRequestHandler, view: _View, send_body: bool) -> None:
        with self._viewers_lock:
            if view.viewers >= MAX_VIEWERS:
                busy = True
            else:
                busy = False
                view.viewers += 1
        if busy:
            send_page(handler, 503, b"too many viewers\n", "text/plain; charset=utf-8", send_body)
            return
        self.clients_served += 1
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            handler.send_header("Cache-Control", "no-store")
            handler.send_header("Connection", "close")
            handler.end_headers()
            if not send_body:
                return
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            handler.connection.settimeout(SEND_TIMEOUT)
            seen = 0
            while not self._closed:
                with self._new_jpeg:
                    self._new_jpeg.wait_for(lambda seen=seen: self._closed or view.jpeg_seq != seen, timeout=1.0)
                    jpeg, current = view.jpeg, view.jpeg_seq
                if self._closed or current == seen:
                    continue
                seen = current
                handler.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                    + jpeg + b"\r\n")
                handler.wfile.flush()
        except (socket.timeout, TimeoutError):
            self.clients_dropped += 1
            log.info("preview: dropped a client of stream %d that stopped reading", view.index)
        except OSError:  # the client went away
            pass
        finally:
            handler.close_connection = True
            with self._viewers_lock:
                view.viewers -= 1

    def _index_page(self) -> str:
        rows = []
        for view in self._views:
            label = view.result.label if view.result is not None else "waiting"
            rows.append(f'<li><a href="/stream/{view.index}">stream {view.index}</a> {html.escape(view.source)}: '
                        f'<b>{html.escape(label)}</b></li>')
        return _INDEX.replace("{rows}", "\n".join(rows))

    def _stream_page(self, index: int) -> str:
        initial = json.dumps(self.status(index)).replace("</", "<\\/")
        return (_PAGE.replace("{index}", str(index)).replace("{source}", html.escape(self._views[index].source))
                .replace("{initial}", initial))

    def metrics(self) -> Iterable[Metric]:
        yield CounterMetricFamily("edge_preview_frames_encoded", "Frames JPEG-encoded for preview clients.", value=self.frames_encoded)
        yield CounterMetricFamily("edge_preview_clients_dropped", "Preview clients dropped because they stopped reading.",
                                  value=self.clients_dropped)
        viewers = GaugeMetricFamily("edge_preview_viewers", "MJPEG clients watching.", labels=["stream"])
        for view in self._views:
            viewers.add_metric([str(view.index)], view.viewers)
        yield viewers


_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>edge-run</title>
<style>body{font:15px system-ui,sans-serif;margin:24px;background:#111;color:#eee}a{color:#8cf}</style></head>
<body><h1>edge-run streams</h1><ul>
{rows}
</ul><p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a></p></body></html>
"""

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>edge-run stream {index}</title>
<style>
body{margin:0;font:14px system-ui,sans-serif;background:#111;color:#eee;display:flex;align-items:flex-start}
#video{display:block}
#panel{padding:8px 16px;min-width:340px}
h1{font-size:15px;font-weight:normal;margin:0 0 8px;color:#aaa}
#label{font-size:28px;font-weight:bold}#score{font-size:18px;color:#aaa;margin-left:8px}
.bar{display:flex;align-items:center;margin:3px 0}.bar .name{width:90px}
.track{flex:1;height:12px;background:#333;margin:0 8px}.fill{height:12px}
#strip{display:flex;height:18px;margin:10px 0 4px;background:#222}#strip div{flex:1}
table{border-collapse:collapse;margin-top:10px}td{padding:2px 12px 2px 0}td.v{text-align:right;color:#fff}
.legend span{display:inline-block;margin-right:10px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
</style></head>
<body>
<img id="video" src="/stream/{index}/video.mjpg" alt="stream {index}" data-loaded="no">
<div id="panel">
<h1>stream {index} · {source} · <a href="/" style="color:#8cf">all streams</a></h1>
<div><span id="label">waiting</span><span id="score"></span></div>
<div>frame <span id="frame">-</span></div>
<div id="bars"></div>
<div id="strip" title="last labels, oldest left"></div><div class="legend" id="legend"></div>
<table>
<tr><td>frames</td><td class="v" id="frames">0</td></tr>
<tr><td>fps</td><td class="v" id="fps">0</td></tr>
<tr><td>dropped</td><td class="v" id="dropped">0</td></tr>
<tr><td>deadline misses</td><td class="v" id="misses">0</td></tr>
<tr><td>p99 latency ms</td><td class="v" id="p99">-</td></tr>
</table>
</div>
<script>
const COLOURS = ["#4e79a7","#f28e2b","#e15759","#76b7b2","#59a14f","#edc948","#b07aa1","#ff9da7","#9c755f","#bab0ac"];
const colour = i => i < 0 ? "#222" : COLOURS[i % COLOURS.length];
const video = document.getElementById("video");
const loaded = () => { if (video.naturalWidth) video.dataset.loaded = video.naturalWidth + "x" + video.naturalHeight; };
video.addEventListener("load", loaded);
loaded();  // the first frame may have arrived before this script ran
function show(s) {
  const set = (id, text) => { document.getElementById(id).textContent = text; };
  set("label", s.label === null ? "waiting" : s.label);
  set("score", s.score === null ? "" : s.score.toFixed(3));
  set("frame", s.frame === null ? "-" : s.frame);
  const bars = document.getElementById("bars");
  bars.replaceChildren(...s.labels.map((name, i) => {
    const p = s.probs === null ? 0 : s.probs[i];
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = '<span class="name"></span><div class="track"><div class="fill"></div></div><span class="p"></span>';
    row.querySelector(".name").textContent = name;
    const fill = row.querySelector(".fill");
    fill.dataset.label = name; fill.dataset.p = p;
    fill.style.width = (100 * p).toFixed(1) + "%"; fill.style.background = colour(i);
    row.querySelector(".p").textContent = p.toFixed(3);
    return row;
  }));
  document.getElementById("strip").replaceChildren(...s.history.map(i => {
    const cell = document.createElement("div");
    cell.style.background = colour(i); cell.title = i < 0 ? "" : s.labels[i];
    return cell;
  }));
  document.getElementById("legend").replaceChildren(...s.labels.map((name, i) => {
    const item = document.createElement("span");
    item.innerHTML = '<i></i>'; item.firstChild.style.background = colour(i); item.append(name);
    return item;
  }));
  set("frames", s.frames); set("fps", s.fps.toFixed(1)); set("dropped", s.dropped); set("misses", s.misses);
  set("p99", s.p99_ms === null ? "-" : s.p99_ms.toFixed(1));
}
show({initial});
async function poll() {
  try { const r = await fetch("/stream/{index}/status.json", {cache: "no-store"}); if (r.ok) show(await r.json()); }
  catch (e) {}
  setTimeout(poll, 400);
}
setTimeout(poll, 400);
</script>
</body></html>
"""
