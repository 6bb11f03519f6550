"""`--backend auto`: native TensorRT, then the TensorRT EP, then CUDA, then the CPU, each step down logged once with its reason.

The rule is given what is available (`Available`), never a faked GPU; `probe` is checked on this
machine, which has no TensorRT.
"""
from __future__ import annotations

import logging

import pytest

from runtime.backends.resolve import Available, choose, probe, resolve_backend
from runtime.errors import EngineError

CPU = ("CPUExecutionProvider",)
NO_TRT = "the TensorRT backend needs the tensorrt package (No module named 'tensorrt')"


@pytest.mark.parametrize("available, expected", [
    (Available("", CPU), "tensorrt"),  # a Jetson: JetPack's TensorRT, pycuda, the GPU; onnxruntime from the index (CPU only)
    (Available("", ("TensorrtExecutionProvider", "CUDAExecutionProvider", *CPU)), "tensorrt"),  # native first, even beside the EPs
    (Available(NO_TRT, ("TensorrtExecutionProvider", "CUDAExecutionProvider", *CPU)), "trt-ep"),
    (Available("no CUDA device", ("CUDAExecutionProvider", *CPU)), "cuda"),
    (Available(NO_TRT, CPU), "cpu"),
])
def test_auto_takes_the_first_backend_this_machine_can_run(available, expected):
    assert resolve_backend("auto", available) == expected


def test_each_step_down_is_logged_once_with_its_reason(caplog):
    caplog.set_level(logging.INFO, logger="edge_run.backends")
    assert choose(Available("no CUDA device", CPU)) == "cpu"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "backend auto: not native TensorRT: no CUDA device",
        "backend auto: not trt-ep: onnxruntime has no TensorrtExecutionProvider",
        "backend auto: not cuda: onnxruntime has no CUDAExecutionProvider",
        "backend auto: cpu",
    ]


def test_native_tensorrt_is_chosen_without_a_word_about_the_others(caplog):
    caplog.set_level(logging.INFO, logger="edge_run.backends")
    assert choose(Available("", CPU)) == "tensorrt" and caplog.records == []


def test_an_explicit_backend_is_taken_as_given_and_an_unknown_one_refused():
    assert resolve_backend("cpu", Available("", CPU)) == "cpu"
    with pytest.raises(EngineError, match="unknown backend 'gpu'") as excinfo:
        resolve_backend("gpu")
    assert excinfo.value.exit_code == 3


def test_probe_on_this_machine_says_why_native_tensorrt_is_out(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on CI, even where a tensorrt is installed
    found = probe()
    assert "tensorrt" in found.native_tensorrt_missing and "edge-run[tensorrt]" in found.native_tensorrt_missing
    assert "CPUExecutionProvider" in found.providers
    assert resolve_backend("auto", found) in ("trt-ep", "cuda", "cpu")
