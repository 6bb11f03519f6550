"""INT8 quantization of the backbone: calibration frames, Q/DQ quantization, the quality gate.

The package's face: `from export.quantize import quantize_backbone, check_quality, ...`.
"""
from export.quantize.calibration import CalibrationError, read_frames
from export.quantize.qdq import (
    DEFAULT_KEEP_FLOAT,
    DEFAULT_METHOD,
    METHODS,
    NO_OUTPUT_QDQ_OP_TYPES,
    PERCENTILE,
    QUANTIZED_OP_TYPES,
    QuantizationError,
    qdq_layout,
    quantize_backbone,
)
from export.quantize.quality import DEFAULT_MIN_COSINE, QualityGateError, check_quality, feature_quality, row_cosine

__all__ = [
    "DEFAULT_KEEP_FLOAT",
    "DEFAULT_METHOD",
    "DEFAULT_MIN_COSINE",
    "METHODS",
    "NO_OUTPUT_QDQ_OP_TYPES",
    "PERCENTILE",
    "QUANTIZED_OP_TYPES",
    "CalibrationError",
    "QualityGateError",
    "QuantizationError",
    "check_quality",
    "feature_quality",
    "qdq_layout",
    "quantize_backbone",
    "read_frames",
    "row_cosine",
]
