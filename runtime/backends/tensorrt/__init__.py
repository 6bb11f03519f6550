"""The native TensorRT backend: plans built on the box that runs them, checked, cached and run.

- `runner`: run a plan (`TrtEngine`: pycuda buffers, one CUDA stream, the GRU state kept on the device).
- `build`: ONNX -> plan (`build_plan`: precision, weak or strong typing, DLA, batch profile, timing cache).
- `plans`: the plan cache: `ensure_plans` rebuilds stale or missing plans at start (as they were built:
  `build_options`) and rewrites the manifest; `with_planned` adds plans for ONNX-only manifests.
- `keys`: what makes a plan valid for this box (`plan_key`, `device_key`, `plan_matches`, `gpu_name`, `soc_model`).
- `imports`: the one place `tensorrt` and `pycuda` (optional extras) are imported, lazily, with `INSTALL_HINT`.

This package imports on machines without TensorRT or pycuda: nothing here touches them until
an engine or a plan is built, so `runtime.backends` can import it at module level.
"""
from __future__ import annotations

from runtime.backends.tensorrt.build import PRECISIONS, TIMING_CACHE_NAME, build_plan, to_fp16_onnx
from runtime.backends.tensorrt.imports import INSTALL_HINT, import_pycuda, import_tensorrt
from runtime.backends.tensorrt.keys import KEY_FIELDS, REBUILD_COMMAND, device_key, gpu_name, plan_key, plan_matches, soc_model
from runtime.backends.tensorrt.plans import build_options, ensure_plans, plan_extra, plan_file_name, with_planned
from runtime.backends.tensorrt.runner import TrtEngine
from runtime.errors import PlanBuildError, TensorRTUnavailable

__all__ = [
    "INSTALL_HINT", "KEY_FIELDS", "PRECISIONS", "REBUILD_COMMAND", "TIMING_CACHE_NAME", "PlanBuildError", "TensorRTUnavailable",
    "TrtEngine", "build_options", "build_plan", "device_key", "ensure_plans", "gpu_name", "import_pycuda", "import_tensorrt",
    "plan_extra", "plan_file_name", "plan_key", "plan_matches", "soc_model", "to_fp16_onnx", "with_planned",
]
