"""The whole chain on real camera footage: decoding, INT8 calibration, training, scoring, the runtime.

The footage is three short real clips from Debian's opencv-doc package (`.ci/footage` extracts
them into tests/data/footage/): people walking on a campus (vtest.avi, 768x576, 10 fps), a hand
turning a box (box.mp4) and a cup (cup.mp4), 640x480.

The task is built from them with labels true by construction: a virtual camera moving over the
real footage (still, pan left, pan right, zoom in, zoom out), cut into short clips written as
video files, so they go through the runtime's own decoding. The head is trained on clips of two
videos (vtest, box) and scored on clips of the third (cup), which it never saw.

Sized for CI (about a minute and a half on 2 cores): few short clips, a small head, a short
training; the figures at this size and at a larger one are in docs/real-footage.md.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import TESTS

from export.cli import main as export_main
from runtime.cli import main as run_main
from runtime.manifest import load_manifest

FOOTAGE = Path(os.environ.get("EDGE_RUN_FOOTAGE", TESTS / "data" / "footage"))
VIDEOS = ("vtest.avi", "box.mp4", "cup.mp4")
MOTIONS = ("pan_left", "pan_right", "still", "zoom_in", "zoom_out")  # sorted: the order training gives labels
TRAIN_VIDEOS = {"vtest.avi": 1, "box.mp4": 2}  # name -> keep one source frame in N (box is 30 fps, vtest 10)
HELD_OUT_VIDEO = ("cup.mp4", 1)
CLIPS_PER_CLASS = 5  # per video
CLIP_FRAMES = 16
CLIP_SIZE = (160, 120)  # width, height of the virtual camera
WINDOW = 8
CHANCE = 1 / len(MOTIONS)


@pytest.fixture(scope="module")
def footage() -> Path:
    missing = [name for name in VIDEOS if not (FOOTAGE / name).is_file()]
    if missing:
        message = f"real footage absent from {FOOTAGE} ({', '.join(missing)}); get it with: .ci/footage"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI fetches it (.ci/run): absent there means the real-footage tests did not run
        pytest.skip(message)
    return FOOTAGE


def read_frames(path: Path, every: int, limit: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames, index = [], 0
    while len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        if index % every == 0:
            frames.append(frame)
        index += 1
    capture.release()
    return frames


def camera_path(motion: str, frames: int, rng: np.random.Generator, width: int, height: int) -> list[tuple]:
    """(x, y, w, h) of the virtual camera's view in each frame: what makes the label true."""
    aspect = CLIP_SIZE[0] / CLIP_SIZE[1]
    boxes = []
    if motion in ("still", "pan_left", "pan_right"):
        view_w = min(width * 0.7, height * rng.uniform(0.55, 0.7) * aspect)
        view_h = view_w / aspect
        travel = 0.0 if motion == "still" else (width - view_w) * rng.uniform(0.5, 0.9)
        x0, y = rng.uniform(0, width - view_w - travel), rng.uniform(0, height - view_h)
        for t in range(frames):
            f = t / (frames - 1)
            x = {"still": x0, "pan_right": x0 + travel * f, "pan_left": x0 + travel * (1 - f)}[motion]
            boxes.append((x, y, view_w, view_h))
        return boxes
    wide, narrow = rng.uniform(0.85, 0.95), rng.uniform(0.45, 0.55)
    cx, cy = width * rng.uniform(0.45, 0.55), height * rng.uniform(0.45, 0.55)
    for t in range(frames):
        f = t / (frames - 1)
        scale = wide + (narrow - wide) * f if motion == "zoom_in" else narrow + (wide - narrow) * f
        view_w = min(width, height * scale * aspect)
        view_h = view_w / aspect
        boxes.append((float(np.clip(cx - view_w / 2, 0, width - view_w)), float(np.clip(cy - view_h / 2, 0, height - view_h)),
                      view_w, view_h))
    return boxes


