"""A tiny ONNX graph builder: initializers with unique names, nodes that return their outputs.

Every builder in `export/` writes its graph through `GraphBuilder` so the opset and IR
version are chosen in one place: opset 17 (HardSwish exists from 14; TensorRT 8.6+ and 10
import it) and IR version 8, which onnxruntime >= 1.17 loads.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

Dim = Union[int, str]


class GraphBuilder:
    """Collects inputs, initializers, nodes and outputs; `model()` returns a checked ModelProto."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._initializers: list[onnx.TensorProto] = []
        self._nodes: list[onnx.NodeProto] = []
        self._names: set[str] = set()
        self._counter = 0

    def _unique(self, base: str) -> str:
        name = base
        while name in self._names:
            self._counter += 1
            name = f"{base}_{self._counter}"
        self._names.add(name)
        return name

    def input(self, name: str, shape: Sequence[Dim], elem_type: int = TensorProto.FLOAT) -> str:
        name = self._unique(name)
        self._inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, value: str, name: str, shape: Sequence[Dim],
               elem_type: int = TensorProto.FLOAT) -> str:
        """Expose `value` as graph output `name` (through an Identity when the names differ)."""
        if value != name:
            if name in self._names:
                raise ValueError(f"graph output name {name!r} is already used inside the graph")
            self._names.add(name)
            self._nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}_out"))
        self._outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def initializer(self, name: str, array: np.ndarray, dtype: Optional[np.dtype] = np.float32) -> str:
        """Add a constant; the name is made unique if taken. Returns the name to use."""
        array = np.asarray(array)
        if dtype is not None and array.dtype != dtype:
            array = array.astype(dtype)
        name = self._unique(name)
        self._initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: int = 1,
             name: Optional[str] = None, **attrs) -> Union[str, list[str]]:
        """Append a node; returns its output name, or a list of names when outputs > 1."""
        base = self._unique(name or op)
        outs = [self._unique(f"{base}_out{i}" if outputs > 1 else base) for i in range(outputs)]
        self._nodes.append(helper.make_node(op, list(inputs), outs, name=base, **attrs))
        return outs[0] if outputs == 1 else outs

    def model(self, check: bool = True, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self._nodes, self.name, self._inputs, self._outputs,
                                  initializer=self._initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="edge-run", doc_string=doc)
        model.ir_version = IR_VERSION
        if check:
            onnx.checker.check_model(model)
        return model
