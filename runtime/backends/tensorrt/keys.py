"""What makes a TensorRT plan valid for this box: its build key, and this box's key.

A plan only runs on the TensorRT build and the GPU model that built it (upgrading JetPack
breaks every plan), and a DLA plan only where that DLA core exists: every Orin reports the
same GPU ("Orin (sm_87)"), but an Orin Nano has no DLA and the Orin NX and AGX Orin differ
in cores and memory. So plans are a cache keyed on

- `tensorrt`: the bindings' version, with its build number where the release carries one
  (JetPack 6's is "10.3.0.30");
- `gpu`: the GPU model and compute capability;
- `soc`: the Jetson module from the device tree (model, module part number, memory size),
  "" on a machine without a device tree;
- `dla_core`: the DLA core the plan runs on, None for the GPU;
- `precision` and `onnx_sha256`: what it was built from.

`plan_key` makes the key `edge-export` and the plan cache store in the manifest entry's
`extra`; `device_key` reads this machine's half of it; `plan_matches` says whether a plan
fits and, if not, every reason why. A plan that does not match is rebuilt, never loaded.
The logic lives in the runtime (which must not import `export`) so the engine can refuse
a stale plan with a clear reason before TensorRT fails to deserialize it.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping, Optional

from runtime.backends.tensorrt.imports import import_pycuda, import_tensorrt

# What a user runs when a plan does not fit this box; `{out}` is the engines folder.
REBUILD_COMMAND = "edge-export --trt --out {out}"
# A plan's build key (stored in its manifest entry's `extra`), in the order a mismatch is reported.
KEY_FIELDS = ("tensorrt", "gpu", "soc", "dla_core", "precision", "onnx_sha256")
_KEY_LABELS = {"tensorrt": "TensorRT version", "gpu": "GPU", "soc": "Jetson module", "dla_core": "DLA core",
               "precision": "precision", "onnx_sha256": "source ONNX (sha256)"}
# Jetson Orin module part numbers (p3767: Orin NX / Nano, p3701: AGX Orin) as NVIDIA's
# device trees list them in `compatible`, e.g. "nvidia,p3768-0000+p3767-0005".
_MODULE_PREFIXES = ("p3767-", "p3701-")


def plan_key(onnx_sha256: str, precision: str, trt_version: str, gpu_name: str, soc: str = "",
             dla_core: Optional[int] = None) -> dict[str, Any]:
    """What a plan was built from and for; `edge-export` stores it in the manifest entry's `extra`."""
    return {"tensorrt": str(trt_version), "gpu": str(gpu_name), "soc": str(soc),
            "dla_core": None if dla_core is None else int(dla_core),
            "precision": str(precision), "onnx_sha256": str(onnx_sha256)}


def plan_matches(entry_extra: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a plan built with key `entry_extra` can run where `current` describes.

    `current` holds the fields to check (TensorRT version, GPU and module for this machine,
    plus `dla_core`, `precision` and `onnx_sha256` when the caller knows them); fields it
    lacks are not compared, and a field it holds is compared even when it is None (a GPU
    plan, `dla_core` None, does not match a DLA plan). Returns (True, "") or (False, reason
    naming every difference).
    """
    problems = []
    extra = entry_extra or {}
    for field in KEY_FIELDS:
        if field not in current:
            continue
        if field not in extra:
            problems.append(f"the plan records no {_KEY_LABELS[field]}")
            continue
        built, now = extra[field], current[field]
        if _same(built, now):
            continue
        if field == "onnx_sha256":
            problems.append(f"it was built from another ONNX file ({str(built)[:12]}…, now {str(now)[:12]}…)")
        else:
            problems.append(f"it was built for {_KEY_LABELS[field]} {_shown(built)}, this is {_shown(now)}")
    if problems:
        return False, "; ".join(problems) + ": TensorRT plans only run where they were built, rebuild them on this device"
    return True, ""


def _same(built: Any, now: Any) -> bool:
    if built is None or now is None:
        return built is None and now is None
    return str(built) == str(now)


def _shown(value: Any) -> str:
    return "none (GPU)" if value is None else repr(value)


def device_key(device: int = 0) -> dict[str, str]:
    """{"tensorrt": version, "gpu": model, "soc": Jetson module} for this machine; TensorRTUnavailable without TensorRT."""
    trt = import_tensorrt()
    return {"tensorrt": str(trt.__version__), "gpu": gpu_name(device), "soc": soc_model()}


def soc_model(root: Path = Path("/")) -> str:
    """The Jetson module this runs on, e.g. "NVIDIA Jetson Orin Nano Developer Kit (p3767-0005, 8 GB)"; "" elsewhere.

    The device tree's `model` names the carrier board and module family; its `compatible`
    list carries the module's part number (which tells Orin Nano 4 GB from 8 GB, NX 8 GB
    from 16 GB, AGX Orin 32 GB from 64 GB), and the memory size is MemTotal rounded up to
    a power of two GB (the kernel reserves a few hundred MB).
    """
    tree = root / "proc" / "device-tree"
    try:
        model = (tree / "model").read_bytes().decode(errors="replace").strip("\x00 \n")
    except OSError:
        return ""
    try:
        compatible = (tree / "compatible").read_bytes().decode(errors="replace").split("\x00")
    except OSError:
        compatible = []
    pieces = [piece for entry in compatible for piece in entry.split(",")[-1].split("+")]
    details = [piece for piece in pieces if piece.startswith(_MODULE_PREFIXES)][:1]
    size = _memory_gb(root)
    if size:
        details.append(f"{size} GB")
    return f"{model} ({', '.join(details)})" if details else model


def _memory_gb(root: Path) -> int:
    try:
        for line in (root / "proc" / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                gib = int(line.split()[1]) / (1 << 20)
                return 2 ** math.ceil(math.log2(gib)) if gib > 0 else 0
    except (OSError, ValueError, IndexError):
        pass
    return 0


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
