"""What makes a TensorRT plan valid for this box: its build key, and this box's key.

A plan only runs on the TensorRT version and GPU model that built it (upgrading JetPack
breaks every plan), so plans are a cache keyed on those plus precision and the source
ONNX's SHA-256. `plan_key` makes the key `edge-export` and the plan cache store in the
manifest entry's `extra`; `device_key` reads this machine's half of it; `plan_matches`
says whether a plan fits and, if not, every reason why. The logic lives in the runtime
(which must not import `export`) so the engine can refuse a stale plan with a clear
reason before TensorRT fails to deserialize it.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

from runtime.backends.tensorrt.imports import import_pycuda, import_tensorrt

# What a user runs when a plan does not fit this box; `{out}` is the engines folder.
REBUILD_COMMAND = "edge-export --trt --out {out}"
# A plan's build key (stored in its manifest entry's `extra`), in the order a mismatch is reported.
KEY_FIELDS = ("tensorrt", "gpu", "precision", "onnx_sha256")
_KEY_LABELS = {"tensorrt": "TensorRT version", "gpu": "GPU", "precision": "precision", "onnx_sha256": "source ONNX (sha256)"}


def plan_key(onnx_sha256: str, precision: str, trt_version: str, gpu_name: str) -> dict[str, str]:
    """What a plan was built from and for; `edge-export` stores it in the manifest entry's `extra`."""
    return {"tensorrt": str(trt_version), "gpu": str(gpu_name), "precision": str(precision), "onnx_sha256": str(onnx_sha256)}


def plan_matches(entry_extra: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a plan built with key `entry_extra` can run where `current` describes.

    `current` holds the fields to check (TensorRT version and GPU for this machine, plus
    `precision` and `onnx_sha256` when the caller knows them); fields it lacks are not
    compared. Returns (True, "") or (False, reason naming every difference).
    """
    problems = []
    for field in KEY_FIELDS:
        if current.get(field) is None:
            continue
        built = entry_extra.get(field) if entry_extra else None
        if built is None:
            problems.append(f"the plan records no {_KEY_LABELS[field]}")
        elif str(built) != str(current[field]):
            if field == "onnx_sha256":
                problems.append(f"it was built from another ONNX file ({str(built)[:12]}…, now {str(current[field])[:12]}…)")
            else:
                problems.append(f"it was built for {_KEY_LABELS[field]} {built!r}, this is {current[field]!r}")
    if problems:
        return False, "; ".join(problems) + ": TensorRT plans only run where they were built, rebuild them on this device"
    return True, ""


def device_key() -> dict[str, str]:
    """{"tensorrt": version, "gpu": model} for this machine; TensorRTUnavailable without TensorRT."""
    trt = import_tensorrt()
    return {"tensorrt": str(trt.__version__), "gpu": gpu_name()}


def gpu_name(device: int = 0) -> str:
    """The GPU model with its compute capability, e.g. "Orin (sm_87)"; "unknown" if it cannot be read."""
    try:
        cuda = import_pycuda()
        cuda.init()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return f"{dev.name()} (sm_{major}{minor})"
    except Exception:  # noqa: BLE001 - pycuda missing (TensorRTUnavailable), or no driver (pycuda's own errors): try the tools below
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()
            if out:
                name, _, cap = (part.strip() for part in out.partition(","))
                return f"{name} (sm_{cap.replace('.', '')})" if cap else name
        except (OSError, subprocess.SubprocessError):
            pass
    try:  # Jetson boards
        return Path("/proc/device-tree/model").read_text().strip("\x00 \n") or "unknown"
    except OSError:
        return "unknown"
