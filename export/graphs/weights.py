"""State dicts on disk (`.safetensors` or `.npz`) and the shape check every builder runs.

A state dict here is a plain `dict[str, np.ndarray]` named exactly as PyTorch names the
parameters, so weights trained in PyTorch are saved with `safetensors.torch.save_file`
(or `numpy.savez`) and read back here without torch.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping

import numpy as np
from safetensors.numpy import load_file, save

from export.errors import ExportError
from runtime.files import atomic_write_bytes

SUFFIXES = (".safetensors", ".npz")


class WeightsError(ExportError, ValueError):
    """Weights that cannot be read or do not fit the network, with every offending key named."""


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state dict from `.safetensors` or `.npz`; any failure is a WeightsError naming the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise WeightsError(f"cannot read weights from {path}: unknown suffix {suffix!r} "
                           f"(expected one of {', '.join(SUFFIXES)})")
    try:
        if suffix == ".safetensors":
            return dict(load_file(str(path)))
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise WeightsError(f"cannot read weights from {path}: {exc}") from exc


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write a state dict by suffix (`.safetensors` or `.npz`), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    arrays = {key: np.ascontiguousarray(np.asarray(value)) for key, value in state_dict.items()}
    if suffix == ".safetensors":
        data = save(arrays)
    elif suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
    else:
        raise WeightsError(f"cannot write weights to {path}: unknown suffix {suffix!r} "
                           f"(expected one of {', '.join(SUFFIXES)})")
    atomic_write_bytes(path, data)


def check_state_dict(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, tuple]) -> None:
    """Raise WeightsError listing every missing key and every key whose shape differs.

    Keys not in `expected` (a classifier head, `*.num_batches_tracked`, test vectors) are
    ignored, so a full training checkpoint can be passed as is.
    """
    missing = [key for key in expected if key not in state_dict]
    misshaped = []
    for key, shape in expected.items():
        if key in state_dict:
            got = tuple(np.shape(state_dict[key]))
            if got != tuple(shape):
                misshaped.append(f"{key}: expected {tuple(shape)}, got {got}")
    if not missing and not misshaped:
        return
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing key(s): " + ", ".join(missing))
    if misshaped:
        lines.append(f"{len(misshaped)} mis-shaped key(s): " + "; ".join(misshaped))
    raise WeightsError("state dict does not fit the network:\n  " + "\n  ".join(lines))
