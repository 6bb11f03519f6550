"""Hot engine swap on a running edge-run: rebuilt by edge-export, picked up by --watch-engines or SIGHUP, bad sets refused.

Each test runs a real `edge-run --source demo --realtime` process and rebuilds its engines
folder with a real `edge-export`, then checks the JSON lines against an independent
reference: the demo frames, the runtime's preprocessing and the engine files run through
plain onnxruntime sessions, stepping the GRU with the state carried (or reset) as
documented.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from helpers import REPO, OnnxReference, demo_reference, free_port, get, gru_weights, metric_value, read_jsonl, wait_until

from export.graphs.gru import build_gru_step, init_gru_weights
from runtime.backends import open_engines
from runtime.manifest import GRU_STEP, load_manifest
from runtime.pipeline import Pipeline, PipelineConfig
from runtime.service.swap import EngineReloader
from runtime.sources.demo import DemoSource

FPS = "15"  # the demo paced like a 15 fps camera: few frames for the reference to recompute
# Probabilities are written with 6 decimals and the same float32 engines run in two onnxruntime
# sessions agree to ~1e-6; a state carried wrongly (reset instead of kept, or the old head) moves
# them by orders of magnitude more, which the test checks too.
ATOL = 1e-5  # the suite's equivalence bound: 6-decimal rounding (5e-7) plus session differences (~1e-6)


def start(engines: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "--engines", str(engines), "--source", "demo", "--realtime", "--fps", FPS,
         "--backend", "cpu", "--out", str(out), "--log-level", "INFO", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rebuild(engines: Path, *options: str) -> None:
    """edge-export writing another GRU head into the running folder (same shipped backbone, FP32 only)."""
    done = subprocess.run([sys.executable, "-m", "export.cli", "--out", str(engines), "--no-int8", "--window", "8", "--stride", "4",
                           "--gru-weights", "seeded", *options], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def inspect_model(engines: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "export.cli", "inspect", "--out", str(engines)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("model"))


def results_of(out: Path) -> list[dict]:
    return [row for row in read_jsonl(out) if row["mode"] == "step"]


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    return stderr


def check_switch(rows: list[dict], old_dir: Path, new_dir: Path, keep: bool) -> int:
    """Old model id, then the new one; no unexplained gap in the frame indices; every output equal to the
    reference, and not to the other state policy's. Returns the frame of the switch."""
    old_id, new_id = load_manifest(old_dir).model_id(), load_manifest(new_dir).model_id()
    models = [row["model"] for row in rows]
    switch = models.index(new_id)
    assert models[:switch] == [old_id] * switch and models[switch:] == [new_id] * (len(rows) - switch)
    assert switch > 0 and len(rows) - switch > 0
    previous = -1
    for row in rows:  # each gap is the frames the result says were dropped before it
        assert row["frame"] == previous + 1 + row["dropped"], row
        previous = row["frame"]
    frames = [row["frame"] for row in rows]
    old, new = OnnxReference(old_dir), OnnxReference(new_dir)

    def engines_for(frame: int) -> OnnxReference:
        return old if frame < frames[switch] else new

    expected = demo_reference(frames, 0, engines_for, reset_at=None if keep else frames[switch])
    other = demo_reference(frames, 0, engines_for, reset_at=frames[switch] if keep else None)
    for row in rows:
        got = np.array(list(row["probs"].values()), np.float32)
        labels = (old if row["frame"] < frames[switch] else new).manifest.labels
        assert tuple(row["probs"]) == labels
        np.testing.assert_allclose(got, expected[row["frame"]], atol=ATOL, err_msg=f"frame {row['frame']}")
    after = rows[switch:]
    assert max(np.abs(np.array(list(r["probs"].values())) - other[r["frame"]]).max() for r in after) > 10 * ATOL
    return frames[switch]


