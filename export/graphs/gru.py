"""The temporal head: one GRU cell step (PyTorch `GRUCell` semantics) plus a linear head.

Equations and weight layout are PyTorch's (`torch.nn.GRUCell(F, H)`, gate rows r, z, n):

    r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h            (computed as n + z * (h - n))
    logits = head.weight @ h' + head.bias

The graphs use explicit Gemm/MatMul, Split, Sigmoid, Tanh, Mul, Add nodes rather than the
ONNX `GRU` operator, which TensorRT imports as a loop and runs slowly; the three gates
share one Gemm on the x side and one on the h side.

Precision: the GRU stays in floating point (FP32, or FP16 on TensorRT) even when the CNN
is INT8. Quantization error in the recurrent state is fed back into every following step
and compounds over a 30-300 frame horizon, while the cell is so small (~0.6 M MACs at
F=576, H=256) that INT8 would save nothing measurable.

Weight names: the canonical keys are `GRU_KEYS`. Also accepted, and renamed on load:
- the GRU tensors under a prefix `gru.`, `cell.`, `gru_cell.` or `rnn.` (a GRUCell
  attribute of a larger module), optionally with the `_l0` suffix of a single-layer
  `torch.nn.GRU` (`gru.weight_ih_l0`, `weight_hh_l0`, ...);
- the head under `head.` (canonical), `fc.` or `linear.`.
Any other key is ignored.
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Optional

import numpy as np
import onnx

from export.graphs.graph import GraphBuilder
from export.graphs.weights import WeightsError, check_state_dict

GRU_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "head.weight", "head.bias")
_CELL_KEYS = GRU_KEYS[:4]
_CELL_PREFIXES = ("", "gru.", "cell.", "gru_cell.", "rnn.")
_HEAD_PREFIXES = ("head.", "fc.", "linear.")


def gru_shapes(F: int, H: int, C: int) -> dict[str, tuple]:
    """Canonical key -> shape for input size F, hidden size H and C classes."""
    return {
        "weight_ih": (3 * H, F),
        "weight_hh": (3 * H, H),
        "bias_ih": (3 * H,),
        "bias_hh": (3 * H,),
        "head.weight": (C, H),
        "head.bias": (C,),
    }


def _aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for key in _CELL_KEYS:
        for prefix in _CELL_PREFIXES:
            aliases[prefix + key] = key
            aliases[prefix + key + "_l0"] = key
    for prefix in _HEAD_PREFIXES:
        aliases[prefix + "weight"] = "head.weight"
        aliases[prefix + "bias"] = "head.bias"
    return aliases


_ALIASES = _aliases()


def canonical_gru_weights(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename accepted aliases to `GRU_KEYS` and drop unrelated keys; shapes are not checked."""
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for name, value in weights.items():
        key = _ALIASES.get(name)
        if key is None:
            continue
        if key in out:
            raise WeightsError(f"GRU weights: both {source[key]!r} and {name!r} name {key!r}")
        out[key], source[key] = np.asarray(value), name
    return out


