"""The recurrent head: a GRU or LSTM cell, one or two stacked layers, and a linear classifier.

Built torch-free as two engines, like the one-layer GRU of `export.graphs.gru` (which this
module uses as is for that shape):
- the step engine: `x` [batch, F] and every state in, every next state and `logits` out.
  Its state pairs are `runtime.manifest.state_pairs(cell, layers)`: `h -> h_next` per GRU
  layer, `h -> h_next` and `c -> c_next` per LSTM layer, layer l > 0 suffixed `_l<l>`;
- the window-sequence engine: `x` [batch, W, F] from zero states; `h_last` (the top layer's)
  and `logits` out, the steps unrolled over shared initializers.
Each layer feeds its new h to the next; the head reads the top layer's h.

Weights come as PyTorch names them:
- one layer: `GRUCell` / `LSTMCell` keys (`weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`), or a
  one-layer `nn.GRU` / `nn.LSTM`'s (the same with `_l0`);
- two layers: `nn.GRU` / `nn.LSTM(num_layers=2)` keys, `weight_ih_l0` ... `bias_hh_l1`;
- optionally under a prefix (`gru.`, `lstm.`, `rnn.`, `cell.`, `gru_cell.`, `lstm_cell.`: the
  cell as an attribute of a larger module); the `Linear` head as `head.` (canonical), `fc.`
  or `linear.`. Any other key is ignored.
The cell is told by the gate rows per hidden unit (3 for a GRU, 4 for an LSTM), the layers by
the presence of `_l1` keys. Canonical keys: the cell's names for one layer, `nn.GRU`'s for two.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import onnx

from export.graphs.graph import GraphBuilder
from export.graphs.gru import build_gru_sequence, build_gru_step, emit_gru_cell, gru_cell_numpy, gru_cell_params
from export.graphs.lstm import emit_lstm_cell, lstm_cell_numpy, lstm_cell_params
from export.graphs.weights import WeightsError, check_state_dict
from runtime.manifest import CELLS, state_pairs

CELL_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
HEAD_KEYS = ("head.weight", "head.bias")
GATES = {"gru": 3, "lstm": 4}  # weight rows per hidden unit
_CELL_PREFIXES = ("", "gru.", "lstm.", "rnn.", "cell.", "gru_cell.", "lstm_cell.")
_HEAD_PREFIXES = ("head.", "fc.", "linear.")
_LAYER_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)(?:_l(\d+))?")


@dataclass(frozen=True)
class HeadShape:
    """What a head is: its cell, layers, and the sizes F (features in), H (hidden), C (classes)."""

    cell: str
    layers: int
    features: int
    hidden: int
    classes: int

    @property
    def states(self) -> dict[str, str]:
        """The step engine's state pairs, input name -> output name."""
        return state_pairs(self.cell, self.layers)

    def layer_states(self, layer: int) -> tuple[str, ...]:
        """The state input names of one layer: (h,) for a GRU, (h, c) for an LSTM."""
        per_layer = 2 if self.cell == "lstm" else 1
        return tuple(self.states)[layer * per_layer:(layer + 1) * per_layer]

    def describe(self) -> str:
        layers = f"{self.layers}-layer " if self.layers > 1 else ""
        return f"{layers}{self.cell.upper()}({self.features}, {self.hidden}) + Linear({self.hidden}, {self.classes})"


def layer_key(key: str, layer: int, layers: int) -> str:
    """The canonical name of cell `key` of `layer`: the cell's own name for a one-layer head."""
    return key if layers == 1 else f"{key}_l{layer}"


def head_shapes(shape: HeadShape) -> dict[str, tuple]:
    """Canonical key -> shape, layer by layer, then the head (the order weights are drawn in)."""
    G, H = GATES[shape.cell], shape.hidden
    out: dict[str, tuple] = {}
    for layer in range(shape.layers):
        width = shape.features if layer == 0 else H
        for key, dims in (("weight_ih", (G * H, width)), ("weight_hh", (G * H, H)), ("bias_ih", (G * H,)),
                          ("bias_hh", (G * H,))):
            out[layer_key(key, layer, shape.layers)] = dims
    out["head.weight"], out["head.bias"] = (shape.classes, H), (shape.classes,)
    return out


