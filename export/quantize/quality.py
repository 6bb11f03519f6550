"""The INT8 quality gate: how far the INT8 backbone's features are from FP32's on held-out frames."""
from __future__ import annotations

import math
import os

import numpy as np
import onnxruntime as ort

from export.errors import EXIT_FAILED, ExportError
from export.quantize.qdq import QuantizationError

DEFAULT_MIN_COSINE = 0.95


class QualityGateError(ExportError, RuntimeError):
    """The INT8 backbone's features are too far from FP32's to ship without --allow-degraded (exit 1)."""

    exit_code = EXIT_FAILED


def _session(path: str | os.PathLike) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise QuantizationError(f"onnxruntime cannot load {path}: {exc}") from exc


def _run_all(session, frames: np.ndarray, batch: int) -> np.ndarray:
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else batch
    outputs = []
    for start in range(0, len(frames), step):
        chunk = frames[start : start + step]
        outputs.append(session.run(None, {name: chunk})[0])
    return np.concatenate(outputs).reshape(len(frames), -1).astype(np.float64)


def row_cosine(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `got` to the same row of `ref`."""
    dot = np.sum(ref * got, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    # Two all-zero vectors are identical; one zero vector against a non-zero one is orthogonal.
    return np.where(norms > 0, dot / np.maximum(norms, 1e-30), np.where(np.all(ref == got, axis=1), 1.0, 0.0))


def feature_quality(
    fp32_path: str | os.PathLike, int8_path: str | os.PathLike, frames: np.ndarray, batch: int = 16
) -> dict[str, float]:
    """Compare the two backbones' first output on `frames` (held out from calibration).

    Returns `cosine_mean` and `cosine_min` of the per-frame cosine similarity between
    the INT8 and FP32 feature vectors, `max_abs_error` and `relative_error` (mean L2 of
    the difference over mean L2 of FP32), computed with onnxruntime on the CPU.
    """
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    if frames.ndim != 4 or len(frames) == 0:
        raise QuantizationError(f"quality frames must be a non-empty [N, 3, H, W] array, got shape {frames.shape}")
    ref = _run_all(_session(fp32_path), frames, batch)
    got = _run_all(_session(int8_path), frames, batch)
    cosine = row_cosine(ref, got)
    diff = got - ref
    return {
        "cosine_mean": float(np.mean(cosine)),
        "cosine_min": float(np.min(cosine)),
        "max_abs_error": float(np.max(np.abs(diff))),
        "relative_error": float(np.mean(np.linalg.norm(diff, axis=1)) / max(np.mean(np.linalg.norm(ref, axis=1)), 1e-30)),
        "frames": int(len(frames)),
    }


def check_quality(quality: dict[str, float], min_mean: float = DEFAULT_MIN_COSINE) -> None:
    """Raise QualityGateError when the INT8 features' mean cosine to FP32 is below `min_mean`."""
    mean = quality.get("cosine_mean")
    if mean is None or not math.isfinite(mean) or mean < min_mean:
        shown = "n/a" if mean is None else f"{mean:.4f}"
        worst = quality.get("cosine_min")
        worst_text = f", worst frame {worst:.4f}" if isinstance(worst, float) and math.isfinite(worst) else ""
        raise QualityGateError(
            f"INT8 backbone fails the quality gate: mean cosine to FP32 {shown}{worst_text} is below {min_mean:.2f}. "
            f"Try another --calibration method or more representative calibration frames, ship FP16 instead, "
            f"or pass --allow-degraded to keep it anyway."
        )
