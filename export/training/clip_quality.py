"""INT8 measured where it is used: the INT8 backbone's features against FP32's on the user's own clips.

The build's quality gate measures INT8 on held-out frames of the calibration source (demo
frames by default). That says little about a camera that sees something else: the default
backbone calibrated on demo frames measures 0.999 there and 0.954 on real footage of people walking
(docs/export-measurements.md). `edge-export train` therefore measures the same cosine on the
clips it trains on and records it in the manifest beside the calibration-time figure, with the
data each was measured on; it warns under the gate, or fails with `--min-cosine`.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, TextIO

import numpy as np

from export.quantize import DEFAULT_MIN_COSINE, QualityGateError, row_cosine
from export.training.clips import ClipRef
from export.training.feature_cache import FeatureExtractor
from runtime.manifest import BACKBONE, Manifest


def features_of(manifest: Manifest, precision: str, clips: Sequence[ClipRef], cache_dir, threads,
                progress: bool) -> dict[ClipRef, np.ndarray]:
    """Features [T, F] per readable clip through the manifest's `precision` ONNX backbone (cached)."""
    entry = manifest.find(BACKBONE, "onnx", precision)
    extractor = FeatureExtractor(manifest.path_of(entry), manifest.input, cache_dir, threads)
    extracted = extractor.extract(list(clips), progress=progress, desc=f"features ({precision}, INT8 check)")
    return dict(zip(extracted.clips, extracted.features))


def int8_cosine(int8: Sequence[np.ndarray], fp32: Sequence[np.ndarray]) -> dict[str, float]:
    """Per-frame cosine of INT8 to FP32 features over every frame of every clip: mean, min, frames."""
    cosine = row_cosine(np.concatenate(fp32).astype(np.float64), np.concatenate(int8).astype(np.float64))
    return {"cosine_mean": round(float(cosine.mean()), 5), "cosine_min": round(float(cosine.min()), 5),
            "frames": int(len(cosine))}


def measure_on_clips(manifest: Manifest, clips: Sequence[ClipRef], have: Sequence[np.ndarray], have_precision: str,
                     what: str, cache_dir=None, threads: Optional[int] = None,
                     progress: bool = True) -> tuple[dict[str, Any], Optional[list[np.ndarray]]]:
    """(record, FP32 features of `clips` or None): INT8 vs FP32 on `clips`, whose `have_precision` features are `have`.

    The record is {} when the manifest lacks an INT8 or an FP32 ONNX backbone (nothing to compare).
    """
    precisions = manifest.precisions(BACKBONE, "onnx")
    if "int8" not in precisions or "fp32" not in precisions or have_precision not in ("int8", "fp32"):
        return {}, None
    other = "fp32" if have_precision == "int8" else "int8"
    extracted = features_of(manifest, other, clips, cache_dir, threads, progress)
    pairs = [(feats, extracted[clip]) for clip, feats in zip(clips, have) if clip in extracted]
    if not pairs:
        return {}, None
    mine, theirs = [p[0] for p in pairs], [p[1] for p in pairs]
    int8, fp32 = (mine, theirs) if have_precision == "int8" else (theirs, mine)
    record = {**int8_cosine(int8, fp32), "clips": len(pairs), "measured_on": what}
    fp32_features = [extracted.get(clip) for clip in clips] if other == "fp32" else list(have)
    return record, fp32_features


def check_on_clips(record: dict[str, Any], manifest: Manifest, min_cosine: Optional[float], log: TextIO) -> dict[str, Any]:
    """Warn when the cosine on the clips is under the gate; raise QualityGateError under an explicit `min_cosine`."""
    if not record:
        return record
    gate = min_cosine if min_cosine is not None else manifest.quantization.get("min_cosine_gate", DEFAULT_MIN_COSINE)
    built = manifest.quantization.get("cosine_mean")
    built_text = f" (at calibration: {built:.4f} on {manifest.quantization.get('measured_on', 'held-out calibration frames')})" \
        if isinstance(built, float) and math.isfinite(built) else ""
    line = (f"INT8 vs FP32 features on {record['measured_on']}: cosine mean {record['cosine_mean']:.4f}, "
            f"min {record['cosine_min']:.4f} over {record['frames']} frames{built_text}")
    record = {**record, "min_cosine_gate": gate, "gate": "passed" if record["cosine_mean"] >= gate else "below"}
    if record["gate"] == "passed":
        print(f"train: {line}", file=log)
        return record
    if min_cosine is not None:
        raise QualityGateError(f"{line} is below --min-cosine {min_cosine:.4f}: calibrate on frames like these clips "
                               f"(edge-export --calib <a video of your camera>), or train and deploy --precision fp32")
    print(f"train: WARNING {line} is below the gate {gate:.4f}: the INT8 backbone is worse on your clips than the "
          f"manifest's calibration figure says; rebuild with --calib <a video of your camera> (or deploy FP32)", file=log)
    return record
