"""A user's own backbone as ONNX (`--backbone-onnx FILE --feature-output NAME`): checked, used as is."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import onnx
from onnx import TensorProto

from export.errors import ExportError


class BackboneOnnxError(ExportError, ValueError):
    """A `--backbone-onnx` model that cannot be read or used (bad input, exit 2)."""


def load_user_backbone(path: str | Path, feature_output: Optional[str]) -> tuple[onnx.ModelProto, tuple[int, int]]:
    """The model cut at `feature_output` ([N, F]) with one image input [N, 3, H, W]; returns it and (H, W)."""
    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise BackboneOnnxError(f"--backbone-onnx {path}: not a valid ONNX model ({exc})") from exc
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BackboneOnnxError(f"--backbone-onnx {path}: expected one image input, found {[i.name for i in inputs]}")
    image = inputs[0]
    dims = [d.dim_value or d.dim_param for d in image.type.tensor_type.shape.dim]
    if image.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3 \
            or not isinstance(dims[2], int) or not isinstance(dims[3], int) or not dims[2] or not dims[3]:
        raise BackboneOnnxError(f"--backbone-onnx {path}: input {image.name} must be float32 [N, 3, H, W] with fixed H, W; got {dims}")
    outputs = {o.name for o in model.graph.output} | {v.name for v in model.graph.value_info}
    name = feature_output or model.graph.output[0].name
    if name not in outputs:
        raise BackboneOnnxError(f"--backbone-onnx {path}: no tensor named {name!r} (graph outputs: {[o.name for o in model.graph.output]})")
    model = onnx.utils.Extractor(model).extract_model([image.name], [name])
    _rename_io(model, image.name, name)
    output = model.graph.output[0]
    out_dims = [d.dim_value or d.dim_param for d in output.type.tensor_type.shape.dim]
    if len(out_dims) != 2 or not isinstance(out_dims[1], int) or out_dims[1] < 1:
        raise BackboneOnnxError(f"--backbone-onnx {path}: feature output {name!r} must be [N, F] with fixed F; got {out_dims}")
    _dynamic_batch(model)
    return model, (int(dims[2]), int(dims[3]))


def _rename_io(model: onnx.ModelProto, image: str, features: str) -> None:
    """Give the runtime's names ("image", "features") to the chosen input and output."""
    renames = {image: "image", features: "features"}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        value.name = renames.get(value.name, value.name)


def _dynamic_batch(model: onnx.ModelProto) -> None:
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
