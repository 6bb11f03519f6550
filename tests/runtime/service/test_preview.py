"""`--preview`: the live page of a running `edge-run --source demo` in a real headless browser, and clients that stop reading.

The browser is Debian's `chromium` (installed by .ci/run); outside CI the browser tests skip
without it. With EDGE_RUN_WRITE_DOCS=1 the screenshot also goes to docs/preview.png (the README's).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from helpers import REPO, free_port, get, wait_until

from runtime import Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.bench.observers import ReadingClient, StuckClient
from runtime.service import Service, ServiceOptions
from runtime.service.preview import Preview
from runtime.sources.demo import DemoSource

SEED = 2
WIDTH, HEIGHT = 320, 240  # the demo source's frames, shown at their own size at the page's top left
# The image must be one of the source's frames: one JPEG generation at quality 80 of a noisy
# 320x240 frame is ~3 grey levels of mean absolute error (2.8 measured); a blank image or a frame
# of another clip is tens of levels away (neighbours in the same clip, 3.5-5, differ only in noise
# and a little motion: they are the source's frames too).
SAME_FRAME_MEAN_ABS = 4.5
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(profile, *args):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("needs a headless browser: apt-get install chromium")
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}", *map(str, args)],
                          capture_output=True, timeout=90)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


def json_lines(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.fixture(scope="module")
def live_page(engines_dir, tmp_path_factory):
    """`edge-run --source demo:2 --realtime --fps 10 --preview` running, its page's URL and its JSON lines."""
    folder = tmp_path_factory.mktemp("preview")
    out, port = folder / "results.jsonl", free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--backend", "cpu", "--source", f"demo:{SEED}",
         "--realtime", "--fps", "10", "--max-frames", "100000", "--out", str(out), "--preview", "--metrics-port", str(port)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    def healthy_or_ended():
        if process.poll() is not None:
            return True
        try:
            return get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        except OSError:  # not listening yet
            return False

    try:
        assert wait_until(healthy_or_ended, timeout=60), "edge-run did not become healthy"
        assert process.poll() is None, process.stderr.read()
        yield f"http://127.0.0.1:{port}", out, folder
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def source_frames(count):
    with DemoSource(SEED) as source:
        return np.stack([source.read().image for _ in range(count)]).astype(np.int16)


def test_the_page_shows_the_sources_frames_in_its_mjpeg_image(live_page):
    url, out, folder = live_page
    shot = folder / "page.png"
    chromium(folder / "profile-shot", f"--screenshot={shot}", "--window-size=900,400", f"{url}/stream/0")
    image = cv2.imread(str(shot))[:HEIGHT, :WIDTH].astype(np.int16)
    frames = source_frames(json_lines(out)[-1]["frame"] + 30)  # every frame the run can have shown by now
    errors = np.abs(frames - image).mean(axis=(1, 2, 3))
    best = int(errors.argmin())
    print(f"screenshot matches source frame {best} (mean abs error {errors[best]:.2f}; median over the other frames "
          f"{np.median(errors):.2f})")
    assert image.std() > 10  # real pixels, not a blank or uniform frame
    assert errors[best] <= SAME_FRAME_MEAN_ABS
    if os.environ.get("EDGE_RUN_WRITE_DOCS"):
        shutil.copyfile(shot, REPO / "docs" / "preview.png")


def test_the_pages_label_score_and_bars_are_those_of_the_runs_json_line_for_its_frame(live_page):
    url, out, folder = live_page
    dom = chromium(folder / "profile-dom", "--dump-dom", f"{url}/stream/0")
    assert re.search(r'id="video"[^>]*data-loaded="320x240"', dom), "the MJPEG image did not load"
    frame = int(re.search(r'id="frame">(\d+)<', dom).group(1))
    label = re.search(r'id="label">([^<]+)<', dom).group(1)
    score = float(re.search(r'id="score">([^<]+)<', dom).group(1))
    bars = dict(re.findall(r'class="fill" data-label="([^"]+)" data-p="([^"]+)"', dom))
    assert wait_until(lambda: any(line["frame"] == frame for line in json_lines(out)), timeout=10)
    line = next(line for line in json_lines(out) if line["frame"] == frame)
    assert label == line["label"]
    assert score == pytest.approx(line["score"], abs=5e-4)  # shown with 3 decimals
    assert list(bars) == list(line["probs"])  # a bar per class, in the manifest's order
    assert {name: float(p) for name, p in bars.items()} == line["probs"]  # both rounded to 6 decimals from one value
    history = re.search(r'id="strip"[^>]*>(.*?)</div><div class="legend"', dom).group(1)
    assert history.count("<div") >= 1
    for counter in ("frames", "fps", "dropped", "misses", "p99"):
        assert re.search(rf'id="{counter}">[0-9.]+<', dom), counter


def test_the_index_lists_the_streams(live_page):
    url, _, _ = live_page
    status, body = get(url + "/")
    assert status == 200 and '<a href="/stream/0">' in body and f"demo:{SEED}" in body
    assert get(url + "/stream/7")[0] == 404 and get(url + "/metrics")[0] == 200


# Clients that stop reading ---------------------------------------------------------------------------
def run_with(engines, manifest, client=None, until=None, frames=150):
    """A demo run with the preview served; `client(port)` connects when the server is up. Returns (fps, preview, client)."""
    pipeline = Pipeline(engines, [open_source("demo")], PipelineConfig(max_frames=None if until else frames))
    preview = Preview(manifest.labels, pipeline.stats, ["demo:0"], fps=60)
    service = Service(pipeline, [], ServiceOptions(metrics_port=0), observers=[preview])
    runner = threading.Thread(target=service.run)
    runner.start()
    assert wait_until(lambda: service.metrics_server is not None)
    connected = client(service.metrics_server.port) if client else None
    if until is not None:
        assert wait_until(lambda: until(preview) and pipeline.stats.total("frames") >= frames, timeout=60)
        service.stop()
    runner.join(timeout=60)
    if connected is not None:
        connected.close()
    assert pipeline.stats.total("dropped") == 0 and pipeline.stats.total("frames") >= frames
    return pipeline.stats.fps(), preview, connected


def test_a_client_that_stops_reading_is_dropped_and_the_loop_does_not_wait_for_it(engines_dir):
    manifest = load_manifest(engines_dir)
    engines = open_engines(manifest, "cpu")
    try:
        alone, _, _ = run_with(engines, manifest)
        reading_fps, _, reader = run_with(engines, manifest, ReadingClient, until=lambda p: p.frames_encoded >= 20)
        started = time.monotonic()
        stuck_fps, preview, _ = run_with(engines, manifest, StuckClient, until=lambda p: p.clients_dropped == 1)
    finally:
        engines.close()
    print(f"loop fps with the preview on: no client {alone:.1f}, a reading client {reading_fps:.1f}, "
          f"a client that stopped reading {stuck_fps:.1f} (dropped within {time.monotonic() - started:.1f} s)")
    # the reader got whole frames of the source's size; the stuck client was let go, not waited for
    assert len(reader.parts) >= 10
    assert cv2.imdecode(np.frombuffer(reader.parts[-1], np.uint8), cv2.IMREAD_COLOR).shape == (HEIGHT, WIDTH, 3)
    assert preview.clients_dropped == 1 and preview.status(0)["viewers"] == 0
