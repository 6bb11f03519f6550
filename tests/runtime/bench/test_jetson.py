"""`edge-bench --jetson`, the on-box acceptance run: what it prints, and its one-line error where TensorRT is missing."""
from __future__ import annotations

import sys

from runtime.bench.cli import main
from runtime.bench.jetson import table

ORIN_NANO = {
    "device": {"tensorrt": "10.3.0.30", "gpu": "Orin (sm_87)", "soc": "NVIDIA Jetson Orin Nano Developer Kit (p3767-0005, 8 GB)"},
    "backbone_arch": "mobilenet_v3_small", "input": "224x224",
    "floors": {"backbone_fp16": {"p50_ms": 1.61}, "backbone_int8": {"p50_ms": 1.12}, "gru_step": {"p50_ms": 0.25}},
    "camera_to_result": {"fps": 320.0, "precision": "int8", "latency": {"p50_ms": 4.1, "p99_ms": 6.3}},
    "verify": {"command": "verify --out engines --backend tensorrt", "exit_code": 0, "passed": True,
               "output": ["backbone tensorrt/int8 on tensorrt: cosine mean 0.99812 min 0.99410, ok"]},
}


def test_the_table_sets_each_figure_beside_the_published_one_or_its_target():
    text = table(ORIN_NANO)
    assert "Orin Nano Developer Kit (p3767-0005, 8 GB)" in text and "TensorRT 10.3.0.30" in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "1.610 ms" in lines["backbone FP16 (MobileNet-V3-Small)"] and "1.56 ms Orin Nano, 0.72 ms AGX Orin" in \
        lines["backbone FP16 (MobileNet-V3-Small)"]
    assert lines["backbone INT8"].endswith("| yes |") and "<= 1.3 ms" in lines["backbone INT8"]
    assert lines["GRU step"].endswith("| **no** |")  # 0.25 ms misses the 0.2 ms target
    assert lines["camera to result (int8, pipelined)"].endswith("| yes |") and ">= 300 frames/s" in lines["camera to result (int8, pipelined)"]
    assert "p50 4.10 / p99 6.30 ms" in text and "exit 0" in text and "cosine mean 0.99812" in text


def test_the_large_backbone_is_set_beside_the_large_figures():
    text = table({**ORIN_NANO, "backbone_arch": "mobilenet_v3_large"})
    assert "MobileNet-V3-Large" in text and "2.51 ms Orin Nano, 0.92 ms AGX Orin" in text


def test_without_tensorrt_it_says_what_to_install_and_exits_3(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["--jetson", "--engines", str(tmp_path), "--out", str(tmp_path / "results")]) == 3
    error = capsys.readouterr().err
    assert "edge-bench: error:" in error and "pip install 'edge-run[tensorrt]'" in error
    assert not (tmp_path / "results").exists()
