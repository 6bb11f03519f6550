"""Sources: URI dispatch, frame indices and timestamps, buffers, errors that say why."""
from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from runtime.sources import (
    CameraUnavailable,
    ImageFolderSource,
    SourceError,
    VideoFileSource,
    camera_source,
    csi_pipeline,
    gstreamer_available,
    is_valid_image,
    open_source,
)
from runtime.sources.demo import CLASSES, DemoSource, write_demo_video

W, H = 64, 48


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("video") / "demo.avi"
    write_demo_video(path, num_frames=12, seed=0, width=W, height=H, fps=30)
    return str(path)


def _write_images(folder, names_and_values):
    folder.mkdir(exist_ok=True)
    for name, value in names_and_values:
        cv2.imwrite(str(folder / name), np.full((H, W, 3), value, np.uint8))
    return folder


def test_demo_uri_gives_an_open_deterministic_demo_source():
    with open_source("demo:3", width=W, height=H) as source:
        assert isinstance(source, DemoSource) and source.seed == 3
        assert not source.live and source.fps == 30.0 and source.labels == CLASSES
        frame = source.read()
    assert frame.image.shape == (H, W, 3) and frame.label in CLASSES

    assert open_source("demo", seed=5, width=W, height=H).seed == 5


def test_video_file_is_not_live_and_yields_every_frame_in_order(video):
    with open_source(video) as source:
        assert isinstance(source, VideoFileSource)
        assert not source.live and source.fps == pytest.approx(30.0) and source.labels is None
        frames = list(source)
        assert source.read() is None  # stays at the end
    assert [f.index for f in frames] == list(range(12))
    stamps = [f.timestamp for f in frames]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    assert stamps[-1] <= time.perf_counter()
    assert all(is_valid_image(f.image) and f.image.shape == (H, W, 3) for f in frames)


def test_reading_into_a_buffer_reuses_it(video, tmp_path):
    folder = _write_images(tmp_path / "imgs", [("a.png", 1), ("b.png", 2)])
    for uri in (video, str(folder), "demo"):
        with open_source(uri, width=W, height=H) as source:
            out = np.empty((H, W, 3), np.uint8)
            first = source.read(out)
            second = source.read(out)
            assert first.image is out and second.image is out, uri
            wrong = np.empty((H + 1, W, 3), np.uint8)
            third = source.read(wrong)  # a buffer that does not fit is not used
            assert third is None or (third.image is not wrong and third.image.shape == (H, W, 3))


def test_reopening_restarts_the_index_and_closed_sources_refuse_reads(video):
    source = open_source(video)
    assert [source.read().index for _ in range(3)] == [0, 1, 2]
    source.open()
    assert source.read().index == 0
    source.close()
    with pytest.raises(SourceError, match="read"):
        source.read()


def test_image_folder_is_read_in_sorted_order_and_ignores_other_files(tmp_path):
    folder = _write_images(tmp_path / "imgs", [("b.png", 20), ("a.jpg", 10), ("C.PNG", 30),
                                                ("d.bmp", 40)])
    (folder / "notes.txt").write_text("not an image")

    with open_source(str(folder)) as source:
        assert isinstance(source, ImageFolderSource) and not source.live
        assert [p.name for p in source.files] == ["C.PNG", "a.jpg", "b.png", "d.bmp"]
        frames = list(source)
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [int(f.image.mean().round()) for f in frames] == [30, 10, 20, 40]


def test_single_image_file_is_a_one_frame_source(tmp_path):
    _write_images(tmp_path, [("one.png", 9)])
    with open_source(str(tmp_path / "one.png")) as source:
        assert source.read().index == 0 and source.read() is None


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no"):
        open_source(str(tmp_path / "empty"))


def test_corrupt_image_in_folder_is_an_empty_frame_at_its_index_naming_the_file(tmp_path, caplog):
    folder = _write_images(tmp_path / "imgs", [("a.png", 1), ("c.png", 3)])
    (folder / "b.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with open_source(str(folder)) as source:
        frames = list(source)
    assert [f.index for f in frames] == [0, 1, 2]
    assert [is_valid_image(f.image) for f in frames] == [True, False, True]
    assert [p.name for p in source.unreadable] == ["b.jpg"]
    assert sum("b.jpg" in r.getMessage() for r in caplog.records) == 1


def test_missing_path_and_non_video_file_fail_with_readable_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "nowhere.mp4"))

    fake = tmp_path / "fake.mp4"
    fake.write_text("this is text, not a video")
    with pytest.raises(SourceError, match="fake.mp4"):
        open_source(str(fake))

    with pytest.raises(SourceError, match="unknown source scheme"):
        open_source("gopher://example/feed")


