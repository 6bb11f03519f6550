"""Camera and input faults: a failing live source is reopened with backoff, its state reset, and the run goes on."""
from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import pytest

from runtime import Pipeline, PipelineConfig, load_manifest, open_engines
from runtime.capture import Backoff
from runtime.frame import Frame
from runtime.mailbox import DropPolicy
from runtime.preprocess import Preprocessor
from runtime.sources import Source, SourceError, SourceReadError
from runtime.sources.demo import DemoScene


class FaultySource(Source):
    """A camera stand-in (demo scene at `fps`) whose faults are scripted by frames produced so far.

    `faults` maps a count of frames produced to what happens at that read: "error"
    (SourceReadError: unplugged), "crash" (RuntimeError, as cv2 raises), "end" (the
    stream ends: None), or a corrupt frame: "empty", "float", "gray". Each fires once.
    `reopen_fails` opens after the first fail with "device busy"; `flap` makes the first
    read after each of that many reopens fail again at once.
    """

    def __init__(self, faults: Optional[dict] = None, fps: float = 200.0, live: bool = True,
                 reopen_fails: int = 0, flap: int = 0, total: Optional[int] = None) -> None:
        super().__init__("faulty:0", live=live, fps=fps)
        self.faults = dict(faults or {})
        self.reopen_fails = reopen_fails
        self.flap = flap
        self.total = total
        self.opens = 0
        self.open_times: list[float] = []
        self.produced = 0
        self.scene = DemoScene(0, 160, 120)
        self._fresh = False

    def _open(self) -> None:
        self.opens += 1
        self.open_times.append(time.monotonic())
        if 1 < self.opens <= 1 + self.reopen_fails:
            raise SourceError("device busy")
        self._fresh = self.opens > 1
        self._next = time.perf_counter()

    def _close(self) -> None:
        pass

    def _read(self, out) -> Optional[Frame]:
        if self._fresh and self.flap > 0:
            self.flap -= 1
            self._fresh = False
            raise SourceReadError("failed again right after reopening")
        self._fresh = False
        if self.total is not None and self.produced >= self.total:
            return None
        fault = self.faults.pop(self.produced, None)
        if fault == "error":
            raise SourceReadError("read failed (injected)")
        if fault == "crash":
            raise RuntimeError("cv2.error: (-215) !_src.empty() (injected)")
        if fault == "end":
            return None
        delay = self._next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + 1.0 / self.fps, time.perf_counter())
        image = np.empty(self.scene.shape, np.uint8)
        label = self.scene.render_into(image)
        self.produced += 1
        if fault == "empty":
            image = np.empty((0, 0, 3), np.uint8)
        elif fault == "float":
            image = image.astype(np.float32)
        elif fault == "gray":
            image = image[:, :, 0].copy()
        return self._emit(image, time.perf_counter(), label=label)


FAST = Backoff(initial=0.02, factor=2.0, maximum=0.2, jitter=0.2, stable_after=0.05)


def run(manifest, source, **config):
    config.setdefault("drop_policy", DropPolicy.NONE)
    config.setdefault("backoff", FAST)
    with Pipeline(open_engines(manifest, "cpu"), [source], PipelineConfig(**config)) as pipeline:
        results = list(pipeline)
    return results, pipeline


def step_from_zero(manifest, image):
    """Probabilities of one GRU step from a zero state on `image`: what a reset stream emits."""
    engines = open_engines(manifest, "cpu")
    Preprocessor(manifest.input)(image, engines.backbone.input("image")[0])
    engines.backbone.run(1)
    engines.gru_step.input("x")[0] = engines.backbone.output("features")[0]
    engines.gru_step.step(1)
    logits = engines.gru_step.output("logits")[0]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def scene_frame(k):
    scene, image = DemoScene(0, 160, 120), None
    for _ in range(k + 1):
        image = np.empty(scene.shape, np.uint8)
        scene.render_into(image)
    return image


def test_failures_mid_stream_reconnect_with_backoff_reset_the_state_and_the_run_goes_on(engines_dir, caplog):
    # given a camera that is unplugged after 15 frames (and busy twice when reopened), then crashes cv2-style after 40
    manifest = load_manifest(engines_dir)
    source = FaultySource({15: "error", 40: "crash"}, reopen_fails=2)
    caplog.set_level(logging.WARNING, logger="edge_run.capture")
    # when the pipeline runs 60 frames
    results, pipeline = run(manifest, source, max_frames=60)
    # then every frame the camera produced has its result, and the counts say what happened
    assert len(results) == 60 and source.produced == 60
    counters = pipeline.stats.streams[0]
    assert counters.reconnects == 2 and counters.resets == {"source restart": 2}
    assert [r.frame_index for r in results[14:17]] == [14, 0, 1]  # the index restarts after the reopen
    # and the reopens backed off: 3 opens after the unplug, waits ~0.02 + 0.04 + 0.08 s (+-20%)
    assert source.opens == 5
    assert source.open_times[3] - source.open_times[1] >= 0.8 * (0.04 + 0.08)
    # and the first step after each reconnect starts from a zero state
    np.testing.assert_allclose(results[15].probabilities, step_from_zero(manifest, scene_frame(15)), atol=1e-5)  # same engines, same frame
    # and each episode is logged once when it starts and once when the camera is back
    lost = [r for r in caplog.records if "lost" in r.message]
    back = [r for r in caplog.records if " back after " in r.message]
    assert len(lost) == 2 and len(back) == 2


def test_a_flapping_camera_backs_off_further_and_is_one_episode(engines_dir, caplog):
    # given a camera that fails again right after each of four reopens
    manifest = load_manifest(engines_dir)
    source = FaultySource({5: "error"}, flap=4)
    caplog.set_level(logging.WARNING, logger="edge_run.capture")
    results, pipeline = run(manifest, source, max_frames=20, backoff=Backoff(initial=0.01, factor=2.0, maximum=1.0, stable_after=10.0))
    # then the delay kept doubling across the flaps instead of restarting at 0.01 s
    waits = np.diff(source.open_times)
    assert len(waits) == 5 and waits[-1] >= 0.8 * 0.01 * 2 ** 4  # the fifth wait, not the first one again
    # and it is counted every time but logged as one episode
    assert pipeline.stats.streams[0].reconnects == 5 and len(results) == 20
    assert sum("lost" in r.message for r in caplog.records) == 1


def test_a_live_stream_that_ends_is_reopened_not_the_end_of_the_run(engines_dir):
    manifest = load_manifest(engines_dir)
    source = FaultySource({10: "end"})
    results, pipeline = run(manifest, source, max_frames=20)
    assert len(results) == 20 and pipeline.stats.streams[0].reconnects == 1


@pytest.mark.parametrize("live", [True, False])
def test_corrupt_frames_are_skipped_and_counted(engines_dir, live):
    # given a source whose frames 3, 4 and 5 are empty, float and single-channel
    manifest = load_manifest(engines_dir)
    source = FaultySource({3: "empty", 4: "float", 5: "gray"}, live=live, total=12, fps=1000.0)
    # when the run reads it
    results, pipeline = run(manifest, source, max_frames=None if not live else 9)
    # then those frames are skipped, counted, and reported as dropped on the next result
    assert [r.frame_index for r in results] == [0, 1, 2, 6, 7, 8, 9, 10, 11][: len(results)]
    assert pipeline.stats.streams[0].corrupt == 3
    assert results[3].dropped == 3
    # and a file-like source that ends ends the run cleanly, without reconnecting
    if not live:
        assert len(results) == 9 and pipeline.stats.streams[0].reconnects == 0
