"""The LSTM cell (PyTorch `LSTMCell` semantics), as ONNX nodes and in numpy.

Equations and weight layout are PyTorch's (`torch.nn.LSTMCell(F, H)`, gate rows i, f, g, o):

    i  = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f  = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g  = tanh(W_ig x + b_ig + W_hg h + b_hg)
    o  = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')

As for the GRU (`export.graphs.gru`), explicit Gemm, Split, Sigmoid, Tanh, Mul and Add nodes
rather than ONNX's `LSTM` operator, which TensorRT imports as a loop: the four gates share one
Gemm on the x side and one on the h side, and i, f and o share one Sigmoid. The layers and
the head around the cell are `export.graphs.head`'s.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from export.graphs.graph import GraphBuilder

GATES = 4  # rows of weight_ih / weight_hh per hidden unit


def lstm_cell_shapes(F: int, H: int) -> dict[str, tuple]:
    """Cell key -> shape for input size F and hidden size H (`torch.nn.LSTMCell(F, H)`)."""
    return {"weight_ih": (GATES * H, F), "weight_hh": (GATES * H, H), "bias_ih": (GATES * H,), "bias_hh": (GATES * H,)}


def lstm_cell_params(g: GraphBuilder, w: Mapping[str, np.ndarray], H: int, prefix: str, zero_state: bool = False
                     ) -> dict[str, str]:
    """The initializers one layer's `emit_lstm_cell` needs; the x side (weight_ih, bias_ih) is the
    caller's. `zero_state` (a first step from zeros) needs nothing more: it adds bias_hh alone."""
    return {
        "weight_hh": g.initializer(prefix + "weight_hh", w["weight_hh"]),
        "bias_hh": g.initializer(prefix + "bias_hh", w["bias_hh"]),
        "split_ifo": g.initializer(prefix + "split_if_g_o", np.array([2 * H, H, H]), dtype=np.int64),
    }


def emit_lstm_cell(g: GraphBuilder, gi: str, h: Optional[str], c: Optional[str], p: Mapping[str, str]) -> tuple[str, str]:
    """One step from the x-side gates `gi` [N, 4H] (bias included) and state (h, c) (None: zeros).

    Returns the names of (h', c').
    """
    if h is None:
        gates = g.node("Add", [gi, p["bias_hh"]])  # W_hh h vanishes, only the bias is left
    else:
        gates = g.node("Add", [gi, g.node("Gemm", [h, p["weight_hh"], p["bias_hh"]], transB=1)])
    i_f, g_gate, o = g.node("Split", [gates, p["split_ifo"]], outputs=3, axis=1)
    i_f = g.node("Sigmoid", [i_f])
    i, f = g.node("Split", [i_f], outputs=2, axis=1)
    candidate = g.node("Tanh", [g_gate])
    fresh = g.node("Mul", [i, candidate])
    c_next = fresh if c is None else g.node("Add", [g.node("Mul", [f, c]), fresh])
    h_next = g.node("Mul", [g.node("Sigmoid", [o]), g.node("Tanh", [c_next])])
    return h_next, c_next


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))  # no overflow for large |v|


def lstm_cell_numpy(w: Mapping[str, np.ndarray], x: np.ndarray, h: np.ndarray, c: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy reference of one step: x [N, F], h and c [N, H] -> (h', c')."""
    H = np.shape(w["weight_hh"])[1]
    gates = x @ np.asarray(w["weight_ih"]).T + w["bias_ih"] + h @ np.asarray(w["weight_hh"]).T + w["bias_hh"]
    i, f = _sigmoid(gates[:, :H]), _sigmoid(gates[:, H:2 * H])
    g, o = np.tanh(gates[:, 2 * H:3 * H]), _sigmoid(gates[:, 3 * H:])
    c_next = f * c + i * g
    return o * np.tanh(c_next), c_next
