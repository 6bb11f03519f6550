"""Streams added and removed while edge-run runs, through its --sources-file; the engines' max_batch as the limit."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
from helpers import REPO, OnnxReference, demo_reference, read_jsonl, wait_until

from runtime.backends import open_engines
from runtime.manifest import load_manifest
from runtime.pipeline import Pipeline, PipelineConfig
from runtime.sources.demo import DemoSource

# Probabilities are written with 6 decimals; the same float32 engines in two onnxruntime sessions (and
# in batches of one or two rows) agree to ~1e-6, while a state not started from zero or disturbed by
# another stream moves them by far more.
ATOL = 1e-5  # the suite's equivalence bound: 6-decimal rounding (5e-7) plus session differences (~1e-6)


def of_stream(rows: list[dict], stream: int) -> list[dict]:
    return [row for row in rows if row["stream"] == stream]


def settle(out, stream: int, quiet: float = 1.5) -> bool:
    """True once `stream` has given no new result for `quiet` seconds."""
    count = len(of_stream(read_jsonl(out), stream))
    time.sleep(quiet)
    return len(of_stream(read_jsonl(out), stream)) == count


def check_against_reference(rows: list[dict], seed: int, reference: OnnxReference) -> None:
    """Frames continue with no gap but the counted drops, and every output is the reference's from a zero state."""
    previous = -1
    for row in rows:
        assert row["frame"] == previous + 1 + row["dropped"], row
        previous = row["frame"]
    expected = demo_reference([row["frame"] for row in rows], seed, lambda _frame: reference)
    for row in rows:
        np.testing.assert_allclose(list(row["probs"].values()), expected[row["frame"]], atol=ATOL, err_msg=f"frame {row['frame']}")


def test_the_sources_file_adds_and_removes_streams_while_the_others_run_on(engines_dir, tmp_path):
    # given edge-run on one demo stream listed in a sources file
    listing, out = tmp_path / "sources.txt", tmp_path / "results.jsonl"
    listing.write_text("demo:1\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--sources-file", str(listing), "--realtime",
         "--fps", "15", "--backend", "cpu", "--out", str(out), "--log-level", "INFO"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: len(of_stream(read_jsonl(out), 0)) >= 10, 60)
        # when a line is added, a stream starts; when it is removed, that stream stops
        listing.write_text("demo:1\n# a second camera\ndemo:2\n")
        assert wait_until(lambda: len(of_stream(read_jsonl(out), 1)) >= 10, 30)
        listing.write_text("demo:1\n")
        assert wait_until(lambda: settle(out, 1), 30)
        before = len(of_stream(read_jsonl(out), 0))
        assert wait_until(lambda: len(of_stream(read_jsonl(out), 0)) >= before + 10, 30)
        # and added again, it is a new stream with a new number (numbers are never reused)
        listing.write_text("demo:1\ndemo:2\n")
        assert wait_until(lambda: len(of_stream(read_jsonl(out), 2)) >= 5, 30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    rows = [row for row in read_jsonl(out) if row["mode"] == "step"]
    assert {row["stream"] for row in rows} == {0, 1, 2}
    assert {row["source"] for row in of_stream(rows, 1)} == {row["source"] for row in of_stream(rows, 2)} == {"demo:2"}
    assert "stream 1 removed" in stderr
    # then the first stream ran on as if nothing happened: its outputs equal a run of it alone
    reference = OnnxReference(engines_dir)
    check_against_reference(of_stream(rows, 0), 1, reference)
    # and each added stream started at its source's first frame from a zero state
    for stream in (1, 2):
        mine = of_stream(rows, stream)
        assert mine[0]["frame"] == mine[0]["dropped"]
        check_against_reference(mine, 2, reference)


def test_a_stream_beyond_the_engines_max_batch_is_refused_and_the_run_goes_on(engines_dir):
    # given a run whose engines take one stream at a time, already running one
    engines = open_engines(load_manifest(engines_dir), "cpu", num_streams=1)
    refused = []
    try:
        pipeline = Pipeline(engines, [DemoSource(seed=1, max_frames=12)], PipelineConfig(open_ended=True, threaded=False))
        frames = []
        for result in pipeline:
            if not frames:  # when a second stream is added
                number = pipeline.add_source(DemoSource(seed=2), on_refused=lambda n, why: refused.append((n, why)))
            frames.append((result.stream, result.frame_index))
    finally:
        engines.close()
    # then it is refused with a message that says why and how to build for more, and the first stream ran to its end
    assert refused == [(number, refused[0][1])] and number == 1
    assert "at most 1 stream" in refused[0][1] and "--max-batch" in refused[0][1]
    assert frames == [(0, index) for index in range(12)]
