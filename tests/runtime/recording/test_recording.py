"""`--record` and `edge-run replay`: features, states and results in chunks, replayed through a head offline."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import REPO, gru_weights, wait_until

from export.graphs.gru import build_gru_step, gru_step_numpy, init_gru_weights
from runtime import Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.cli import main as edge_run_main
from runtime.files import sha256_file
from runtime.manifest import GRU_STEP, save_manifest
from runtime.pipeline import PipelineState, StepRecord
from runtime.recording import Recorder, chunk_files
from runtime.result import Result

# Reproduction and agreement with an independent reference: float32 engines against the float32
# numpy GRU on the same features reach ~1e-7; the issue asks for 1e-5.
TOLERANCE = 1e-5
RESET_AT = 70  # result index before which the test asks for a reset: the recording must carry it


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def load_all(root):
    """Every chunk with numpy alone, oldest first, concatenated per key."""
    chunks = [dict(np.load(path, allow_pickle=False)) for path in chunk_files(root)]
    joined = {key: np.concatenate([c[key] for c in chunks]) for key in ("frame", "features", "probs", "reset", "state.h", "label")}
    return chunks, joined


def numpy_head(weights, features, resets, h0=None):
    """The head rolled over `features` in plain numpy, zeroing the state where `resets` says: (states, probs)."""
    h = np.zeros((1, weights["weight_hh"].shape[1]), np.float32) if h0 is None else h0[None].astype(np.float32)
    states, probs = [], []
    for feature, reset in zip(features, resets):
        if reset:
            h = np.zeros_like(h)
        h, logits = gru_step_numpy(weights, feature[None], h)
        states.append(h[0])
        probs.append(softmax(logits[0]))
    return np.array(states), np.array(probs)


@pytest.fixture(scope="module")
def recorded(engines_dir, tmp_path_factory):
    """A 120-step demo run recorded in chunks of 50, with a reset asked for at step 70."""
    root = tmp_path_factory.mktemp("recording")
    manifest = load_manifest(engines_dir)
    engines = open_engines(manifest, "cpu")
    recorder = Recorder(root, manifest.labels, manifest.feature_size, {"h": manifest.hidden_size}, 1,
                        max_bytes=10**8, chunk_frames=50)
    results = []
    with Pipeline(engines, [open_source("demo:1")], PipelineConfig(max_frames=120)) as pipeline:
        pipeline.add_observer(recorder)
        for result in pipeline:
            results.append(result)
            if len(results) == RESET_AT:
                pipeline.request_reset(0)
    recorder.close()
    engines.close()
    return root, results, manifest


def test_the_recording_holds_every_step_and_the_numpy_gru_agrees_with_it(recorded):
    root, results, manifest = recorded
    chunks, joined = load_all(root)
    # chunks of 50: 50, 50 and the 20 written at close
    assert [len(c["frame"]) for c in chunks] == [50, 50, 20]
    assert joined["frame"].tolist() == [r.frame_index for r in results]
    np.testing.assert_array_equal(joined["probs"], np.array([r.probabilities for r in results], np.float32))
    assert [manifest.labels[i] for i in joined["label"]] == [r.label for r in results]
    assert np.flatnonzero(joined["reset"]).tolist() == [0, RESET_AT]  # the first step and the asked-for reset
    assert {str(c["model"]) for c in chunks} == {manifest.identity()}
    # the recorded states are the head's own: the numpy GRU over the recorded features gives them
    states, probs = numpy_head(gru_weights(manifest), joined["features"], joined["reset"])
    np.testing.assert_allclose(joined["state.h"], states, atol=TOLERANCE)
    np.testing.assert_allclose(joined["probs"], probs, atol=TOLERANCE)
    # each chunk starts from the state the previous one ended with (zero after a reset)
    np.testing.assert_array_equal(chunks[1]["initial.h"], chunks[0]["state.h"][-1])


def run_replay(capsys, *args):
    code = edge_run_main(["replay", *map(str, args)])
    return code, capsys.readouterr().err


def test_replay_with_the_same_engines_reproduces_the_recorded_states_and_probabilities(recorded, engines_dir, tmp_path, capsys):
    root, results, manifest = recorded
    out = tmp_path / "replayed.jsonl"
    code, err = run_replay(capsys, root, "--engines", engines_dir, "--out", out)
    assert code == 0, err
    assert "reproduced with the recording's engines over 120 steps" in err
    state_error = float(err.split("max |state diff| ")[1].split(",")[0])
    prob_error = float(err.split("max |prob diff| ")[1].split()[0])
    assert state_error <= TOLERANCE and prob_error <= TOLERANCE
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    live = [r.to_json(manifest.labels) for r in results]
    assert [line["frame"] for line in lines] == [line["frame"] for line in live]
    for replayed, original in zip(lines, live):
        assert replayed["label"] == original["label"]
        assert {k: v for k, v in replayed.items() if k not in ("probs", "score")} == \
            {k: v for k, v in original.items() if k not in ("probs", "score")}
        np.testing.assert_allclose(list(replayed["probs"].values()), list(original["probs"].values()), atol=TOLERANCE)


def another_head(engines_dir, target):
    """A copy of the engines with a differently seeded GRU head (same backbone, so the features fit)."""
    shutil.copytree(engines_dir, target)
    manifest = load_manifest(target)
    weights = init_gru_weights(manifest.feature_size, manifest.hidden_size, manifest.num_classes, seed=7)
    entry = manifest.find(GRU_STEP, "onnx")
    path = target / entry.file
    path.write_bytes(build_gru_step(weights).SerializeToString())
    engines = [dataclasses.replace(e, sha256=sha256_file(path)) if e is entry else e for e in manifest.engines]
    save_manifest(dataclasses.replace(manifest, engines=engines), target)
    return weights


def test_replay_with_another_head_gives_that_heads_outputs(recorded, engines_dir, tmp_path, capsys):
    root, results, manifest = recorded
    weights = another_head(engines_dir, tmp_path / "other")
    out = tmp_path / "other.jsonl"
    code, err = run_replay(capsys, root, "--engines", tmp_path / "other", "--out", out)
    assert code == 0, err
    assert "another head than the recording's" in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    _, joined = load_all(root)
    # the other head run directly on the same features, from zero, reset where the live state was
    _, probs = numpy_head(weights, joined["features"], joined["reset"])
    np.testing.assert_allclose([list(line["probs"].values()) for line in lines], probs, atol=TOLERANCE)
    assert [line["label"] for line in lines] == [manifest.labels[i] for i in probs.argmax(axis=1)]
    assert [line["label"] for line in lines] != [r.label for r in results]  # it is another head's decision


def test_a_recording_killed_with_sigkill_is_readable_up_to_the_last_complete_chunk(engines_dir, tmp_path, capsys):
    root = tmp_path / "rec"
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "--engines", str(engines_dir), "--source", "demo", "--backend", "cpu",
         "--quiet", "--max-frames", "100000", "--record", str(root), "--record-chunk", "20"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: len(chunk_files(root)) >= 3, timeout=120), process.stderr
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        process.stderr.close()
    chunks, joined = load_all(root)  # every chunk file opens with numpy alone
    assert len(chunks) >= 3 and all(len(c["frame"]) == 20 for c in chunks)
    assert joined["frame"].tolist() == list(range(20 * len(chunks)))  # nothing missing before the chunk in progress
    code, err = run_replay(capsys, root, "--engines", engines_dir, "--quiet")
    assert code == 0, err


def test_the_size_bound_holds_while_recording_and_the_oldest_chunks_go_first(engines_dir, tmp_path):
    manifest = load_manifest(engines_dir)
    sizes = {"h": manifest.hidden_size}
    one_chunk = Recorder(tmp_path / "probe", manifest.labels, manifest.feature_size, sizes, 1, 10**8, 10).estimate
    bound = int(3.5 * one_chunk)  # room for three chunks of the upper-bound size, and fewer than ten real ones
    root = tmp_path / "rec"
    recorder = Recorder(root, manifest.labels, manifest.feature_size, sizes, 1, max_bytes=bound, chunk_frames=10)
    largest = []
    stop = threading.Event()

    def size_now() -> int:
        total = 0
        for entry in os.scandir(root / "stream0"):
            try:
                total += entry.stat().st_size if entry.is_file() else 0
            except FileNotFoundError:  # removed by the recorder between listing and stat: no longer counts
                pass
        return total

    def watch():  # the folder's size as another process would see it, temporaries included
        while not stop.is_set():
            largest.append(size_now())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    engines = open_engines(manifest, "cpu")
    with Pipeline(engines, [open_source("demo")], PipelineConfig(max_frames=100)) as pipeline:
        pipeline.add_observer(recorder)
        for _ in pipeline:
            pass
    recorder.close()
    engines.close()
    stop.set()
    watcher.join()
    kept = [path.name for path in chunk_files(root)]
    assert 3 <= len(kept) < 10
    assert kept == [f"chunk-{i:06d}.npz" for i in range(10 - len(kept), 10)]  # the newest of the ten, the oldest removed
    assert max(largest) <= bound and sum(path.stat().st_size for path in chunk_files(root)) <= bound
    assert recorder.chunks_written == 10 and recorder.chunks_removed == 10 - len(kept) and recorder.lost_steps == 0


def test_a_bound_smaller_than_one_chunk_and_window_only_runs_are_refused(engines_dir, tmp_path, capsys):
    base = ["--engines", str(engines_dir), "--source", "demo", "--max-frames", "5", "--quiet", "--record", str(tmp_path / "r")]
    assert edge_run_main(base + ["--record-max-mb", "0.01"]) == 2
    assert "holds less than one chunk" in capsys.readouterr().err
    assert edge_run_main(base + ["--emit", "window"]) == 2
    assert "--emit step or both" in capsys.readouterr().err
    assert edge_run_main(["replay", str(tmp_path / "empty"), "--engines", str(engines_dir)]) == 4
    assert "no recording here" in capsys.readouterr().err


def test_a_head_with_several_states_is_recorded_one_array_per_state_name(tmp_path):
    # given a head carrying h and c (an LSTM layer) of different widths, stepped 25 times with a reset before step 13
    labels, widths, rng = ("a", "b"), {"h": 4, "c": 3}, np.random.default_rng(0)
    recorder = Recorder(tmp_path, labels, 5, widths, 1, max_bytes=10**7, chunk_frames=10)
    start = {name: rng.standard_normal((1, width)).astype(np.float32) for name, width in widths.items()}
    recorder.begin(PipelineState(states=start, streams=()))
    fed = {name: rng.standard_normal((25, width)).astype(np.float32) for name, width in widths.items()}
    for t in range(25):
        result = Result(0, t, 1000.0 + t, "step", "a", 0.6, (0.6, 0.4), 0.001, 0, None, "test")
        recorder.step(StepRecord(result, np.full(5, t, np.float32), {name: rows[t] for name, rows in fed.items()},
                                 fresh=t == 13, scorable=False, model="m"))
    recorder.close()
    # then each chunk holds one array per state name, and each chunk's initial state is the one before its first step
    chunks = [dict(np.load(path, allow_pickle=False)) for path in chunk_files(tmp_path)]
    assert [len(c["frame"]) for c in chunks] == [10, 10, 5]
    assert all(list(c["state_names"]) == ["h", "c"] for c in chunks)
    for name in widths:
        np.testing.assert_array_equal(np.concatenate([c[f"state.{name}"] for c in chunks]), fed[name])
        np.testing.assert_array_equal(chunks[0][f"initial.{name}"], start[name][0])  # restored, not zero
        np.testing.assert_array_equal(chunks[1][f"initial.{name}"], fed[name][9])
        np.testing.assert_array_equal(chunks[2][f"initial.{name}"], fed[name][19])
    assert np.flatnonzero(np.concatenate([c["reset"] for c in chunks])).tolist() == [13]
