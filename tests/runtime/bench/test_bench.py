"""`edge-bench` in its reduced mode: every section runs, and the three outputs are written.

No figure is asserted against a threshold here: timings on a shared CI machine are noise.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from runtime import load_manifest, open_engines
from runtime.bench.baselines import numpy_gru_step
from runtime.bench.cli import main
from runtime.bench.plot import plot


@pytest.fixture(scope="module")
def quick_run(engines_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    code = main(["--engines", str(engines_dir), "--out", str(out), "--quick", "--backend", "cpu", "--plot", "opencv"])
    return code, out


def test_the_reduced_benchmark_writes_a_table_a_json_file_and_a_plot(quick_run):
    code, out = quick_run
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    assert set(report) >= {"machine", "models", "floor", "pipeline", "naive", "live", "streams", "memory", "targets"}
    assert report["machine"]["cores"] >= 1 and report["options"]["quick"] is True
    floor = report["floor"]
    for stage in ("decode", "preprocess", "cnn_fp32", "cnn_int8", "gru_step", "gru_step_numpy", "window_sequence",
                  "window_steps"):
        assert floor[stage]["n"] > 0 and floor[stage]["p99_ms"] >= floor[stage]["p50_ms"] > 0, stage
    for run in ("serial_fp32", "pipelined_fp32", "serial_int8", "pipelined_int8"):
        assert report["pipeline"][run]["frames"] == 40 and report["pipeline"][run]["fps"] > 0
    assert report["naive"]["fp32"]["frames"] == 40
    live = report["live"]
    assert live["precision"] == "int8" and live["drops_exact"] is True
    assert live["frames"] + live["dropped"] == live["produced"]
    for count in ("1", "2"):
        assert {"batched", "unbatched", "speedup"} <= set(report["streams"][count])
    assert report["streams"]["2"]["batched"]["frames"] == 2 * 12
    assert report["memory"]["frames_after_warmup"] == 200 and report["memory"]["growth_mib"] is not None
    assert set(report["observers"]) == {"nothing attached", "preview, no client", "preview, a reading client",
                                        "preview, a client that stopped reading", "record", "event clips"}
    assert all(run["frames"] == 40 and run["fps"] > 0 for run in report["observers"].values())
    assert {row["target"] for row in report["targets"]} >= {"glue", "pipelined throughput", "backbone variant",
                                                            "GRU step", "memory", "live 30 fps"}
    table = (out / "bench.md").read_text()
    assert "## Targets" in table and "| serial fp32 |" in table and "| naive fp32 |" in table
    assert "| preview, a client that stopped reading |" in table
    assert report["machine"]["cpu"] in table
    image = cv2.imread(str(out / "bench.png"))
    assert image is not None and image.shape == (480, 1200, 3) and image.std() > 0
    assert report["plot"] == "opencv"


def test_a_memory_target_from_a_short_run_is_not_claimed_as_met(quick_run):
    _, out = quick_run
    rows = {row["target"]: row for row in json.loads((out / "bench.json").read_text())["targets"]}
    assert rows["memory"]["met"] is None  # 200 frames say nothing about 10,000


def test_the_numpy_step_is_the_same_step_as_the_engine(engines_dir):
    manifest = load_manifest(engines_dir)
    engines = open_engines(manifest, "cpu")
    step = numpy_gru_step(engines_dir / "gru_step.onnx")
    rng = np.random.default_rng(0)
    h = np.zeros((1, manifest.hidden_size), np.float32)
    engines.gru_step.reset_state()
    for _ in range(5):
        x = rng.normal(size=(1, manifest.feature_size)).astype(np.float32)
        engines.gru_step.input("x")[0] = x[0]
        engines.gru_step.step(1)
        h, logits = step(x, h)
        np.testing.assert_allclose(engines.gru_step.state()["h"][:1], h, atol=1e-4)
        np.testing.assert_allclose(engines.gru_step.output("logits")[:1], logits, atol=1e-4)
    engines.close()


def test_the_matplotlib_plot_when_it_is_installed(quick_run, tmp_path):
    pytest.importorskip("matplotlib")
    _, out = quick_run
    report = json.loads((out / "bench.json").read_text())
    samples = {"serial": np.array([0.002, 0.003, 0.004]), "naive": np.array([0.004, 0.006])}
    assert plot(report, samples, tmp_path / "plot.png", "matplotlib") == "matplotlib"
    assert cv2.imread(str(tmp_path / "plot.png")) is not None


def test_missing_engines_exit_3_with_the_export_command(tmp_path, capsys):
    assert main(["--engines", str(tmp_path / "nowhere"), "--out", str(tmp_path / "results"), "--quick"]) == 3
    assert "edge-export" in capsys.readouterr().err