@pytest.mark.skipif(os.path.exists("/dev/video0"), reason="a camera is attached")
@pytest.mark.parametrize("uri", ["0", "camera:0", "/dev/video0"])
def test_missing_camera_fails_fast_with_a_hint(uri):
    start = time.perf_counter()
    with pytest.raises(CameraUnavailable, match="--source demo") as raised:
        open_source(uri, width=640, height=480, fps=30)
    assert time.perf_counter() - start < 1.0
    assert "/dev/video0" in str(raised.value)


@pytest.mark.skipif(os.path.exists("/dev/video3"), reason="a camera is attached")
def test_camera_source_helper_raises_camera_unavailable():
    with pytest.raises(CameraUnavailable, match="camera 3"):
        camera_source(3, 640, 480, 30)


def test_unreachable_network_stream_is_camera_unavailable_and_hides_the_password():
    start = time.perf_counter()
    with pytest.raises(CameraUnavailable) as raised:
        open_source("rtsp://admin:secret@127.0.0.1:1/stream")  # nothing listens on port 1
    assert time.perf_counter() - start < 6.0  # bounded by the open timeout
    assert "secret" not in str(raised.value) and "127.0.0.1" in str(raised.value)


def test_csi_camera_builds_the_nvargus_pipeline():
    pipeline = csi_pipeline(1, 1920, 1080, 29.97)
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=(int)1920" in pipeline and "framerate=(fraction)2997/100" in pipeline
    assert pipeline.endswith("appsink drop=true max-buffers=1 sync=false")
    assert "framerate=(fraction)30/1" in csi_pipeline(0)


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer")
def test_gstreamer_routes_explain_a_build_without_gstreamer():
    with pytest.raises(SourceError, match="GStreamer") as raised:
        open_source("videotestsrc ! videoconvert ! appsink")
    assert not isinstance(raised.value, CameraUnavailable)
    with pytest.raises(CameraUnavailable, match="GStreamer"):
        open_source("csi://0")


def test_is_valid_image_accepts_only_non_empty_hxwx3_uint8():
    assert is_valid_image(np.zeros((2, 3, 3), np.uint8))
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((2, 3, 3), np.float32),
                np.zeros((2, 3), np.uint8), np.zeros((2, 3, 4), np.uint8), None, [[1, 2, 3]]):
        assert not is_valid_image(bad)


def test_realtime_file_is_live_paced_at_its_rate_and_skips_when_late(tmp_path):
    path = tmp_path / "fast.avi"
    write_demo_video(path, num_frames=20, seed=1, width=32, height=24, fps=50)

    with open_source(str(path), realtime=True) as source:
        assert source.live and source.fps == pytest.approx(50.0)
        start = time.perf_counter()
        frames = [source.read() for _ in range(4)]
        elapsed = time.perf_counter() - start
        time.sleep(0.1)  # ~5 frame periods: a camera would have moved on
        late = source.read()
        rest = list(source)

    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert elapsed >= 3 / 50 - 0.005
    gaps = np.diff([f.timestamp for f in frames])
    assert np.allclose(gaps, 1 / 50, atol=1e-6)  # capture times on the emulated camera clock
    assert late.index >= 7 and source.dropped >= 3
    indices = [late.index] + [f.index for f in rest]
    assert all(a < b for a, b in zip(indices, indices[1:])) and indices[-1] == 19


def test_realtime_folder_is_live_paced_and_counts_skipped_images_as_drops(tmp_path):
    folder = _write_images(tmp_path / "imgs", [(f"{i:02d}.png", i) for i in range(12)])

    with open_source(str(folder), fps=50, realtime=True) as source:
        assert source.live
        frames = [source.read() for _ in range(2)]
        time.sleep(0.06)  # ~3 frame periods
        late = source.read()
        assert [f.index for f in frames] == [0, 1]
        assert late.index >= 4 and source.dropped == late.index - 2
        assert int(late.image.mean().round()) == late.index  # the image at that position

        time.sleep(0.5)  # far past the last image
        assert source.read() is None
        assert source.dropped == 12 - 3  # every image not delivered, up to the end
