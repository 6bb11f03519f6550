"""Clip-consistent augmentation: one draw per clip applied to all its frames; flips carry a label map."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from export.training.augment import AugmentError, ClipAugmentation, parse_flip_map
from export.training.clips import ClipRef, augmented_views, demo_clips, read_clip
from runtime.manifest import InputSpec
from runtime.preprocess import Preprocessor

IDENTITY = dict(keep=1.0, x=0.0, y=0.0, flip=False, brightness=0.0, contrast=1.0, saturation=1.0)
DEMO_MAP = parse_flip_map("move_left:move_right,rotate_cw:rotate_ccw")


def textured(seed=0, size=(48, 64)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_every_frame_of_a_clip_gets_the_same_parameters(tmp_path):
    # Given a clip whose frames are all the same picture,
    folder = tmp_path / "still" / "clip"
    folder.mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:03d}.png"), textured())
    clip = ClipRef("still", path=folder)
    preprocess = Preprocessor(InputSpec(height=32, width=32))
    original = read_clip(clip, preprocess)
    # when augmented views of it are read,
    for view in augmented_views(clip, 3, np.random.default_rng(0), DEMO_MAP):
        frames = read_clip(view, preprocess)
        # then the frames of a view are still all the same picture (one crop, flip and colour for the clip),
        assert all(np.array_equal(frames[0], frame) for frame in frames[1:])
        # and not the original picture.
        assert not np.allclose(frames[0], original[0], atol=1e-3)


def test_a_view_of_a_moving_clip_moves_as_the_clip_does():
    # Frame t is frame 0 shifted right by 2t pixels; an unflipped crop view keeps every pair of
    # frames shifted by the same amount, scaled by the crop (per-frame crops would break this).
    base = textured(1, (64, 96))
    frames = [np.roll(base, 2 * t, axis=1) for t in range(4)]
    view = ClipAugmentation(**{**IDENTITY, "keep": 0.5, "x": 0.5, "y": 0.5})
    out = [view.apply(f).astype(np.float32) for f in frames]
    # cropping half of each side doubles the shift: 4 px per frame in the view
    for t in range(1, 4):
        shift = 4 * t
        np.testing.assert_allclose(out[t][:, shift + 2:-2], out[0][:, 2:-shift - 2], atol=1)


def test_each_transform_does_what_it_says():
    left_dark = np.zeros((40, 40, 3), np.uint8)
    left_dark[:, 20:] = 255
    mirrored = ClipAugmentation(**{**IDENTITY, "flip": True}).apply(left_dark)
    assert mirrored[:, :20].min() == 255 and mirrored[:, 20:].max() == 0
    grey = np.full((8, 8, 3), 100, np.uint8)
    assert np.all(ClipAugmentation(**{**IDENTITY, "brightness": 20.0}).apply(grey) == 120)
    assert np.all(ClipAugmentation(**{**IDENTITY, "contrast": 1.5}).apply(grey) == 86)  # (100-128)*1.5+128
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 2] = 90  # red only: grey level 30
    desaturated = ClipAugmentation(**{**IDENTITY, "saturation": 0.0}).apply(colour)
    assert np.all(desaturated == 30)
    quadrants = np.zeros((40, 40, 3), np.uint8)
    quadrants[:20, :20] = 200  # top-left quadrant bright
    zoomed = ClipAugmentation(**{**IDENTITY, "keep": 0.5}).apply(quadrants)
    assert zoomed[2:-2, 2:-2].min() == 200  # the top-left quadrant fills the frame


def test_a_flip_carries_the_label_map_and_without_a_map_nothing_flips():
    clip = demo_clips(1, frames=4, size=(40, 30)).clips[1]  # a move_left clip
    assert clip.label == "move_left"
    views = augmented_views(clip, 40, np.random.default_rng(3), DEMO_MAP)
    flipped = [v for v in views if v.view.flip]
    assert 0 < len(flipped) < len(views)
    assert {v.label for v in flipped} == {"move_right"} and {v.label for v in views if not v.view.flip} == {"move_left"}
    assert all(v.demo_label == "move_left" for v in views)  # what was rendered stays the left move
    assert not any(v.view.flip for v in augmented_views(clip, 40, np.random.default_rng(3), None))


def test_a_mirrored_demo_view_is_the_mirror_of_the_rendered_clip():
    clip = demo_clips(1, frames=4, size=(40, 30)).clips[3]  # rotate_cw
    view = next(v for v in augmented_views(clip, 20, np.random.default_rng(0), DEMO_MAP) if v.view.flip)
    assert view.label == "rotate_ccw"
    spec = InputSpec(height=30, width=40)
    plain = ClipAugmentation(**{**IDENTITY, "flip": True})
    got = read_clip(ClipRef(view.label, demo=clip.demo, view=plain, demo_class="rotate_cw"), Preprocessor(spec))
    want = read_clip(clip, Preprocessor(spec))[..., ::-1]  # the rendered frames, mirrored
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_views_are_cached_apart_and_reproducible():
    clip = demo_clips(1, frames=4, size=(40, 30)).clips[0]
    views = augmented_views(clip, 3, np.random.default_rng(5), DEMO_MAP)
    keys = {clip.key} | {v.key for v in views}
    assert len(keys) == 4
    assert [v.key for v in augmented_views(clip, 3, np.random.default_rng(5), DEMO_MAP)] == [v.key for v in views]


def test_flip_map_errors_name_the_problem():
    assert parse_flip_map("a:b") == {"a": "b", "b": "a"}
    with pytest.raises(AugmentError, match="mapped twice"):
        parse_flip_map("a:b,a:c")
    with pytest.raises(AugmentError, match="not a pair"):
        parse_flip_map("a:a")
    with pytest.raises(AugmentError, match="zz not among the labels"):
        parse_flip_map("a:zz", labels=("a", "b"))


def test_training_adds_views_of_training_clips_only(tmp_path):
    pytest.importorskip("torch")
    from export.build import BuildOptions, build
    from export.training.train import TrainOptions, run_training

    engines = tmp_path / "engines"
    build(BuildOptions(out=engines, input_size=(32, 32), calib_frames=4, holdout_frames=2, int8=False, window=4, stride=2))
    options = TrainOptions(clips="demo:3", demo_frames=6, demo_size=(40, 30), engines=engines, out=tmp_path / "out",
                           precision="fp32", epochs=1, iterations=1, batch=4, hidden=8, cache_dir=tmp_path / "cache",
                           progress=False, views=2)
    training = run_training(options)
    record = training["augmentation"]
    assert record["views"] == 2 and record["view_clips"] == 2 * training["train_clips"]
    assert record["flip_map"]["move_left"] == "move_right"
    again = run_training(options)  # the same seed draws the same views: all from the cache
    assert again["augmentation"]["from_cache"] == record["view_clips"]
