"""Shared fixtures: real engines built by the project's own export stage, once per session."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from export.build import BuildOptions, build

TESTS = Path(__file__).parent
DATA = TESTS / "data"


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory) -> Path:
    """Default-shaped engines (MobileNet-V3-Small 224, GRU H=256, demo labels), FP32 + INT8."""
    out = tmp_path_factory.mktemp("engines")
    build(BuildOptions(out=out, calib_frames=32, holdout_frames=8, calibration="minmax",
                       window=8, stride=4))
    return out


@pytest.fixture()
def engines_copy(engines_dir, tmp_path) -> Path:
    """A private copy a test may corrupt."""
    target = tmp_path / "engines"
    shutil.copytree(engines_dir, target)
    return target


@pytest.fixture(scope="session")
def demo_video(tmp_path_factory) -> Path:
    from runtime.sources.demo import write_demo_video

    path = tmp_path_factory.mktemp("video") / "demo.avi"
    write_demo_video(path, num_frames=60, seed=3, width=320, height=240)
    return path
