"""`--clip-on`: a clip from S seconds before to S seconds after an event, its frames the source's, its sidecar the run's results."""
from __future__ import annotations

import json

import cv2
import numpy as np

from runtime.cli import main as edge_run_main
from runtime.sources.demo import DemoSource

SEED = 1  # demo:1 shows a blink that the shipped head calls with 0.71 at frame 114, with room before and after
FPS = 30  # the demo's nominal rate: 1 s is 30 frames
# Two JPEG generations (the ring at quality 90, OpenCV's MJPEG writer at its default 95) of a noisy
# 320x240 frame stay within a few grey levels on average (2-3 measured); a blank frame or another
# clip is tens of levels away. Neighbouring frames of one clip differ only in pixel noise and a little
# motion, so each frame must also be closer to its own source frame than to its neighbours.
SAME_FRAME_MEAN_ABS = 4.0


def source_frames(last):
    with DemoSource(SEED) as source:
        return [np.array(source.read().image) for _ in range(last + 1)]


def decoded(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames


def test_a_blink_event_writes_one_second_before_and_after_with_the_sources_frames_and_the_runs_results(
        engines_dir, tmp_path, capsys):
    out, clips = tmp_path / "results.jsonl", tmp_path / "clips"
    code = edge_run_main(["--engines", str(engines_dir), "--source", f"demo:{SEED}", "--max-frames", "180", "--out", str(out),
                          "--clip-on", "blink", "--clip-pre", "1", "--clip-post", "1", "--clip-dir", str(clips)])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # the trigger is the first step whose label enters {blink} with a score of at least 0.5 (the default)
    trigger = next(line for previous, line in zip([None] + lines, lines) if line["label"] == "blink" and line["score"] >= 0.5
                   and (previous is None or previous["label"] != "blink"))
    videos = sorted(clips.glob("*.avi"))
    assert len(videos) == 1  # later blinks fall within the 10 s hold-off
    sidecar = json.loads(videos[0].with_suffix(".json").read_text())
    assert sidecar["trigger"]["frame"] == trigger["frame"] and sidecar["trigger"]["label"] == "blink"
    before = [i for i in sidecar["frames"] if i < trigger["frame"]]
    after = [i for i in sidecar["frames"] if i > trigger["frame"]]
    assert abs(len(before) - FPS) <= 1 and abs(len(after) - FPS) <= 1  # 1 s each side, within one frame
    assert sidecar["frames"] == list(range(sidecar["frames"][0], sidecar["frames"][-1] + 1))  # nothing skipped
    # the clip's frames are the source's frames
    frames = decoded(videos[0])
    assert len(frames) == len(sidecar["frames"])
    reference = source_frames(sidecar["frames"][-1])
    for index, image in zip(sidecar["frames"], frames):
        errors = {k: np.abs(image.astype(np.int16) - reference[k]).mean() for k in range(index - 2, min(index + 3, len(reference)))}
        assert errors[index] <= SAME_FRAME_MEAN_ABS, (index, errors)
        assert min(errors, key=errors.get) == index  # closer to its own frame than to its neighbours
    # the sidecar's results are the run's JSON lines over the clip
    assert sidecar["results"] == [line for line in lines if sidecar["frames"][0] <= line["frame"] <= sidecar["frames"][-1]]
    assert sidecar["complete"] is True
    assert not list(clips.glob(".*"))  # no temporary left behind


def test_the_clip_folder_is_bounded_oldest_first(engines_dir, tmp_path, capsys):
    def args(folder, *extra):
        return ["--engines", str(engines_dir), "--source", f"demo:{SEED}", "--max-frames", "180", "--quiet", "--clip-on", "blink",
                "--clip-pre", "0.5", "--clip-post", "0.2", "--clip-holdoff", "0", "--clip-dir", str(folder), *extra]

    clips = tmp_path / "clips"
    assert edge_run_main(args(clips)) == 0, capsys.readouterr().err
    every = sorted(clips.glob("*.avi"))
    assert len(every) >= 3  # demo:1 blinks in and out around frames 114-150
    sizes = sorted(path.stat().st_size + path.with_suffix(".json").stat().st_size for path in every)
    bound_mb = (sizes[-1] + sizes[-2] + sizes[0] // 2) / 1e6  # room for about two clips
    again = tmp_path / "bounded"
    assert edge_run_main(args(again, "--clip-max-mb", str(bound_mb))) == 0, capsys.readouterr().err
    kept = sorted(again.glob("*.avi"))
    assert 1 <= len(kept) < len(every)
    assert [p.name.split("-")[1] for p in kept] == [p.name.split("-")[1] for p in every][-len(kept):]  # the newest ones
    assert sum(p.stat().st_size for p in again.iterdir()) <= bound_mb * 1e6