def gru_dims(weights: Mapping[str, np.ndarray]) -> tuple[int, int, int]:
    """(F, H, C) as the weights imply them; H and C by majority over every tensor that shows them."""
    w = canonical_gru_weights(weights)
    shape = {key: tuple(np.shape(value)) for key, value in w.items()}
    f_votes, h_votes, c_votes = [], [], []
    for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        if key in shape and len(shape[key]) >= 1 and shape[key][0] % 3 == 0:
            h_votes.append(shape[key][0] // 3)
    if len(shape.get("weight_hh", ())) == 2:
        h_votes.append(shape["weight_hh"][1])
    if len(shape.get("head.weight", ())) == 2:
        h_votes.append(shape["head.weight"][1])
        c_votes.append(shape["head.weight"][0])
    if len(shape.get("head.bias", ())) == 1:
        c_votes.append(shape["head.bias"][0])
    if len(shape.get("weight_ih", ())) == 2:
        f_votes.append(shape["weight_ih"][1])
    missing = [key for key in GRU_KEYS if key not in w]
    if not (f_votes and h_votes and c_votes):
        raise WeightsError("GRU weights: cannot tell the sizes; missing key(s): "
                           + (", ".join(missing) or "none") + f"; got shapes {shape}")

    def mode(votes: list) -> int:
        return Counter(votes).most_common(1)[0][0]  # ties: the first listed source wins

    return mode(f_votes), mode(h_votes), mode(c_votes)


def _checked(weights: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, int, int]:
    w = canonical_gru_weights(weights)
    F, H, C = gru_dims(w)
    check_state_dict(w, gru_shapes(F, H, C))
    return {key: np.asarray(value, dtype=np.float32) for key, value in w.items()}, F, H, C


def init_gru_weights(F: int, H: int, C: int, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch's default init: every GRUCell tensor and the Linear head ~ U(-1/sqrt(H), 1/sqrt(H))."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(H)
    return {key: rng.uniform(-bound, bound, shape).astype(np.float32)
            for key, shape in gru_shapes(F, H, C).items()}


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))  # no overflow for large |v|


def gru_step_numpy(weights: Mapping[str, np.ndarray], x: np.ndarray, h: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy reference of one step: x [N, F], h [N, H] -> (h_next [N, H], logits [N, C])."""
    w, F, H, C = _checked(weights)
    h_next = gru_cell_numpy(w, np.asarray(x, dtype=np.float32), np.asarray(h, dtype=np.float32))
    return h_next, h_next @ w["head.weight"].T + w["head.bias"]


def gru_cell_numpy(w: Mapping[str, np.ndarray], x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The cell alone (one layer of a stacked head too): x [N, F], h [N, H] -> h' [N, H]."""
    H = np.shape(w["weight_hh"])[1]
    gi = x @ np.asarray(w["weight_ih"]).T + w["bias_ih"]
    gh = h @ np.asarray(w["weight_hh"]).T + w["bias_hh"]
    r = _sigmoid(gi[:, :H] + gh[:, :H])
    z = _sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1.0 - z) * n + z * h


def gru_cell_params(g: GraphBuilder, w: Mapping[str, np.ndarray], H: int, prefix: str, zero_state: bool) -> dict[str, str]:
    """The initializers one layer's `emit_gru_cell` needs (with `zero_state`, also those of a first
    step from zeros); the x side (weight_ih, bias_ih) is the caller's."""
    p = {
        "split_rz_n": g.initializer(prefix + "split_rz_n", np.array([2 * H, H]), dtype=np.int64),
        "split_r_z": g.initializer(prefix + "split_r_z", np.array([H, H]), dtype=np.int64),
        "weight_hh": g.initializer(prefix + "weight_hh", w["weight_hh"]),
        "bias_hh": g.initializer(prefix + "bias_hh", w["bias_hh"]),
    }
    if zero_state:
        p["bias_hh_rz"] = g.initializer(prefix + "bias_hh_rz", w["bias_hh"][:2 * H])
        p["bias_hh_n"] = g.initializer(prefix + "bias_hh_n", w["bias_hh"][2 * H:])
    return p


def emit_gru_cell(g: GraphBuilder, gi: str, h: Optional[str], p: dict[str, str]) -> str:
    """One step from the x-side gates `gi` [N, 3H] (bias included) and state `h` (None: zeros)."""
    gi_rz, gi_n = g.node("Split", [gi, p["split_rz_n"]], outputs=2, axis=1)
    if h is None:  # zero state: W_hh h vanishes, only the bias is left
        gh_rz, gh_n = p["bias_hh_rz"], p["bias_hh_n"]
    else:
        gh = g.node("Gemm", [h, p["weight_hh"], p["bias_hh"]], transB=1)
        gh_rz, gh_n = g.node("Split", [gh, p["split_rz_n"]], outputs=2, axis=1)
    rz = g.node("Sigmoid", [g.node("Add", [gi_rz, gh_rz])])
    r, z = g.node("Split", [rz, p["split_r_z"]], outputs=2, axis=1)
    n = g.node("Tanh", [g.node("Add", [gi_n, g.node("Mul", [r, gh_n])])])
    if h is None:
        return g.node("Sub", [n, g.node("Mul", [z, n])])
    return g.node("Add", [n, g.node("Mul", [z, g.node("Sub", [h, n])])])


