"""No result lost with exit 0: a full disk, /dev/full or a bad --out path end the run with the right code and say so."""
from __future__ import annotations

import errno
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import REPO

from runtime.errors import EXIT_FAILED, EXIT_USAGE, UsageError
from runtime.result import Result
from runtime.sinks import FanOut, JsonLinesSink, OutputLost
from runtime.stats import SinkLoss

LABELS = ("a", "b")


def result(frame: int) -> Result:
    return Result(stream=0, frame_index=frame, capture_time=1.0e9 + frame, mode="step", label="a", score=0.9,
                  probabilities=(0.9, 0.1), latency=0.01, dropped=0, source="demo:0")


class FillingFile(io.FileIO):
    """A real file on a disk with `room` bytes left: a write that does not fit is cut short, the next one fails."""

    def __init__(self, path, room: int, error: int = errno.ENOSPC) -> None:
        super().__init__(path, "ab")
        self.room = room
        self.error = error

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(self.error, os.strerror(self.error))
        taken = super().write(bytes(data)[: self.room])
        self.room -= taken
        return taken


def complete_lines(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), f"partial last line: {text[-80:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def line_length(frame: int) -> int:
    return len(json.dumps(result(frame).to_json(LABELS), separators=(",", ":"))) + 1


# The sink itself ---------------------------------------------------------------------------------
def test_a_write_cut_short_is_removed_and_nothing_more_is_written(tmp_path):
    # given a results file that already holds a line, on a disk with room for 3 more lines and half of a 4th
    path = tmp_path / "results.jsonl"
    path.write_text('{"earlier":1}\n')
    room = sum(line_length(f) for f in range(3)) + line_length(3) // 2
    sink = JsonLinesSink(FillingFile(path, room), LABELS, close_stream=True, name=str(path))
    # when 6 results arrive (and the disk gets room again before the last two)
    for frame in range(4):
        sink(result(frame))
    sink.stream.room = 10_000
    for frame in range(4, 6):
        sink(result(frame))
    sink.close()
    # then the file ends with the 3rd whole line: the half line is gone and nothing was appended after the failure
    lines = complete_lines(path)
    assert lines[0] == {"earlier": 1} and [line["frame"] for line in lines[1:]] == [0, 1, 2]
    assert (sink.written, sink.lost) == (3, 3)
    assert sink.lost_why == "3 not written after a failed write: No space left on device"


@pytest.mark.parametrize("error", [errno.EIO, errno.EFBIG, errno.EPIPE])
def test_a_write_that_fails_outright_leaves_the_file_as_it_was(tmp_path, error):
    path = tmp_path / "results.jsonl"
    sink = JsonLinesSink(FillingFile(path, line_length(0) + line_length(1), error), LABELS, close_stream=True)
    for frame in range(5):
        sink(result(frame))
    sink.close()
    assert [line["frame"] for line in complete_lines(path)] == [0, 1]
    assert (sink.written, sink.lost) == (2, 3) and os.strerror(error) in sink.lost_why


def test_a_text_stream_that_breaks_counts_what_it_lost():
    class BrokenPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    sink = JsonLinesSink(BrokenPipe(), LABELS, name="stdout")
    for frame in range(4):
        sink(result(frame))
    assert (sink.written, sink.lost) == (0, 4) and "Broken pipe" in sink.lost_why


def test_to_path_refuses_a_missing_folder_and_a_directory_before_creating_anything(tmp_path):
    with pytest.raises(UsageError, match="does not exist") as missing:
        JsonLinesSink.to_path(str(tmp_path / "nope" / "r.jsonl"), LABELS)
    with pytest.raises(UsageError, match="is a directory"):
        JsonLinesSink.to_path(str(tmp_path), LABELS)
    assert missing.value.exit_code == EXIT_USAGE and "\n" not in str(missing.value)
    assert list(tmp_path.iterdir()) == []


def test_fanout_counts_what_each_sink_lost_and_why(tmp_path):
    # given three sinks behind their workers: one whose disk fills, one that raises, one stuck on a dead peer
    full = JsonLinesSink(FillingFile(tmp_path / "r.jsonl", line_length(0)), LABELS, close_stream=True, name="r.jsonl")
    release = threading.Event()

    def raising(_result):
        raise ConnectionError("peer gone")

    def stuck(_result):
        release.wait(30)

    stuck.name = "stuck"
    fanout = FanOut([full, raising, stuck])
    try:
        # when 5 results are offered and the sinks get 0.5 s to finish
        for frame in range(5):
            fanout(result(frame))
        assert fanout.close(timeout=0.5) is False
        losses = {loss.sink: loss for loss in fanout.losses()}
        exposition = {m.name: {s.labels["sink"]: s.value for s in m.samples} for m in fanout.metrics()}
    finally:
        release.set()
    # then each names its count and its reason, in the summary's terms and in /metrics
    assert losses["r.jsonl"] == SinkLoss("r.jsonl", 4, "4 not written after a failed write: No space left on device")
    assert losses["raising"] == SinkLoss("raising", 5, "5 raised on")
    assert losses["stuck"] == SinkLoss("stuck", 5, "5 still queued at the stop timeout")
    assert exposition["edge_sink_lost"] == {"r.jsonl": 4, "raising": 5, "stuck": 5}
    error = OutputLost.from_losses(fanout.losses())
    assert error.exit_code == EXIT_FAILED and str(error).startswith("14 result(s) lost: r.jsonl: 4 not written")


