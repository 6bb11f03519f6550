"""INT8 post-training quantization of the backbone, in TensorRT's explicit-quantization layout.

`quantize_backbone` turns the FP32 backbone ONNX into a QDQ ONNX (QuantizeLinear /
DequantizeLinear pairs around the tensors that run in INT8) with onnxruntime's static
quantizer and a set of calibration frames that were prepared exactly like live frames.
TensorRT >= 10 builds such a graph as-is (explicit quantization: the precision comes
from the graph, no calibrator at build time), and the same file runs on onnxruntime's
CPU and TensorRT execution providers, which is how `export.quantize.quality.feature_quality` measures it.

The layout TensorRT accepts, and what `qdq_layout` checks:
- every zero point is INT8 and 0 (symmetric quantization; UINT8 would give 127, which
  TensorRT rejects);
- weights per output channel (DequantizeLinear with `axis` and a scale vector), kept as
  float initializers behind a Q/DQ pair (TensorRT folds the Q at build time; every
  TensorRT 8.6/10 parser imports this form);
- activations per tensor (scalar scale);
- biases stay float (TensorRT fuses them itself in higher precision);
- no Q/DQ on the outputs of Conv/Gemm/MatMul, so TensorRT can fuse Conv + activation +
  Quantize into one INT8 kernel, and each consumer gets its own Q/DQ pair (TensorRT
  cannot share one pair between consumers).

Only the backbone is quantized. The GRU stays float: its hidden state is fed back every
frame, so a quantization error made at step t is carried into step t+1 and compounds
over a 30-300 frame window, while an error in a CNN feature is made once per frame and
does not accumulate. The GRU is also tiny next to the CNN, so INT8 would buy little.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from export.errors import EXIT_FAILED, ExportError
from runtime.files import atomic_write_bytes

METHODS = ("minmax", "entropy", "percentile")
# Entropy gave the best mean and worst-frame cosine of the three (docs/export-measurements.md).
DEFAULT_METHOD = "entropy"
# Percentile clipping point for |x|: the best of 99.9, 99.99 and 99.999 (docs/export-measurements.md).
PERCENTILE = 99.99

# Q/DQ on the inputs and weights of the ops TensorRT runs in INT8, not on their outputs, so
# TensorRT fuses Conv + bias + activation + the next Quantize into one INT8 kernel; pointwise ops
# stay float between them (quantizing them measured worse: docs/export-measurements.md).
QUANTIZED_OP_TYPES = ("Conv", "Gemm", "MatMul")
NO_OUTPUT_QDQ_OP_TYPES = ("Conv", "Gemm", "MatMul")
# Layers left in float by default: MobileNet-V3's first three stages carry most of the INT8
# error for about a fifth of the MACs (docs/export-measurements.md).
DEFAULT_KEEP_FLOAT = ("features.0.", "features.1.", "features.2.")


class QuantizationError(ExportError, RuntimeError):
    """The backbone could not be quantized; the message says why (a failed build, exit 1)."""

    exit_code = EXIT_FAILED


# Calibration --------------------------------------------------------------------------------
def _ort_quantization():
    # Imported when quantizing only: it takes ~1.5 s, which every `edge-export inspect` or --help would pay.
    import onnxruntime.quantization as ortq

    return ortq


def _method_enum(method: str):
    ortq = _ort_quantization()
    table = {
        "minmax": ortq.CalibrationMethod.MinMax,
        "entropy": ortq.CalibrationMethod.Entropy,
        "percentile": ortq.CalibrationMethod.Percentile,
    }
    if method not in table:
        raise QuantizationError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    return table[method]


def _make_reader(frames: np.ndarray, input_name: str, batch: int):
    """A CalibrationDataReader over `frames` in batches, with the ranges strided collection needs."""
    ortq = _ort_quantization()

    class _FrameReader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [frames[i : i + batch] for i in range(0, len(frames), batch)]
            self.set_range(0, len(self.batches))

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._iter = iter(self.batches[start_index:end_index])

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            chunk = next(self._iter, None)
            return None if chunk is None else {input_name: chunk}

    return _FrameReader()


def _load_model(path: str | os.PathLike, what: str) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise QuantizationError(f"{what} {path} does not exist")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, OSError...
        raise QuantizationError(f"{what} {path} is not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    return model


def _batch_dim(model: onnx.ModelProto, input_name: str) -> Optional[int]:
    """The fixed batch size of `input_name`, or None when it is dynamic."""
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
            return None
    names = [v.name for v in model.graph.input]
    raise QuantizationError(f"the model has no input named {input_name!r} (inputs: {', '.join(names)})")


def _check_frames(frames: np.ndarray, model: onnx.ModelProto, input_name: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1] != 3 or len(frames) == 0:
        raise QuantizationError(f"calibration frames must be a non-empty [N, 3, H, W] array, got shape {frames.shape}")
    if not np.all(np.isfinite(frames)):
        raise QuantizationError("calibration frames contain NaN or infinity")
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            want = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
            if any(w is not None and w != got for w, got in zip(want, frames.shape[1:])):
                raise QuantizationError(
                    f"calibration frames are {tuple(frames.shape[1:])} per frame but the model's "
                    f"{input_name!r} expects {tuple(want)}: prepare them with the manifest's input size"
                )
    return np.ascontiguousarray(frames, dtype=np.float32)


def quantize_backbone(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calib_frames: np.ndarray,
    method: str = DEFAULT_METHOD,
    input_name: str = "image",
    batch: int = 8,
    keep_float: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Quantize the FP32 backbone at `fp32_path` into `int8_path` (QDQ, TensorRT layout).

    `calib_frames` [N, 3, H, W] float32 are already preprocessed. `method` picks how
    activation ranges are derived from them: "minmax" (observed range), "entropy" (KL
    divergence, TensorRT's classic calibrator) or "percentile" (clip at the 99.99th
    percentile of |x|). `keep_float` lists node-name prefixes whose nodes stay in float;
    None means `DEFAULT_KEEP_FLOAT` where the graph has such nodes (MobileNet-V3's first
    three stages), nothing otherwise; () quantizes every layer. The output is written
    atomically: after any failure the previous `int8_path` (or nothing) is left. Returns a
    summary for the manifest.
    """
    method_enum = _method_enum(method)
    model = _load_model(fp32_path, "FP32 backbone")
    frames = _check_frames(calib_frames, model, input_name)
    fixed = _batch_dim(model, input_name)
    batch = fixed if fixed is not None else max(1, min(int(batch), len(frames)))
    if fixed is not None and len(frames) % fixed:
        raise QuantizationError(f"the model's batch is fixed at {fixed}; give a multiple of {fixed} frames")
    ortq = _ort_quantization()
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=int8_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "quantized.onnx"
        try:
            # ONNX's own shape inference covers these graphs (every dim static but the
            # batch); the symbolic pass would only add a sympy dependency.
            ortq.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:
            raise QuantizationError(f"onnxruntime could not prepare {fp32_path} for quantization: {exc}") from exc
        excluded = _matching_nodes(prepared, keep_float)
        reader = _make_reader(frames, input_name, batch)
        batches = len(reader)
        # Histogram methods keep every activation of the batches they see in memory; feed
        # them a few batches at a time (the histograms merge across chunks).
        stride = _largest_divisor_at_most(batches, 4)
        extra_options = {
            "ActivationSymmetric": True,  # zero point 0 for activations
            "WeightSymmetric": True,  # and for weights
            "QuantizeBias": False,  # bias stays float
            "AddQDQPairToWeight": True,  # float weight -> Q -> DQ, folded by TensorRT
            "DedicatedQDQPair": True,  # one pair per consumer
            "OpTypesToExcludeOutputQuantization": list(NO_OUTPUT_QDQ_OP_TYPES),
            "QDQKeepRemovableActivations": True,  # keep Relu/Clip explicit, never folded into Q ranges
            "CalibTensorRangeSymmetric": True,
            "CalibStridedMinMax": stride,
            "CalibMovingAverage": False,
        }
        if method == "percentile":
            extra_options["CalibPercentile"] = PERCENTILE
        try:
            # The calibrators print progress on stdout; the CLI reports its own.
            with contextlib.redirect_stdout(io.StringIO()):
                ortq.quantize_static(
                    str(prepared),
                    str(quantized),
                    reader,
                    quant_format=ortq.QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                    nodes_to_exclude=excluded,
                    per_channel=True,
                    reduce_range=False,
                    activation_type=ortq.QuantType.QInt8,
                    weight_type=ortq.QuantType.QInt8,
                    calibrate_method=method_enum,
                    extra_options=extra_options,
                )
        except Exception as exc:
            raise QuantizationError(f"onnxruntime static quantization ({method}) failed: {exc}") from exc
        layout = qdq_layout(quantized)
        if layout["problems"]:
            raise QuantizationError(
                "the quantized graph is not in TensorRT's explicit-quantization layout: " + "; ".join(layout["problems"])
            )
        atomic_write_bytes(int8_path, quantized.read_bytes())
    return {
        "method": method,
        "frames": int(len(frames)),
        "calibration_batch": int(batch),
        "quantize_linear": layout["quantize_linear"],
        "dequantize_linear": layout["dequantize_linear"],
        "qdq_nodes": layout["quantize_linear"] + layout["dequantize_linear"],
        "per_channel_weights": layout["weights_per_channel"],
        "per_tensor_activations": layout["activations_per_tensor"],
        "op_types": list(QUANTIZED_OP_TYPES),
        "kept_float": len(excluded),
        "kept_float_prefixes": list(DEFAULT_KEEP_FLOAT if keep_float is None else keep_float),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _matching_nodes(model_path: Path, prefixes: Optional[Sequence[str]]) -> list[str]:
    explicit = prefixes is not None
    prefixes = tuple(DEFAULT_KEEP_FLOAT if prefixes is None else prefixes)
    if not prefixes:
        return []
    model = onnx.load(str(model_path))
    names = [node.name for node in model.graph.node if node.name.startswith(prefixes)]
    if explicit and not names:
        raise QuantizationError(f"keep_float {list(prefixes)} matches no node of the backbone")
    return names


def _largest_divisor_at_most(n: int, limit: int) -> int:
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


# Layout inspection --------------------------------------------------------------------------
def qdq_layout(model_path: str | os.PathLike) -> dict[str, Any]:
    """Describe the Q/DQ layout of `model_path` and list what TensorRT would reject.

    Returns counts (`quantize_linear`, `dequantize_linear`, `weights_per_channel`,
    `activations_per_tensor`, `float_biases`, `quantized_biases`), `zero_points`
    (the set of zero-point dtypes and whether all are 0) and `problems`: an empty list
    means the graph is in the layout described in this module's docstring.
    """
    model = model_path if isinstance(model_path, onnx.ModelProto) else _load_model(model_path, "quantized model")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    constants = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = onnx.helper.get_attribute_value(node.attribute[0])

    def const(name: str) -> Optional[np.ndarray]:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in constants and isinstance(constants[name], onnx.TensorProto):
            return numpy_helper.to_array(constants[name])
        return None

    producer = {out: node for node in graph.node for out in node.output}
    problems: list[str] = []
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    zp_dtypes: set[str] = set()
    zp_all_zero = True
    weights_per_channel = weights_per_tensor = 0
    activations_per_tensor = activations_per_channel = 0
    for node in graph.node:
        if node.op_type not in counts:
            continue
        counts[node.op_type] += 1
        scale = const(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            problems.append(f"{node.op_type} {node.name!r} has a non-constant scale")
            continue
        if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
            problems.append(f"{node.op_type} {node.name!r} has a non-positive scale")
        if len(node.input) < 3 or not node.input[2]:
            problems.append(f"{node.op_type} {node.name!r} has no zero point (its type would default to uint8)")
        else:
            zp = const(node.input[2])
            if zp is None:
                problems.append(f"{node.op_type} {node.name!r} has a non-constant zero point")
            else:
                zp_dtypes.add(str(zp.dtype))
                if zp.dtype != np.int8:
                    problems.append(f"{node.op_type} {node.name!r} zero point is {zp.dtype}, TensorRT needs int8")
                if np.any(zp != 0):
                    zp_all_zero = False
                    problems.append(f"{node.op_type} {node.name!r} zero point is not 0")
        if node.op_type != "DequantizeLinear":
            continue
        # Classify the DQ: it dequantizes a weight when its quantized input is a constant or
        # the output of a QuantizeLinear whose input is a constant (the Q/DQ-pair form).
        source = node.input[0]
        is_weight = const(source) is not None
        if not is_weight and source in producer and producer[source].op_type == "QuantizeLinear":
            is_weight = const(producer[source].input[0]) is not None
        per_channel = scale.size > 1
        if is_weight:
            if per_channel:
                weights_per_channel += 1
                if not any(a.name == "axis" for a in node.attribute) and scale.ndim != 1:
                    problems.append(f"weight DQ {node.name!r} has a scale vector but no axis")
            else:
                weights_per_tensor += 1
        elif per_channel:
            activations_per_channel += 1
            problems.append(f"activation DQ {node.name!r} is per-channel; TensorRT wants per-tensor activations")
        else:
            activations_per_tensor += 1

    float_biases = quantized_biases = 0
    dq_outputs = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
            if bias in dq_outputs:
                quantized_biases += 1
                problems.append(f"{node.op_type} {node.name!r} has a quantized bias; biases must stay float")
            else:
                float_biases += 1
    return {
        "quantize_linear": counts["QuantizeLinear"],
        "dequantize_linear": counts["DequantizeLinear"],
        "weights_per_channel": weights_per_channel,
        "weights_per_tensor": weights_per_tensor,
        "activations_per_tensor": activations_per_tensor,
        "activations_per_channel": activations_per_channel,
        "float_biases": float_biases,
        "quantized_biases": quantized_biases,
        "zero_points": {"dtypes": sorted(zp_dtypes), "all_zero": zp_all_zero},
        "problems": problems,
    }