def _common(g: GraphBuilder, w: dict[str, np.ndarray], H: int, zero_state: bool) -> dict[str, str]:
    p = {
        "split_rz_n": g.initializer("split_rz_n", np.array([2 * H, H]), dtype=np.int64),
        "split_r_z": g.initializer("split_r_z", np.array([H, H]), dtype=np.int64),
        "head.weight": g.initializer("head.weight", w["head.weight"]),
        "head.bias": g.initializer("head.bias", w["head.bias"]),
    }
    if zero_state:
        p["bias_hh_rz"] = g.initializer("bias_hh_rz", w["bias_hh"][:2 * H])
        p["bias_hh_n"] = g.initializer("bias_hh_n", w["bias_hh"][2 * H:])
    return p


def build_gru_step(weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """One step: inputs `x` [batch, F], `h` [batch, H]; outputs `h_next` [batch, H], `logits` [batch, C]."""
    w, F, H, C = _checked(weights)
    g = GraphBuilder("gru_step")
    x = g.input("x", ["batch", F])
    h = g.input("h", ["batch", H])
    p = _common(g, w, H, zero_state=False)
    for key in _CELL_KEYS:
        p[key] = g.initializer(key, w[key])
    gi = g.node("Gemm", [x, p["weight_ih"], p["bias_ih"]], transB=1)
    h_next = emit_gru_cell(g, gi, h, p)
    g.output(h_next, "h_next", ["batch", H])
    logits = g.node("Gemm", [h_next, p["head.weight"], p["head.bias"]], transB=1)
    g.output(logits, "logits", ["batch", C])
    return g.model(doc=f"GRUCell({F}, {H}) step + Linear({H}, {C})")


def build_gru_sequence(weights: Mapping[str, np.ndarray], window: int) -> onnx.ModelProto:
    """A window from a zero state: input `x` [batch, W, F]; outputs `h_last` [batch, H], `logits` [batch, C].

    The step is unrolled W times over shared initializers; the x-side gates of all W
    steps come from one MatMul.
    """
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    window = int(window)
    w, F, H, C = _checked(weights)
    g = GraphBuilder("gru_sequence")
    x = g.input("x", ["batch", window, F])
    p = _common(g, w, H, zero_state=True)
    p["weight_hh"] = g.initializer("weight_hh", w["weight_hh"])
    p["bias_hh"] = g.initializer("bias_hh", w["bias_hh"])
    w_ih_t = g.initializer("weight_ih_t", np.ascontiguousarray(w["weight_ih"].T))
    gi_all = g.node("Add", [g.node("MatMul", [x, w_ih_t]), g.initializer("bias_ih", w["bias_ih"])])
    steps = g.node("Split", [gi_all, g.initializer("split_steps", np.ones(window), dtype=np.int64)],
                   outputs=window, axis=1)
    steps = [steps] if window == 1 else steps
    axes = g.initializer("axis_1", np.array([1]), dtype=np.int64)
    h: Optional[str] = None
    for step in steps:
        h = emit_gru_cell(g, g.node("Squeeze", [step, axes]), h, p)
    g.output(h, "h_last", ["batch", H])
    logits = g.node("Gemm", [h, p["head.weight"], p["head.bias"]], transB=1)
    g.output(logits, "logits", ["batch", C])
    return g.model(doc=f"GRUCell({F}, {H}) unrolled over {window} steps from zero + Linear({H}, {C})")