# edge-run end to end -----------------------------------------------------------------------------
def edge_run(engines, *args, **kwargs):
    return subprocess.run([sys.executable, "-m", "runtime.cli", "--engines", str(engines), "--source", "demo", "--backend", "cpu",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=_env(), **kwargs)


def _env():
    env = dict(os.environ)
    env.pop("STATE_DIRECTORY", None)
    return env


def lost_in_summary(stderr: str, where: str) -> int:
    found = re.findall(rf"^edge-run: output lost: (\d+) result\(s\) to {re.escape(where)} \(", stderr, re.MULTILINE)
    assert len(found) == 1, stderr
    return int(found[0])


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _small_tmpfs(folder: Path) -> bool:
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode == 0


@pytest.mark.parametrize("disk", ["rlimit", "tmpfs"])
def test_a_full_disk_exits_1_names_the_loss_and_leaves_only_whole_lines(engines_dir, tmp_path, disk):
    # given --out on a disk with room for about half of 400 results: a 64 KiB tmpfs, or a 60 kB file-size limit
    folder = tmp_path / "disk"
    kwargs = {}
    if disk == "tmpfs":
        if not _small_tmpfs(folder):
            pytest.skip("cannot mount a tmpfs here (not root); the rlimit case covers the same path")
    else:
        folder.mkdir()
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited: a write past the limit fails with EFBIG
        kwargs["preexec_fn"] = _limit_file_size(60_000)
    out = folder / "results.jsonl"
    try:
        done = edge_run(engines_dir, "--max-frames", "400", "--out", str(out), **kwargs)
        lines = complete_lines(out)
    finally:
        if disk == "tmpfs":
            subprocess.run(["umount", str(folder)], check=True)
        else:
            signal.signal(signal.SIGXFSZ, previous)
    # then exit 1, the summary names the file and how many results it lost, and the file holds whole lines in order
    assert done.returncode == EXIT_FAILED, done.stderr
    lost = lost_in_summary(done.stderr, str(out))
    assert 0 < len(lines) < 400 and lost == 400 - len(lines)
    assert [line["frame"] for line in lines] == list(range(len(lines)))
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"edge-run: error: {lost} result(s) lost: {out}: ")
    print(f"full disk ({disk}): {len(lines)} whole lines written, {lost} lost, exit {done.returncode}")


def test_dev_full_exits_1_and_counts_every_result(engines_dir):
    done = edge_run(engines_dir, "--max-frames", "50", "--out", "/dev/full")
    assert done.returncode == EXIT_FAILED, done.stderr
    assert lost_in_summary(done.stderr, "/dev/full") == 50
    assert done.stderr.splitlines()[-1] == ("edge-run: error: 50 result(s) lost: /dev/full: 50 not written after a failed "
                                            "write: No space left on device")


@pytest.mark.parametrize("where", ["missing folder", "directory"])
def test_out_that_cannot_be_a_file_exits_2_with_one_line_and_creates_nothing(engines_dir, tmp_path, where):
    out = tmp_path / "missing" / "r.jsonl" if where == "missing folder" else tmp_path
    done = edge_run(engines_dir, "--max-frames", "5", "--out", str(out))
    assert done.returncode == EXIT_USAGE
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(f"edge-run: error: --out {out}: ")
    assert done.stdout == "" and list(tmp_path.iterdir()) == []


def test_out_on_a_read_only_file_system_exits_2(engines_dir, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (not root)")
    try:
        done = edge_run(engines_dir, "--max-frames", "5", "--out", str(folder / "r.jsonl"))
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert done.returncode == EXIT_USAGE
    assert done.stderr == f"edge-run: error: --out {folder / 'r.jsonl'}: cannot write there: Read-only file system\n"


def test_a_clean_run_loses_nothing_and_says_nothing_about_loss(engines_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    done = edge_run(engines_dir, "--max-frames", "20", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert [line["frame"] for line in complete_lines(out)] == list(range(20))
    assert "output lost" not in done.stderr
