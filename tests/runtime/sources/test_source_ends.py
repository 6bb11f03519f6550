"""Sources that end, skip and say what they lost: paced files end, bad images are skipped and
counted, a decoder that stops early is reported, FFmpeg's own noise stays off stderr."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from helpers import corrupt_mp4

from runtime import Pipeline, PipelineConfig, load_manifest, open_engines
from runtime.errors import EXIT_SOURCE, EXIT_USAGE, UsageError
from runtime.mailbox import DropPolicy
from runtime.sources import SourceError, VideoFileSource, open_source
from runtime.sources.demo import write_demo_video

W, H = 64, 48


def edge_run(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def records(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary_count(stderr, name):
    match = re.search(rf"\b{name} (\d+)", stderr)
    assert match, stderr
    return int(match.group(1))


def image_folder(folder, count, bad=()):
    """`count` images 00.png.. with pixel value 10*k; the names in `bad` are text files named .png."""
    folder.mkdir()
    for k in range(count):
        path = folder / f"{k:02d}.png"
        if path.name in bad:
            path.write_text("this is text, not a png")
        else:
            cv2.imwrite(str(path), np.full((H, W, 3), 10 * k, np.uint8))
    return folder


def run_pipeline(engines_dir, source, **config):
    config.setdefault("drop_policy", DropPolicy.NONE)
    with Pipeline(open_engines(load_manifest(engines_dir), "cpu"), [source], PipelineConfig(**config)) as pipeline:
        results = list(pipeline)
    return results, pipeline.stats.streams[0]


# -- 1. paced (realtime) finite sources end at their end --------------------------------------------------------

def test_realtime_sources_are_live_but_finite_and_cameras_are_not(tmp_path):
    video = tmp_path / "v.avi"
    write_demo_video(video, num_frames=4, width=W, height=H)
    folder = image_folder(tmp_path / "imgs", 2)
    for uri in (video, folder, "demo"):
        with open_source(str(uri), realtime=True, width=W, height=H) as source:
            assert source.live and source.finite, uri
        with open_source(str(uri), width=W, height=H) as source:
            assert not source.live and source.finite, uri


@pytest.mark.parametrize("threaded", [True, False])
def test_a_realtime_video_ends_at_its_end_without_replaying(engines_dir, tmp_path, threaded):
    # given a 24-frame video paced at 120 fps, read with back-pressure so pacing drops nothing it need not
    video = tmp_path / "v.avi"
    write_demo_video(video, num_frames=24, width=W, height=H, fps=120)
    source = open_source(str(video), realtime=True)
    # when the pipeline runs it with no frame limit
    results, counters = run_pipeline(engines_dir, source, threaded=threaded)
    # then the run ends: each frame at most once, in order, and no reconnect
    indices = [r.frame_index for r in results]
    assert counters.reconnects == 0 and counters.resets.get("source restart", 0) == 0
    assert indices == sorted(set(indices)) and indices[-1] <= 23
    assert len(results) + source.dropped == 24


def test_edge_run_realtime_folder_ends_with_every_image_counted(engines_dir, tmp_path):
    folder = image_folder(tmp_path / "imgs", 8)
    done = edge_run("--engines", engines_dir, "--backend", "cpu", "--source", folder, "--realtime", "--fps", 40,
                    "--drop-policy", "none")
    assert done.returncode == 0, done.stderr
    frames = [r["frame"] for r in records(done.stdout)]
    assert frames == sorted(set(frames)) and frames[-1] <= 7
    assert summary_count(done.stderr, "reconnects") == 0
    assert summary_count(done.stderr, "frames") == len(frames)


def test_edge_run_realtime_video_ends(engines_dir, tmp_path):
    video = tmp_path / "v.avi"
    write_demo_video(video, num_frames=30, width=W, height=H, fps=60)
    done = edge_run("--engines", engines_dir, "--backend", "cpu", "--source", video, "--realtime", timeout=120)
    assert done.returncode == 0, done.stderr
    frames = [r["frame"] for r in records(done.stdout)]
    assert frames and frames == sorted(set(frames)) and frames[-1] <= 29
    assert summary_count(done.stderr, "reconnects") == 0


# -- 2. unreadable images are skipped and counted ----------------------------------------------------------

def test_a_bad_image_among_eight_is_skipped_counted_and_named(engines_dir, tmp_path, caplog):
    folder = image_folder(tmp_path / "imgs", 8, bad={"03.png"})
    caplog.set_level(logging.WARNING)
    results, counters = run_pipeline(engines_dir, open_source(str(folder)))
    assert [r.frame_index for r in results] == [0, 1, 2, 4, 5, 6, 7]
    assert counters.corrupt == 1 and counters.reconnects == 0
    assert results[3].dropped == 1  # the gap the skipped image left
    assert sum("03.png" in r.getMessage() for r in caplog.records) == 1


def test_edge_run_folder_with_a_bad_image_exits_0_and_says_so(engines_dir, tmp_path):
    folder = image_folder(tmp_path / "imgs", 8, bad={"05.png"})
    done = edge_run("--engines", engines_dir, "--backend", "cpu", "--source", folder)
    assert done.returncode == 0, done.stderr
    assert [r["frame"] for r in records(done.stdout)] == [0, 1, 2, 3, 4, 6, 7]
    assert summary_count(done.stderr, "corrupt") == 1
    assert "05.png" in done.stderr and "Traceback" not in done.stderr


def test_bad_images_at_the_start_are_counted_before_the_first_good_one(tmp_path):
    folder = image_folder(tmp_path / "imgs", 4, bad={"00.png", "01.png"})
    with open_source(str(folder)) as source:
        frames = list(source)
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.image.size == 0 for f in frames] == [True, True, False, False]
    assert int(frames[2].image.mean().round()) == 20
    assert [p.name for p in source.unreadable] == ["00.png", "01.png"]


def test_a_folder_with_nothing_readable_fails_at_open_naming_the_files(tmp_path):
    folder = image_folder(tmp_path / "imgs", 3, bad={"00.png", "01.png", "02.png"})
    with pytest.raises(SourceError, match="none of its 3 images") as raised:
        open_source(str(folder))
    assert raised.value.exit_code == EXIT_SOURCE and "00.png" in str(raised.value)


@pytest.mark.parametrize("only_bad", ["folder", "file"])
def test_edge_run_with_nothing_readable_exits_4(engines_dir, tmp_path, only_bad):
    folder = image_folder(tmp_path / "imgs", 2, bad={"00.png", "01.png"})
    target = folder if only_bad == "folder" else folder / "00.png"
    done = edge_run("--engines", engines_dir, "--backend", "cpu", "--source", target)
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("edge-run: error:")]
    assert len(errors) == 1 and "00.png" in errors[0]


# -- 3. a decoder that stops early says so ---------------------------------------------------------------------

def truncated_video(tmp_path, frames=120):
    path = tmp_path / "cut.avi"
    write_demo_video(path, num_frames=frames, width=W, height=H)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_video_warns_with_both_numbers_and_exposes_the_missing_count(tmp_path, caplog):
    path = truncated_video(tmp_path)
    caplog.set_level(logging.WARNING)
    with open_source(str(path)) as source:
        assert isinstance(source, VideoFileSource) and source.frame_count == 120
        frames = list(source)
        assert source.read() is None and source.read() is None  # the end, said once
    decoded = len(frames)
    assert 0 < decoded < 120 and source.missing_frames == 120 - decoded
    warnings = [r.getMessage() for r in caplog.records if "decoder stopped" in r.getMessage()]
    assert len(warnings) == 1
    assert f"after {decoded} of the 120 frames" in warnings[0] and f"{120 - decoded} frames missing" in warnings[0]


def test_a_complete_video_misses_nothing(tmp_path, caplog):
    path = tmp_path / "whole.avi"
    write_demo_video(path, num_frames=20, width=W, height=H)
    caplog.set_level(logging.WARNING)
    with open_source(str(path)) as source:
        assert len(list(source)) == 20
    assert source.missing_frames == 0 and not any("decoder stopped" in r.getMessage() for r in caplog.records)


def test_a_paced_reader_that_skips_to_the_end_of_a_truncated_video_still_counts_the_loss(tmp_path):
    path = truncated_video(tmp_path, frames=60)
    with open_source(str(path), realtime=True, fps=10000) as source:
        delivered = 0
        while source.read() is not None:
            delivered += 1
    assert source.missing_frames > 0 and source.missing_frames == 60 - delivered - source.dropped


# -- 4. FFmpeg's own log stays off stderr ------------------------------------------------------------------------

CORRUPT_READER = """
import logging, sys
logging.basicConfig(level=sys.argv[2], format="edge-run: %(levelname)s %(message)s")
from runtime.sources import open_source
source = open_source(sys.argv[1])
print("frames", sum(1 for _ in source))
"""


def test_ffmpeg_noise_for_a_corrupt_file_stays_off_stderr_below_debug(tmp_path):
    path = corrupt_mp4(tmp_path / "corrupt.mp4")

    # a fresh process, as a user starts it: not the switch an earlier test's source set in this one
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_FFMPEG_")}

    def read(level):
        done = subprocess.run([sys.executable, "-c", CORRUPT_READER, path, level], capture_output=True, text=True,
                              timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("frames ") and done.stdout.count("\n") == 1  # no FFmpeg line on stdout
        return done.stderr.splitlines()

    # at DEBUG FFmpeg's decoder complains raw, once per damaged row: the file is noisy
    noisy = read("DEBUG")
    assert sum(line.startswith("[mpeg4 @") for line in noisy) >= 20, noisy
    # at the default level only the project's own lines remain: the loss, said once
    quiet = read("WARNING")
    assert all(line.startswith("edge-run: WARNING") for line in quiet) and len(quiet) <= 1, quiet


# -- 5. a negative demo seed is a usage error ----------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["demo:-5", "demo:x", "demo:"])
def test_a_bad_demo_seed_is_a_usage_error_naming_the_uri(uri):
    with pytest.raises(UsageError, match=re.escape(repr(uri))):
        open_source(uri)


def test_edge_run_demo_negative_seed_exits_2(engines_dir):
    done = edge_run("--engines", engines_dir, "--backend", "cpu", "--source", "demo:-5", "--max-frames", 3)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Traceback" not in done.stderr and "demo:-5" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("edge-run: error:")