def canonical_head_weights(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename accepted aliases to the canonical keys and drop unrelated ones; shapes are not checked."""
    parsed = [(name, _parse_key(name)) for name in weights]
    layers = 2 if any(found and found[1] == 1 for _, found in parsed) else 1
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for name, found in parsed:
        if found is None:
            continue
        key, layer = found
        if key in HEAD_KEYS:
            canonical = key
        elif layer >= layers:
            continue  # a third layer is not a head this builder makes: the shape check names what is missing
        else:
            canonical = layer_key(key, layer, layers)
        if canonical in out:
            raise WeightsError(f"head weights: both {source[canonical]!r} and {name!r} name {canonical!r}")
        out[canonical], source[canonical] = np.asarray(weights[name]), name
    return out


def _parse_key(name: str) -> Optional[tuple[str, int]]:
    """(canonical cell or head key, layer) for an accepted name, None for any other."""
    for prefix in _HEAD_PREFIXES:
        if name in (prefix + "weight", prefix + "bias"):
            return "head." + name[len(prefix):], 0
    for prefix in _CELL_PREFIXES:
        if name.startswith(prefix):
            match = _LAYER_KEY.fullmatch(name[len(prefix):])
            if match:
                return match.group(1), int(match.group(2) or 0)
    return None


def head_shape(weights: Mapping[str, np.ndarray]) -> HeadShape:
    """The head the weights describe (cell from the gate rows, layers from the keys, sizes from the shapes)."""
    w = canonical_head_weights(weights)
    layers = 2 if "weight_hh_l1" in w or "weight_ih_l1" in w else 1
    recurrent = w.get(layer_key("weight_hh", 0, layers))
    shapes = {key: tuple(np.shape(value)) for key, value in w.items()}
    if recurrent is None or np.ndim(recurrent) != 2 or "head.weight" not in w or layer_key("weight_ih", 0, layers) not in w:
        missing = [k for k in (layer_key("weight_ih", 0, layers), layer_key("weight_hh", 0, layers), "head.weight") if k not in w]
        raise WeightsError("head weights: cannot tell the cell and sizes; missing key(s): "
                           + (", ".join(missing) or "none") + f"; got shapes {shapes}")
    rows, H = np.shape(recurrent)
    cells = [cell for cell, gates in GATES.items() if rows == gates * H]
    if not cells:
        raise WeightsError(f"head weights: {layer_key('weight_hh', 0, layers)} has shape {(rows, H)}: "
                           f"{rows} gate rows for {H} hidden units is neither a GRU (3H) nor an LSTM (4H)")
    F = int(np.shape(w[layer_key("weight_ih", 0, layers)])[-1])
    C = int(np.shape(w["head.weight"])[0])
    return HeadShape(cells[0], layers, F, int(H), C)


def checked_head_weights(weights: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], HeadShape]:
    """Canonical float32 weights and their shape; WeightsError naming every key that does not fit."""
    w = canonical_head_weights(weights)
    shape = head_shape(w)
    check_state_dict(w, head_shapes(shape))
    return {key: np.asarray(value, dtype=np.float32) for key, value in w.items()}, shape


def init_head_weights(cell: str, layers: int, F: int, H: int, C: int, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch's default init: every cell tensor and the Linear head ~ U(-1/sqrt(H), 1/sqrt(H))."""
    if cell not in CELLS:
        raise WeightsError(f"unknown cell {cell!r}; choose from {', '.join(CELLS)}")
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(H)
    return {key: rng.uniform(-bound, bound, dims).astype(np.float32)
            for key, dims in head_shapes(HeadShape(cell, int(layers), F, H, C)).items()}


def layer_weights(w: Mapping[str, np.ndarray], layer: int, layers: int) -> dict[str, np.ndarray]:
    """One layer's cell tensors under the cell's own names."""
    return {key: w[layer_key(key, layer, layers)] for key in CELL_KEYS}


def head_step_numpy(weights: Mapping[str, np.ndarray], x: np.ndarray, states: Mapping[str, np.ndarray]
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Plain numpy reference of one step: x [N, F] and every state [N, H] by input name ->
    (every next state by the same input name, logits [N, C])."""
    w, shape = checked_head_weights(weights)
    below = np.asarray(x, dtype=np.float32)
    new: dict[str, np.ndarray] = {}
    for layer in range(shape.layers):
        cell = layer_weights(w, layer, shape.layers)
        names = shape.layer_states(layer)
        if shape.cell == "gru":
            new[names[0]] = gru_cell_numpy(cell, below, np.asarray(states[names[0]], np.float32))
        else:
            new[names[0]], new[names[1]] = lstm_cell_numpy(cell, below, np.asarray(states[names[0]], np.float32),
                                                           np.asarray(states[names[1]], np.float32))
        below = new[names[0]]
    return new, below @ w["head.weight"].T + w["head.bias"]


def weights_from_engine(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The canonical weights read back from a step or window engine this module built.

    Layer l's initializers are named `l<l>.<key>` in a two-layer engine, the window engines
    hold each layer's `weight_ih` transposed (`weight_ih_t`); anything else is what `canonical_head_weights` takes.
    """
    found: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        match = re.fullmatch(r"(?:l(\d+)\.)?(.+)", init.name)
        layer, key, value = match.group(1), match.group(2), onnx.numpy_helper.to_array(init)
        if key == "weight_ih_t":
            key, value = "weight_ih", value.T
        found[key if layer is None else f"{key}_l{layer}"] = value
    return canonical_head_weights(found)


# Graphs ------------------------------------------------------------------------------------------
def build_head_step(weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """The step engine: `x` [batch, F] and each state [batch, H] in; each next state and `logits` out."""
    w, shape = checked_head_weights(weights)
    if (shape.cell, shape.layers) == ("gru", 1):
        return build_gru_step(w)
    H = shape.hidden
    g = GraphBuilder(f"{shape.cell}{shape.layers}_step")
    below = g.input("x", ["batch", shape.features])
    state_in = {name: g.input(name, ["batch", H]) for name in shape.states}
    state_out: dict[str, str] = {}
    for layer in range(shape.layers):
        cell, prefix = layer_weights(w, layer, shape.layers), _prefix(layer, shape.layers)
        p = _cell_params(g, shape.cell, cell, H, prefix, zero_state=False)
        gi = g.node("Gemm", [below, g.initializer(prefix + "weight_ih", cell["weight_ih"]),
                             g.initializer(prefix + "bias_ih", cell["bias_ih"])], transB=1)
        names = shape.layer_states(layer)
        produced = _emit(g, shape.cell, gi, [state_in[n] for n in names], p)
        state_out.update(zip(names, produced))
        below = produced[0]
    for name, output in shape.states.items():
        g.output(state_out[name], output, ["batch", H])
    g.output(_linear(g, below, w), "logits", ["batch", shape.classes])
    return g.model(doc=f"{shape.describe()}, one step")


def build_head_sequence(weights: Mapping[str, np.ndarray], window: int) -> onnx.ModelProto:
    """The window engine: `x` [batch, W, F] from zero states; `h_last` [batch, H] (the top layer's)
    and `logits` [batch, C] out. Layer by layer; each layer's x-side gates of all W steps come from one MatMul."""
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    window = int(window)
    w, shape = checked_head_weights(weights)
    if (shape.cell, shape.layers) == ("gru", 1):
        return build_gru_sequence(w, window)
    H = shape.hidden
    g = GraphBuilder(f"{shape.cell}{shape.layers}_sequence")
    sequence = g.input("x", ["batch", window, shape.features])
    axes = g.initializer("axis_1", np.array([1]), dtype=np.int64)
    split = g.initializer("split_steps", np.ones(window), dtype=np.int64)
    outputs: list[str] = []
    for layer in range(shape.layers):
        cell, prefix = layer_weights(w, layer, shape.layers), _prefix(layer, shape.layers)
        if layer > 0:  # the layer below's h at every step, [batch, W, H]
            sequence = g.node("Concat", [g.node("Unsqueeze", [h, axes]) for h in outputs], axis=1) if window > 1 \
                else g.node("Unsqueeze", [outputs[0], axes])
        # This layer's x-side gates of all W steps from one MatMul, then one slice per step.
        gates = g.node("Add", [g.node("MatMul", [sequence, g.initializer(prefix + "weight_ih_t", np.ascontiguousarray(cell["weight_ih"].T))]),
                               g.initializer(prefix + "bias_ih", cell["bias_ih"])])
        steps = g.node("Split", [gates, split], outputs=window, axis=1)
        p = _cell_params(g, shape.cell, cell, H, prefix, zero_state=True)
        state: list[Optional[str]] = [None] * len(shape.layer_states(layer))
        outputs = []
        for step in [steps] if window == 1 else steps:
            state = _emit(g, shape.cell, g.node("Squeeze", [step, axes]), state, p)
            outputs.append(state[0])
    g.output(outputs[-1], "h_last", ["batch", H])
    g.output(_linear(g, outputs[-1], w), "logits", ["batch", shape.classes])
    return g.model(doc=f"{shape.describe()}, unrolled over {window} steps from zero states")


def _prefix(layer: int, layers: int) -> str:
    return "" if layers == 1 else f"l{layer}."


def _cell_params(g: GraphBuilder, cell: str, w: Mapping[str, np.ndarray], H: int, prefix: str, zero_state: bool
                 ) -> dict[str, str]:
    params = gru_cell_params if cell == "gru" else lstm_cell_params
    return params(g, w, H, prefix, zero_state)


def _emit(g: GraphBuilder, cell: str, gi: str, state: list, p: Mapping[str, str]) -> list[str]:
    """One layer's step: `state` is [h] or [h, c] (None entries: zeros); returns the new one."""
    if cell == "gru":
        return [emit_gru_cell(g, gi, state[0], p)]
    return list(emit_lstm_cell(g, gi, state[0], state[1], p))


def _linear(g: GraphBuilder, h: str, w: Mapping[str, np.ndarray]) -> str:
    return g.node("Gemm", [h, g.initializer("head.weight", w["head.weight"]), g.initializer("head.bias", w["head.bias"])],
                  transB=1)