def test_watch_engines_refuses_bad_sets_then_switches_to_a_rebuilt_head_keeping_the_state(engines_dir, engines_copy, tmp_path):
    # given a running edge-run watching its engines folder, with metrics
    out, port = tmp_path / "results.jsonl", free_port()
    process = start(engines_copy, out, "--watch-engines", "--metrics-port", str(port))
    try:
        assert wait_until(lambda: len(results_of(out)) >= 10, 60), process.stderr
        metrics = f"http://127.0.0.1:{port}/metrics"
        manifest_path = engines_copy / "manifest.json"
        original = json.loads(manifest_path.read_text())

        def publish(manifest: dict) -> None:  # as edge-export does: the manifest last, atomically
            manifest_path.with_suffix(".tmp").write_text(json.dumps(manifest))
            os.replace(manifest_path.with_suffix(".tmp"), manifest_path)

        def refused(count: int) -> bool:
            return metric_value(get(metrics)[1], "edge_engine_rollbacks_total") == count

        # when a set whose file does not match its hash appears: refused, counted
        corrupt = json.loads(json.dumps(original))
        next(e for e in corrupt["engines"] if e["role"] == GRU_STEP)["sha256"] = "0" * 64
        publish(corrupt)
        assert wait_until(lambda: refused(1), 30)
        def with_head(weights: dict, name: str) -> dict:  # the manifest with its GRU step file replaced
            path = engines_copy / name
            path.write_bytes(build_gru_step(weights).SerializeToString())
            manifest = json.loads(json.dumps(original))
            entry = next(e for e in manifest["engines"] if e["role"] == GRU_STEP and e["format"] == "onnx")
            entry["file"], entry["sha256"] = name, hashlib.sha256(path.read_bytes()).hexdigest()
            return manifest

        # a set whose GRU disagrees with its manifest (hidden size 128, the manifest says 256): refused
        publish(with_head(init_gru_weights(576, 128, 6, seed=1), "gru_step_h128.onnx"))
        assert wait_until(lambda: refused(2), 30)
        # a head that gives NaN in its first frames: refused
        poisoned = init_gru_weights(576, 256, 6, seed=1)
        poisoned["weight_hh"][0, 0] = np.nan
        publish(with_head(poisoned, "gru_step_nan.onnx"))
        assert wait_until(lambda: refused(3), 30)
        # and the run went on on the old engines all along
        before = len(results_of(out))
        assert wait_until(lambda: len(results_of(out)) > before + 5, 30)
        assert {row["model"] for row in results_of(out)} == {load_manifest(engines_dir).model_id()}

        # when edge-export rebuilds the folder with another GRU head (same backbone, labels, hidden size)
        rebuild(engines_copy, "--seed", "4")
        new_id = inspect_model(engines_copy)
        assert wait_until(lambda: sum(row["model"] == new_id for row in results_of(out)) >= 10, 60)
        text = get(metrics)[1]
        assert metric_value(text, "edge_engine_swaps_total") == 1
        assert metric_value(text, "edge_engine_rollbacks_total") == 3
        assert metric_value(text, "edge_model_info", model=new_id) == 1
    finally:
        stderr = stop(process)
    # then it switched without a restart, kept the state, and said so
    assert "state kept" in stderr and "head changed" in stderr
    check_switch(results_of(out), engines_dir, engines_copy, keep=True)


def test_sighup_switches_to_a_head_with_other_labels_resetting_the_state(engines_dir, engines_copy, tmp_path):
    # given a running edge-run that does not watch its folder
    out = tmp_path / "results.jsonl"
    process = start(engines_copy, out)
    try:
        assert wait_until(lambda: len(results_of(out)) >= 10, 60)
        # when the folder is rebuilt with a head of other labels, nothing changes until SIGHUP
        rebuild(engines_copy, "--seed", "5", "--labels", "left,right,none")
        new_id = inspect_model(engines_copy)
        time.sleep(2.5)  # 2.5 watch periods: a process that did watch would have switched by now
        assert new_id not in {row["model"] for row in results_of(out)}
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: sum(row["model"] == new_id for row in results_of(out)) >= 10, 60)
    finally:
        stderr = stop(process)
    # then every stream restarted from a zero state, and the log says why
    assert "engine swap: labels changed" in stderr
    check_switch(results_of(out), engines_dir, engines_copy, keep=False)



