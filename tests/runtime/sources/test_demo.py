"""The demo world: deterministic, labelled, and telling classes apart only over time."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from runtime.sources import is_valid_image
from runtime.sources.demo import CLASSES, Clip, DemoScene, DemoSource, render_clip, write_demo_video

W, H = 96, 72  # small frames keep the suite fast; the world scales with the frame


def _frames(scene: DemoScene, n: int) -> tuple[np.ndarray, list[str]]:
    out = np.empty((n, scene.height, scene.width, 3), np.uint8)
    labels = [scene.render_into(out[i]) for i in range(n)]
    return out, labels


def _mask(clip: Clip, t: int) -> np.ndarray:
    """Where the noise-free frame differs from the background: the object."""
    diff = cv2.absdiff(clip.render(t, noise=False), clip.background).max(axis=2)
    return diff > 20


def _centroid_x(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _clip(label: str, seed: int, frames: int = 24) -> Clip:
    return Clip(np.random.default_rng(seed), label, frames, W, H)


def test_same_seed_gives_identical_frames_and_another_seed_does_not():
    a, labels_a = _frames(DemoScene(7, W, H, clip_frames=12), 30)
    b, labels_b = _frames(DemoScene(7, W, H, clip_frames=12), 30)
    c, _ = _frames(DemoScene(8, W, H, clip_frames=12), 30)

    assert np.array_equal(a, b) and labels_a == labels_b
    assert not np.array_equal(a, c)
    assert all(is_valid_image(img) for img in a)


def test_skipping_frames_does_not_change_later_frames():
    sequential, _ = _frames(DemoScene(3, W, H, clip_frames=10), 25)

    scene = DemoScene(3, W, H, clip_frames=10)
    scene.skip(23)
    later, _ = _frames(scene, 2)

    assert np.array_equal(later, sequential[23:])


def test_labels_are_constant_within_a_clip_and_drawn_per_clip_from_classes():
    source = DemoSource(seed=1, width=32, height=24, clip_frames=4, max_frames=4 * 40).open()
    seen = [(f.label, source.current_clip, f.index) for f in source]

    assert [index for _, _, index in seen] == list(range(160))
    by_clip: dict[int, set[str]] = {}
    for label, clip, index in seen:
        assert clip == index // 4
        by_clip.setdefault(clip, set()).add(label)
    assert all(len(labels) == 1 for labels in by_clip.values())
    per_clip = [labels.pop() for _, labels in sorted(by_clip.items())]
    assert set(per_clip) <= set(CLASSES)
    assert len(set(per_clip)) >= 5  # 40 uniform draws over 6 classes
    assert source.labels == CLASSES


@pytest.mark.parametrize("seed", range(4))
def test_moving_objects_move_the_right_way_and_others_stay_put(seed):
    left, right = _clip("move_left", seed), _clip("move_right", seed)
    still, blink = _clip("still", seed), _clip("blink", seed)

    left_x = [_centroid_x(_mask(left, t)) for t in (0, 12, 23)]
    right_x = [_centroid_x(_mask(right, t)) for t in (0, 12, 23)]
    assert left_x[0] > left_x[1] > left_x[2]
    assert right_x[0] < right_x[1] < right_x[2]

    # Still: noise-free frames are identical. Blink: same place and shape, colour changes.
    assert np.array_equal(still.render(0, noise=False), still.render(23, noise=False))
    masks = [_mask(blink, t) for t in range(24)]
    assert min(_iou(masks[0], m) for m in masks) > 0.9  # anti-aliased edges differ slightly
    assert max(abs(_centroid_x(masks[0]) - _centroid_x(m)) for m in masks) < 0.5
    assert len({tuple(c) for c in blink.colours}) == 2


def test_a_blink_is_a_lamp_going_on_and_off_and_one_frame_does_not_give_it_away():
    luma = np.array([0.114, 0.587, 0.299])  # BT.601, BGR order
    for seed in range(40):
        blink = Clip(np.random.default_rng(seed), "blink", 24, W, H)
        bright, dark = sorted({tuple(c) for c in blink.colours}, key=lambda c: -(luma @ c))
        assert luma @ np.subtract(bright, dark, dtype=float) >= 120
        runs = np.diff(np.nonzero(np.any(np.diff(blink.colours.astype(int), axis=0), axis=1))[0])
        assert runs.size and runs.min() >= 2 and runs.max() <= 5  # half-periods of 2-5 frames
    # Every class shows one colour of such a pair, so a frame's brightness says nothing of the class.
    object_luma = {label: [luma @ Clip(np.random.default_rng([s, i]), label, 2, W, H).colours[0]
                           for s in range(600)] for i, label in enumerate(CLASSES)}
    means = [np.mean(v) for v in object_luma.values()]
    spreads = [np.std(v) for v in object_luma.values()]
    # 600 clips per class: a mean's standard error is about 3 grey levels
    assert max(means) - min(means) < 16 and max(spreads) - min(spreads) < 12, (means, spreads)
    assert all(s > 60 for s in spreads)  # bright and dark objects alike, in every class


@pytest.mark.parametrize("label", ["rotate_cw", "rotate_ccw"])
def test_rotation_turns_the_object_in_its_direction_on_screen(label):
    clip = Clip(np.random.default_rng(5), label, 12, 160, 120)  # bigger: crisper masks
    first, last = _mask(clip, 0), _mask(clip, 11)
    turned = np.degrees(abs(clip.angles[11] - clip.angles[0]))
    centre = tuple(float(v) for v in clip.centres[0])

    def rotated(degrees_ccw: float) -> np.ndarray:  # OpenCV: positive = counter-clockwise
        m = cv2.getRotationMatrix2D(centre, degrees_ccw, 1.0)
        return cv2.warpAffine(first.astype(np.uint8), m, (160, 120)) > 0

    as_cw, as_ccw = _iou(rotated(-turned), last), _iou(rotated(turned), last)
    expected, other = (as_cw, as_ccw) if label == "rotate_cw" else (as_ccw, as_cw)
    assert expected > 0.85 and expected > other + 0.05
    assert abs(_centroid_x(first) - _centroid_x(last)) < 2.0  # turns in place


def test_render_clip_shape_and_bad_label():
    frames = render_clip(np.random.default_rng(0), "blink", 5, 40, 30)
    assert frames.shape == (5, 30, 40, 3) and frames.dtype == np.uint8
    with pytest.raises(ValueError, match="unknown class"):
        render_clip(np.random.default_rng(0), "jump", 5, 40, 30)


def test_demo_source_renders_into_the_callers_buffer_and_restarts_on_reopen():
    with DemoSource(seed=2, width=W, height=H) as source:
        out = np.empty((H, W, 3), np.uint8)
        first = source.read(out)
        assert first.image is out and first.index == 0 and first.label in CLASSES
        kept = out.copy()
        assert source.read(out).index == 1
        source.open()  # reopen: the same world from frame 0
        again = source.read()
        assert again.index == 0 and np.array_equal(again.image, kept)
        assert not source.live and source.fps == 30.0


def test_realtime_demo_is_live_paced_and_skips_like_a_camera():
    reference = DemoSource(seed=4, width=32, height=24)
    reference.open()
    frames = [reference.read().image for _ in range(12)]

    with DemoSource(seed=4, width=32, height=24, fps=100.0, realtime=True) as source:
        assert source.live
        start = time.perf_counter()
        indices = [source.read().index for _ in range(3)]
        assert time.perf_counter() - start >= 0.018  # frames 1 and 2 are due 10 ms apart
        time.sleep(0.06)  # the reader falls ~6 frames behind
        late = source.read()
    assert indices == [0, 1, 2]
    assert late.index >= 6 and source.dropped == late.index - 3
    assert np.array_equal(late.image, frames[late.index])


def test_write_demo_video_produces_a_file_cv2_reads_back(tmp_path):
    path = tmp_path / "demo.avi"
    labels = write_demo_video(path, num_frames=20, seed=0, width=64, height=48, fps=30,
                              clip_frames=8)

    cap = cv2.VideoCapture(str(path))
    count = 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        assert image.shape == (48, 64, 3)
        count += 1
    cap.release()
    assert count == 20 and len(labels) == 20 and set(labels) <= set(CLASSES)
    assert [p.name for p in tmp_path.iterdir()] == ["demo.avi"]  # no partial file left


def test_render_speed_is_reported():
    scene = DemoScene(0, 320, 240)
    out = np.empty((240, 320, 3), np.uint8)
    frames = 240  # five clips, clip set-up included
    start = time.perf_counter()
    for _ in range(frames):
        scene.render_into(out)
    per_frame = (time.perf_counter() - start) / frames
    print(f"demo render: {per_frame * 1e6:.0f} us per 320x240 frame (clip set-up included)")
