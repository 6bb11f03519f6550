"""`edge-run` as a user runs it: a subprocess, JSON lines on stdout, a summary on stderr, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def edge_run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def parse_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_demo_source_prints_json_lines_and_a_summary(engines_dir):
    done = edge_run("--engines", engines_dir, "--source", "demo", "--max-frames", 40, "--backend", "cpu", "--score")
    assert done.returncode == 0, done.stderr
    records = parse_lines(done.stdout)
    assert [r["frame"] for r in records] == list(range(40))
    first = records[0]
    assert set(first) >= {"stream", "frame", "time", "mode", "label", "score", "probs", "latency_ms", "dropped", "true_label"}
    assert first["mode"] == "step" and first["label"] in first["probs"]
    assert abs(sum(first["probs"].values()) - 1.0) < 1e-3
    assert "frames 40" in done.stderr and "p99" in done.stderr and "step accuracy" in done.stderr


def test_video_file_every_frame_in_order_with_windows_to_a_file(engines_dir, demo_video, tmp_path):
    out = tmp_path / "results.jsonl"
    done = edge_run("--engines", engines_dir, "--source", demo_video, "--emit", "both", "--out", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    records = parse_lines(out.read_text())
    steps = [r["frame"] for r in records if r["mode"] == "step"]
    windows = [r["frame"] for r in records if r["mode"] == "window"]
    assert steps == list(range(60))
    assert windows == list(range(7, 60, 4))  # W=8, S=4 from the test manifest
    assert all(r["dropped"] == 0 for r in records)


def test_live_paced_demo_indices_strictly_increase(engines_dir):
    done = edge_run("--engines", engines_dir, "--source", "demo", "--realtime", "--max-frames", 30, "--backend", "cpu")
    assert done.returncode == 0, done.stderr
    frames = [r["frame"] for r in parse_lines(done.stdout)]
    assert frames == sorted(set(frames)) and len(frames) >= 1


def test_missing_camera_exits_2_and_suggests_the_demo(engines_dir):
    done = edge_run("--engines", engines_dir, "--camera", 7)
    assert done.returncode == 2
    assert "camera 7" in done.stderr and "--source demo" in done.stderr


def test_missing_engines_say_which_command_to_run(tmp_path):
    done = edge_run("--engines", tmp_path / "nowhere", "--source", "demo")
    assert done.returncode == 3
    assert "edge-export --out" in done.stderr


def test_corrupt_manifest_is_refused(engines_copy):
    (engines_copy / "manifest.json").write_text("{ not json")
    done = edge_run("--engines", engines_copy, "--source", "demo", "--max-frames", 1)
    assert done.returncode == 3 and "not a readable manifest" in done.stderr


def test_other_schema_version_is_refused_with_the_rebuild_command(engines_copy):
    manifest = json.loads((engines_copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (engines_copy / "manifest.json").write_text(json.dumps(manifest))
    done = edge_run("--engines", engines_copy, "--source", "demo", "--max-frames", 1)
    assert done.returncode == 3 and "schema_version 99" in done.stderr and "edge-export" in done.stderr


def test_engine_file_that_does_not_match_its_hash_is_refused(engines_copy):
    with open(engines_copy / "gru_step.onnx", "ab") as handle:
        handle.write(b"tampered")
    done = edge_run("--engines", engines_copy, "--source", "demo", "--max-frames", 1)
    assert done.returncode == 3 and "gru_step.onnx does not match the manifest" in done.stderr


def test_engine_of_the_wrong_shape_is_refused(engines_copy):
    manifest = json.loads((engines_copy / "manifest.json").read_text())
    manifest["feature_size"] = 123
    (engines_copy / "manifest.json").write_text(json.dumps(manifest))
    done = edge_run("--engines", engines_copy, "--source", "demo", "--max-frames", 1, "--backend", "cpu")
    assert done.returncode == 3 and "the manifest's feature_size is 123" in done.stderr and "edge-export" in done.stderr


def test_unreadable_video_exits_4(engines_dir, tmp_path):
    fake = tmp_path / "clip.mp4"
    fake.write_text("not a video")
    done = edge_run("--engines", engines_dir, "--source", fake)
    assert done.returncode == 4 and "clip.mp4" in done.stderr


@pytest.mark.parametrize("backend", ["cuda", "trt-ep"])
def test_gpu_backend_on_this_machine_is_a_clear_error(engines_dir, backend):
    done = edge_run("--engines", engines_dir, "--source", "demo", "--max-frames", 1, "--backend", backend)
    assert done.returncode == 3 and "ExecutionProvider" in done.stderr


def test_native_tensorrt_without_plans_names_the_export_flag(engines_dir):
    done = edge_run("--engines", engines_dir, "--source", "demo", "--max-frames", 1, "--backend", "tensorrt")
    assert done.returncode == 3 and "--trt" in done.stderr


def test_help_lists_the_main_options():
    done = edge_run("--help")
    assert done.returncode == 0
    for option in ("--camera", "--source", "--engines", "--backend", "--emit", "--budget-ms", "--max-frames"):
        assert option in done.stdout


@pytest.mark.parametrize("command", [("runtime.cli",), ("runtime.bench",), ("export.cli",), ("export.cli", "train"),
                                     ("export.cli", "evaluate"), ("export.cli", "pretrain"), ("export.cli", "verify")])
def test_help_names_real_defaults_never_none(command):
    # an option whose default is decided at run time says so in words, not "(default: None)"
    done = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "(default: None)" not in " ".join(done.stdout.split())