def poisoned_head(weights: dict, feature: int, below: float) -> bytes:
    """A GRU step that is the one `weights` give, except that its logits are NaN whenever feature `feature` is
    below `below` (logits + 0 * sqrt(x[feature] - below)): finite on some frames, not on others."""
    model = build_gru_step(weights)
    graph = model.graph
    producer = next(node for node in graph.node if "logits" in node.output)
    producer.output[list(producer.output).index("logits")] = "logits_raw"
    graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array([feature], np.int64), "poison_start"),
        onnx.numpy_helper.from_array(np.array([feature + 1], np.int64), "poison_end"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "poison_axis"),
        onnx.numpy_helper.from_array(np.array(below, np.float32), "poison_below"),
        onnx.numpy_helper.from_array(np.array(0.0, np.float32), "poison_zero"),
    ])
    graph.node.extend([
        onnx.helper.make_node("Slice", ["x", "poison_start", "poison_end", "poison_axis"], ["poison_x"]),
        onnx.helper.make_node("Sub", ["poison_x", "poison_below"], ["poison_d"]),
        onnx.helper.make_node("Sqrt", ["poison_d"], ["poison_r"]),
        onnx.helper.make_node("Mul", ["poison_r", "poison_zero"], ["poison_nan"]),
        onnx.helper.make_node("Add", ["logits_raw", "poison_nan"], ["logits"]),
    ])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_set_that_gives_nan_on_real_frames_after_the_switch_is_switched_back_with_the_old_state(engines_dir, tmp_path):
    # given a head that passes the smoke run (a grey frame) but gives NaN on some demo frames
    reference = OnnxReference(engines_dir)
    grey = reference.backbone.run(None, {reference.backbone.get_inputs()[0].name: np.zeros_like(reference.image)})[0][0]
    source = DemoSource(seed=0).open()
    demo = np.stack([reference.features(source.read().image)[0] for _ in range(40)])
    source.close()
    feature = int(np.argmax(grey - demo.min(axis=0)))
    assert grey[feature] > demo[:, feature].min()  # some demo frame lies below the grey frame on this feature
    folder = tmp_path / "engines"
    shutil.copytree(engines_dir, folder)
    head = folder / "gru_step_poisoned.onnx"
    head.write_bytes(poisoned_head(gru_weights(load_manifest(engines_dir)), feature,
                                   float(grey[feature] + demo[:, feature].min()) / 2))
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = next(e for e in manifest["engines"] if e["role"] == GRU_STEP and e["format"] == "onnx")
    entry["file"], entry["sha256"] = head.name, hashlib.sha256(head.read_bytes()).hexdigest()
    old_id = load_manifest(engines_dir).model_id()
    # and a run of the old engines, into which the reloader brings that set after 5 frames
    engines = open_engines(load_manifest(engines_dir), "cpu")
    pipeline = Pipeline(engines, [DemoSource(seed=0, max_frames=60)], PipelineConfig(threaded=False))
    reloader = EngineReloader(pipeline, folder, lambda found: open_engines(found, "cpu")).start()
    results = []
    try:
        for result in pipeline:
            results.append(result)
            if len(results) == 5:
                (folder / "manifest.json").write_text(json.dumps(manifest))
                reloader.request()
                assert wait_until(lambda: reloader.switching is not None, 30)  # loaded and handed over: the loop switches next
    finally:
        reloader.close()
        pipeline.engines.close()
    # then its NaN was caught on the loop, the old set took over again and the run went on to its end
    assert reloader.rollbacks == 1 and reloader.swaps == 0 and "switched back" in reloader.last_failure
    assert pipeline.model_id == old_id and results[-1].model == old_id and results[-1].frame_index == 59
    assert pipeline.stats.streams[0].nonfinite >= 1
    # and the old set carried on from the state it had at the switch: the frames the new set took are not in it
    mine = [r for r in results if r.model == old_id]
    expected = demo_reference([r.frame_index for r in mine], 0, lambda _frame: reference)
    for result in mine:
        np.testing.assert_allclose(result.probabilities, expected[result.frame_index], atol=ATOL)
