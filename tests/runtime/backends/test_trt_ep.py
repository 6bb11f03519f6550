"""The TensorRT execution provider's options: INT8 for the Q/DQ graph, caches beside the engines, one profile for
batches 1..max_batch; every option name one onnxruntime documents (tests/data/ort_tensorrt_ep_options.txt)."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO

from runtime.backends.onnxrt import tensorrt_ep_options
from runtime.manifest import load_manifest

DOCUMENTED = {line.strip() for line in (REPO / "tests" / "data" / "ort_tensorrt_ep_options.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}


def _profile(text: str) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in dims.split("x")) for name, dims in (item.split(":") for item in text.split(","))}


@pytest.mark.parametrize("precision", ["int8", "fp16", "fp32"])
def test_every_option_name_is_one_onnxruntime_documents(precision, tmp_path):
    options = tensorrt_ep_options(precision, tmp_path, {"image": ["batch", 3, 224, 224]}, 4)
    assert sorted(set(options) - DOCUMENTED) == []


def test_the_qdq_backbone_gets_int8_and_fp16_and_the_gru_stays_fp32(tmp_path):
    int8 = tensorrt_ep_options("int8", tmp_path, {"image": ["batch", 3, 224, 224]}, 4)
    assert int8["trt_int8_enable"] == "True" and int8["trt_fp16_enable"] == "True"
    fp32 = tensorrt_ep_options("fp32", tmp_path, {"x": ["batch", 576], "h": ["batch", 256]}, 4)
    assert fp32["trt_int8_enable"] == "False" and fp32["trt_fp16_enable"] == "False"


def test_the_caches_live_in_the_given_folder_and_the_profile_covers_every_batch_of_every_input(engines_dir):
    manifest = load_manifest(engines_dir)
    gru = manifest.find("gru_step", "onnx", None)
    cache = Path(engines_dir) / "trt-ep-cache"
    options = tensorrt_ep_options("fp32", cache, gru.inputs, 8)
    assert options["trt_engine_cache_enable"] == options["trt_timing_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(cache)
    low, high = _profile(options["trt_profile_min_shapes"]), _profile(options["trt_profile_max_shapes"])
    assert set(low) == set(gru.inputs) == set(high)  # every input, the state h included
    for name, dims in gru.inputs.items():
        assert low[name] == (1, *dims[1:]) and high[name] == (8, *dims[1:])
    assert _profile(options["trt_profile_opt_shapes"]) == high
