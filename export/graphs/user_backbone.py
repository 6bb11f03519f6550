"""A user's own backbone as ONNX (`--backbone-onnx FILE --feature-output NAME`), made deployable.

Backbones exported from other frameworks come in shapes the runtime cannot use as they are:
an image input `[-1, 3, ?, ?]` with dynamic height and width, pooled features `[N, C, 1, 1]`,
or a Reshape whose target shape is computed at run time (Shape -> Gather -> Concat), so
static shape inference cannot say F. This module turns such a graph into the runtime's
form without the user doing graph surgery:

- dynamic H and W are fixed to `--input-size` (fixed ones must agree with it when given);
  the batch dimension is dynamic ("batch"), bounded later by `--max-batch`;
- the graph is cut at the feature tensor; a `[N, C, 1, 1]` tensor is flattened to `[N, C]`
  by a Flatten node added to the graph;
- when shape inference leaves F unknown, one run of the model on a blank batch finds it;
- the input and output are renamed "image" and "features";
- an opset below 13 is converted to 13 (onnx's version converter), so INT8 can quantize the
  weights per channel.

When the named tensor is not usable, the error lists the candidates with their shapes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from export.errors import ExportError


class BackboneOnnxError(ExportError, ValueError):
    """A `--backbone-onnx` model that cannot be read or used (bad input, exit 2)."""


MIN_OPSET = 13
Dims = list  # int for a fixed dim, str for a named one, None for an unknown one


def load_user_backbone(path: str | Path, feature_output: Optional[str],
                       input_size: Optional[Sequence[int]] = None) -> tuple[onnx.ModelProto, tuple[int, int]]:
    """The model cut at `feature_output` as [batch, F], with one image input [batch, 3, H, W]; returns it and (H, W).

    `input_size` (height, width) fixes dynamic spatial dims; fixed ones must equal it when given.
    """
    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise BackboneOnnxError(f"--backbone-onnx {path}: not a valid ONNX model ({exc})") from exc
    model = _raise_opset(model, path)
    image = _image_input(model, path)
    height, width = _fix_spatial_dims(image, path, input_size)
    _set_dim(image.type.tensor_type.shape.dim[0], "batch")
    model = _infer_shapes(model, path)
    shapes = _tensor_shapes(model)
    probed, probe_failure = _probe_unknown(model, shapes, image.name, height, width)
    shapes.update(probed)
    name = feature_output or model.graph.output[0].name
    produced = {out for node in model.graph.node for out in node.output}
    if name not in shapes and name not in produced:
        raise BackboneOnnxError(f"--backbone-onnx {path}: no tensor named {name!r}; {_candidates(shapes)}")
    dims = shapes.get(name, [])
    if not (_is_pooled(dims) or len(dims) == 2) or not isinstance(dims[1], int):
        raise BackboneOnnxError(f"--backbone-onnx {path}: feature output {name!r} is {_shown(dims)}, "
                                f"not [N, F] or [N, C, 1, 1]{probe_failure}; {_candidates(shapes)}")
    if name not in {v.name for v in model.graph.value_info}:  # shaped by the probe: the cut needs its type
        model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    try:
        model = onnx.utils.Extractor(model).extract_model([image.name], [name])
    except Exception as exc:
        raise BackboneOnnxError(f"--backbone-onnx {path}: cannot cut the graph at {name!r} ({exc})") from exc
    if _is_pooled(dims):
        name = _flatten(model, name)
    _rename_io(model, image.name, name)
    _set_output(model, int(dims[1]))
    return model, (height, width)


def _raise_opset(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Opset 13 at least: per-channel INT8 weights need QuantizeLinear's `axis`, new in opset 13."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise BackboneOnnxError(f"--backbone-onnx {path}: cannot convert opset {opset} to {MIN_OPSET}, which INT8 "
                                f"per-channel weights need ({exc}); export it at opset {MIN_OPSET} or pass --no-int8") from exc


def _image_input(model: onnx.ModelProto, path: Path) -> onnx.ValueInfoProto:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BackboneOnnxError(f"--backbone-onnx {path}: expected one image input, found {[i.name for i in inputs]}")
    image = inputs[0]
    dims = _dims(image)
    if image.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        raise BackboneOnnxError(f"--backbone-onnx {path}: input {image.name} must be float32 [N, 3, H, W]; got {_shown(dims)}")
    return image


def _fix_spatial_dims(image: onnx.ValueInfoProto, path: Path, input_size: Optional[Sequence[int]]) -> tuple[int, int]:
    dims = _dims(image)
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims[2:]]
    if input_size is None:
        if None in fixed:
            raise BackboneOnnxError(f"--backbone-onnx {path}: input {image.name} has dynamic height/width "
                                    f"({_shown(dims)}); give the size to deploy at with --input-size H W")
        return fixed[0], fixed[1]
    wanted = [int(v) for v in input_size]
    for axis, (have, want) in enumerate(zip(fixed, wanted)):
        if have is not None and have != want:
            raise BackboneOnnxError(f"--backbone-onnx {path}: input {image.name} is fixed at {_shown(dims)}; "
                                    f"--input-size {wanted[0]} {wanted[1]} disagrees (leave it out or match it)")
        _set_dim(image.type.tensor_type.shape.dim[2 + axis], want)
    return wanted[0], wanted[1]


def _infer_shapes(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    del model.graph.value_info[:]  # shapes recorded for another input size (or batch name) would stick
    try:
        # data_prop carries values such as Shape -> Gather -> Concat into a Reshape where it can.
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise BackboneOnnxError(f"--backbone-onnx {path}: shape inference fails at the size to deploy ({exc})") from exc


def _dims(value: onnx.ValueInfoProto) -> Dims:
    if not value.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]


def _set_dim(dim, value) -> None:
    if isinstance(value, int):
        dim.dim_value = value
    else:
        dim.dim_param = value


def _tensor_shapes(model: onnx.ModelProto) -> dict[str, Dims]:
    values = list(model.graph.value_info) + list(model.graph.output)
    return {v.name: _dims(v) for v in values if v.type.tensor_type.elem_type == TensorProto.FLOAT}


def _probe_unknown(model: onnx.ModelProto, shapes: dict[str, Dims], image: str, height: int,
                   width: int) -> tuple[dict[str, Dims], str]:
    """(the shapes static inference left unknown, from one run on a blank batch of 2; why the run failed, or "")."""
    unknown = [name for name, dims in shapes.items() if not dims or None in dims[1:]]
    if not unknown:
        return {}, ""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in unknown if n not in declared)
    try:
        values = _session(probe).run(unknown, {image: np.zeros((2, 3, height, width), np.float32)})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; the message is reported
        return {}, f" (a probe run at {height}x{width} to find its shape failed: {exc})"
    return {n: ["batch", *map(int, v.shape[1:])] for n, v in zip(unknown, values)
            if isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim >= 1 and v.shape[0] == 2}, ""


def _session(model: onnx.ModelProto):
    import onnxruntime as ort  # a build-time dependency; imported only when a probe is needed

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _is_pooled(dims: Dims) -> bool:
    return len(dims) == 4 and dims[2] == 1 and dims[3] == 1


def _candidates(shapes: dict[str, Dims]) -> str:
    usable = [f"{name} {_shown(dims)}" for name, dims in shapes.items() if len(dims) == 2 or _is_pooled(dims)]
    if not usable:
        return "the graph has no [N, F] or [N, C, 1, 1] tensor"
    return "candidates ([N, F] and [N, C, 1, 1] tensors): " + ", ".join(usable)


def _shown(dims: Dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]" if dims else "[unknown rank]"


def _flatten(model: onnx.ModelProto, pooled: str) -> str:
    """Append Flatten(axis=1): [N, C, 1, 1] -> [N, C]; returns the new output's name."""
    flat = pooled + "_flat"
    model.graph.node.append(helper.make_node("Flatten", [pooled], [flat], axis=1, name="edge_run_flatten_features"))
    output = model.graph.output[0]
    output.name = flat
    output.type.tensor_type.shape.ClearField("dim")
    return flat


def _rename_io(model: onnx.ModelProto, image: str, features: str) -> None:
    """Give the runtime's names ("image", "features") to the chosen input and output."""
    renames = {image: "image", features: "features"}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        value.name = renames.get(value.name, value.name)


def _set_output(model: onnx.ModelProto, feature_size: int) -> None:
    output = model.graph.output[0]
    output.type.tensor_type.elem_type = TensorProto.FLOAT
    shape = output.type.tensor_type.shape
    shape.ClearField("dim")
    shape.dim.add().dim_param = "batch"
    shape.dim.add().dim_value = feature_size
    onnx.checker.check_model(model)
