"""C libraries' stderr lines (FFmpeg's decoder, OpenCV's back-ends) reach the user through the logger, never raw."""
from __future__ import annotations

import os
import subprocess
import sys

from helpers import corrupt_mp4

RELAY = """
import logging, os, sys
from runtime.native_log import NativeStderr
logging.basicConfig(level=logging.INFO, format="edge-run: %(levelname)s %(message)s", stream=sys.stderr)
with NativeStderr() as relay:
    os.write(2, b"[mpeg4 @ 0x1] a line a C library writes\\n")
    logging.getLogger("edge_run.test").warning("a record of our own")
    print("python's own stderr", file=sys.stderr)
print("relayed", relay.lines)
os.write(2, b"after stop: raw again\\n")
"""


def test_lines_written_to_descriptor_2_come_out_through_the_logger_and_python_keeps_the_real_stderr():
    done = subprocess.run([sys.executable, "-c", RELAY], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "edge-run: WARNING [mpeg4 @ 0x1] a line a C library writes" in lines
    assert "edge-run: WARNING a record of our own" in lines and "python's own stderr" in lines
    assert lines[-1] == "after stop: raw again"  # descriptor 2 is given back
    assert done.stdout == "relayed 1\n"  # exactly the C line crossed the pipe, no record looped back into it


def test_ffmpeg_complaints_at_debug_go_through_the_logger_and_stdout_keeps_only_results(engines_dir, tmp_path):
    source = corrupt_mp4(tmp_path / "corrupt.mp4")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_FFMPEG_")}
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--source", str(source),
                           "--log-level", "DEBUG"], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    stderr = done.stderr.splitlines()
    assert all(line.startswith("edge-run:") for line in stderr), [line for line in stderr if not line.startswith("edge-run:")]
    assert sum("[mpeg4 @" in line for line in stderr) >= 20  # the decoder's complaints, now in the log's format
    assert all(line.startswith("{") for line in done.stdout.splitlines())  # stdout: JSON lines only
