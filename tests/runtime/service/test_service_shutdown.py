"""SIGTERM to a running `edge-run`: exit 0, every processed frame has its line, the checkpoint resumes the state."""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from helpers import REPO, NotifyListener, free_port, get

from runtime import Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.service.checkpoint import CHECKPOINT_NAME


def edge_run_args(engines, out, state):
    return [sys.executable, "-m", "runtime.cli", "--engines", str(engines), "--source", "demo", "--backend", "cpu",
            "--out", str(out), "--state-dir", str(state), "--log-level", "INFO"]


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


F_SETPIPE_SZ = 1031  # fcntl command (Linux), not exported by Python's fcntl before 3.10 on every platform


def results_so_far(port: int) -> int:
    try:
        text = get(f"http://127.0.0.1:{port}/metrics")[1]
    except OSError:  # not serving yet
        return 0
    found = re.search(r'^edge_results_total\{stream="0"\} (\S+)', text, re.M)
    return int(float(found.group(1))) if found else 0


def wait_for_lines(path, count, process, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path(path).exists() and len(Path(path).read_text().splitlines()) >= count:
            return
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} lines after {timeout} s")


def test_sigterm_flushes_every_line_writes_the_checkpoint_and_a_restart_resumes(engines_dir, tmp_path):
    out, state = tmp_path / "results.jsonl", tmp_path / "state"
    # Unix socket paths are limited to ~100 bytes: pytest's tmp_path can be longer.
    sock_dir = tempfile.mkdtemp(prefix="nfy", dir="/tmp")
    listener = NotifyListener(os.path.join(sock_dir, "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000", "PYTHONUNBUFFERED": "1"}
    env.pop("STATE_DIRECTORY", None)
    try:
        # given edge-run running as a service on a long deterministic source
        port = free_port()
        process = subprocess.Popen(edge_run_args(engines_dir, out, state) + ["--max-frames", "100000", "--metrics-port", str(port)],
                                   cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_lines(out, 30, process)
        assert listener.wait_for("READY=1") and listener.wait_for("WATCHDOG=1")
        # (and while it runs, its health and metrics are served on loopback)
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert 'edge_frames_total{stream="0"}' in get(f"http://127.0.0.1:{port}/metrics")[1]
        # when systemd stops it
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        listener.close()
        os.unlink(listener.address)
        os.rmdir(sock_dir)
    # then it exits 0 promptly, having said STOPPING, with one line per processed frame, in order
    assert process.returncode == 0, stderr
    assert took < 10.0, f"took {took:.1f} s to stop"
    assert listener.with_field("STOPPING=1")
    first = lines(out)
    processed = int(stderr.split("edge-run: frames ")[1].split()[0])
    assert [r["frame"] for r in first] == list(range(processed)) and processed >= 30
    assert (state / CHECKPOINT_NAME).is_file()
    print(f"SIGTERM to exit: {took * 1e3:.0f} ms after {processed} frames")

    # when it starts again on the same source
    out2 = tmp_path / "after.jsonl"
    again = subprocess.run(edge_run_args(engines_dir, out2, state) + ["--max-frames", "3"], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "state restored from" in again.stderr and f"resumes at frame {processed}" in again.stderr
    second = lines(out2)
    assert [r["frame"] for r in second] == [processed, processed + 1, processed + 2]

    # then its first steps are the ones an uninterrupted run takes at those frames
    manifest = load_manifest(engines_dir)
    reference = list(Pipeline(open_engines(manifest, "cpu"), [open_source("demo")],
                              PipelineConfig(max_frames=processed + 3)))
    for record, expected in zip(first[-2:] + second, reference[processed - 2:]):
        assert record["frame"] == expected.frame_index
        np.testing.assert_allclose(list(record["probs"].values()), expected.probabilities, atol=1e-5)
    # and not what a fresh start at that frame would have given
    source = open_source("demo")
    for _ in range(processed):
        source.read()
    fresh = list(Pipeline(open_engines(manifest, "cpu"), [source], PipelineConfig(max_frames=1)))
    assert fresh[0].frame_index == processed
    assert not np.allclose(list(second[0]["probs"].values()), fresh[0].probabilities, atol=1e-4)


def test_sigterm_while_the_source_is_stalled_still_exits_0_promptly(engines_dir, tmp_path):
    # given edge-run waiting on a live source whose next frame is 2 s away (a realtime demo at 0.5 fps)
    out = tmp_path / "results.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--source", "demo", "--realtime", "--fps", "0.5",
         "--backend", "cpu", "--out", str(out), "--state-dir", str(tmp_path / "state")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(out, 1, process)
    time.sleep(0.3)  # now waiting ~2 s for the next frame
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    took = time.monotonic() - sent
    assert process.returncode == 0, stderr
    assert took < 5.0 and (tmp_path / "state" / CHECKPOINT_NAME).is_file()


def test_sigint_stops_like_sigterm_flushing_every_line_and_writing_the_checkpoint(engines_dir, tmp_path):
    # given edge-run running on a long deterministic source (Ctrl-C in a terminal sends SIGINT)
    out, state = tmp_path / "results.jsonl", tmp_path / "state"
    process = subprocess.Popen(edge_run_args(engines_dir, out, state) + ["--max-frames", "100000"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(out, 20, process)
    # when it gets SIGINT
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    # then, as for SIGTERM: exit 0, a summary, one line per processed frame in order, no traceback
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    processed = int(stderr.split("edge-run: frames ")[1].split()[0])
    assert [r["frame"] for r in lines(out)] == list(range(processed)) and processed >= 20
    # and the checkpoint it wrote resumes the next run after the last processed frame
    assert (state / CHECKPOINT_NAME).is_file()
    again = subprocess.run(edge_run_args(engines_dir, tmp_path / "after.jsonl", state) + ["--max-frames", "1"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and f"resumes at frame {processed}" in again.stderr, again.stderr


def test_a_sink_stuck_at_shutdown_makes_the_run_exit_1_within_the_stop_timeout(engines_dir, tmp_path):
    # given results written to a FIFO whose reader never reads: once the pipe (shrunk to one page) is full,
    # the sink's write blocks for good
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, F_SETPIPE_SZ, 4096)
    port = free_port()
    try:
        process = subprocess.Popen(edge_run_args(engines_dir, fifo, tmp_path / "state")
                                   + ["--stop-timeout", "2", "--metrics-port", str(port)], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # 4 KiB hold ~13 lines: 300 results processed means the sink is stuck with the rest queued
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and results_so_far(port) < 300:
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        os.close(reader)
    # then it does not hang on the stuck write: exit 1 with the summary naming the sink and what it lost
    assert process.returncode == 1, stderr
    assert "output lost: " in stderr and str(fifo) in stderr and "Traceback" not in stderr
    # 2 s stop timeout; 5x that for a loaded machine's process exit (a hang would be for ever)
    assert took < 5 * 2.0, f"took {took:.1f} s"