def write_motion_clips(video: Path, every: int, folder: Path, seed: int) -> None:
    """CLIPS_PER_CLASS clips per motion, each from a random stretch of `video`, as MJPG .avi files."""
    frames = read_frames(video, every, limit=240)
    rng = np.random.default_rng(seed)
    height, width = frames[0].shape[:2]
    for motion in MOTIONS:
        (folder / motion).mkdir(parents=True, exist_ok=True)
        for index in range(CLIPS_PER_CLASS):
            start = int(rng.integers(0, len(frames) - CLIP_FRAMES))
            writer = cv2.VideoWriter(str(folder / motion / f"{video.stem}_{index}.avi"), cv2.VideoWriter_fourcc(*"MJPG"),
                                     10, CLIP_SIZE)
            for frame, (x, y, w, h) in zip(frames[start:start + CLIP_FRAMES],
                                            camera_path(motion, CLIP_FRAMES, rng, width, height)):
                zoom = np.float32([[CLIP_SIZE[0] / w, 0, -x * CLIP_SIZE[0] / w], [0, CLIP_SIZE[1] / h, -y * CLIP_SIZE[1] / h]])
                writer.write(cv2.warpAffine(frame, zoom, CLIP_SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
            writer.release()


@pytest.fixture(scope="module")
def work(footage, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    for seed, (name, every) in enumerate(TRAIN_VIDEOS.items()):
        write_motion_clips(footage / name, every, root / "train", seed)
    write_motion_clips(footage / HELD_OUT_VIDEO[0], HELD_OUT_VIDEO[1], root / "held_out", seed=7)
    return root


@pytest.fixture(scope="module")
def real_engines(work, footage) -> Path:
    """The shipped backbone, INT8 calibrated on real frames (vtest.avi)."""
    out = work / "engines"
    code = export_main(["--out", str(out), "--calib", str(footage / "vtest.avi"), "--calib-frames", "32",
                        "--holdout-frames", "8", "--window", str(WINDOW), "--stride", "4", "--labels", ",".join(MOTIONS)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def trained(work, real_engines) -> Path:
    out = work / "trained"
    code = export_main(["train", "--clips", str(work / "train"), "--engines", str(real_engines), "--out", str(out),
                        "--hidden", "32", "--epochs", "8", "--iterations", "25", "--batch", "32", "--threads", "1",
                        "--views", "1", "--flip-map", "pan_left:pan_right",
                        "--cache", str(work / "cache"), "--no-progress"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def held_out(work, trained) -> dict:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = export_main(["evaluate", "--engines", str(trained), "--clips", str(work / "held_out"), "--json",
                            "--cache", str(work / "cache")])
    assert code == 0
    return json.loads(stdout.getvalue())


def test_int8_calibrated_on_real_frames_passes_the_gate_there(real_engines):
    quality = load_manifest(real_engines).quantization
    print(f"\nINT8 calibrated on vtest.avi: cosine to FP32 {quality['cosine_mean']:.4f} (min {quality['cosine_min']:.4f}) "
          f"on {quality['frames']} held-out frames")
    assert quality["gate"] == "passed" and "vtest.avi" in quality["measured_on"]
    assert quality["cosine_mean"] >= quality["min_cosine_gate"]  # the gate's own requirement, on real frames


def test_training_measures_int8_on_the_real_clips_and_records_it(trained):
    on_clips = load_manifest(trained).quantization["on_clips"]
    print(f"\nINT8 vs FP32 on the real validation clips: cosine {on_clips['cosine_mean']:.4f} "
          f"(min {on_clips['cosine_min']:.4f}, {on_clips['frames']} frames)")
    assert on_clips["frames"] == on_clips["clips"] * CLIP_FRAMES and "validation clips" in on_clips["measured_on"]
    assert on_clips["gate"] == ("passed" if on_clips["cosine_mean"] >= on_clips["min_cosine_gate"] else "below")


def test_a_head_is_trained_on_real_clips_with_mirrored_views_and_validated(trained):
    training = load_manifest(trained).training
    validation = training["validation"]
    print(f"\nreal footage, held-out clips of the training videos: window {validation['window_accuracy']:.1%} "
          f"({validation['windows']} windows), step {validation['step_accuracy']:.1%}, single frame "
          f"{validation['single_frame_accuracy']:.1%} (chance {CHANCE:.0%})")
    assert training["clips_per_class"] == {m: CLIPS_PER_CLASS * len(TRAIN_VIDEOS) for m in MOTIONS}
    # One augmented view per training clip; a mirrored pan is the other pan (the flip map).
    augmentation = training["augmentation"]
    assert augmentation["view_clips"] == training["train_clips"] and augmentation["flip_map"]["pan_left"] == "pan_right"
    # Every validation clip was decoded and scored: each gives the same number of windows.
    per_clip = validation["windows"] // training["validation_clips"]
    assert per_clip >= 1 and validation["windows"] == per_clip * training["validation_clips"]
    assert validation["chance"] == pytest.approx(CHANCE)


def test_the_head_is_scored_on_a_video_it_never_saw(held_out):
    for precision, figures in held_out.items():
        print(f"\nreal footage, held-out video (cup.mp4), {precision} backbone: window {figures['window_accuracy']:.1%} "
              f"({figures['windows']} windows), step {figures['step_accuracy']:.1%}, single frame "
              f"{figures['single_frame_accuracy']:.1%} (chance {figures['chance']:.0%})")
    # Every clip of the held-out video was decoded and scored: each 16-frame clip gives its windows.
    windows_per_clip = held_out["int8"]["windows"] // (CLIPS_PER_CLASS * len(MOTIONS))
    assert windows_per_clip >= 1 and held_out["int8"]["windows"] == windows_per_clip * CLIPS_PER_CLASS * len(MOTIONS)
    assert set(held_out) == {"fp32", "int8"} and held_out["int8"]["chance"] == pytest.approx(CHANCE)


@pytest.mark.parametrize("video", VIDEOS)
def test_edge_run_runs_each_real_video_end_to_end(trained, footage, video, tmp_path):
    out = tmp_path / "results.jsonl"
    code = run_main(["--engines", str(trained), "--source", str(footage / video), "--emit", "both", "--max-frames", "40",
                     "--out", str(out), "--backend", "cpu"])
    assert code == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    steps = [r for r in results if r["mode"] == "step"]
    windows = [r for r in results if r["mode"] == "window"]
    assert [r["frame"] for r in steps] == list(range(40))  # a file: every frame, in order, none dropped
    assert [r["frame"] for r in windows] == list(range(WINDOW - 1, 40, 4))  # one per stride once W frames are in
    assert all(r["label"] in MOTIONS and abs(sum(r["probs"].values()) - 1) < 1e-4 for r in results)
