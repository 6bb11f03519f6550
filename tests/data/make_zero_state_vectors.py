"""Writes recurrent_zero_state_torch.npz: PyTorch's heads run from zero states (not run by the tests).

The window-sequence engines start every window from zero states, which the stored step
vectors (`*_torch.npz`, from random initial states) do not show. For each of the four heads
this runs the same PyTorch modules (`GRUCell`/`LSTMCell`, `nn.GRU`/`nn.LSTM(num_layers=2)`,
then the `Linear` head) on the same inputs from zeros, and stores per step:
`<file>.logits` [batch, T, C] and `<file>.h_top` [batch, T, H] (the top layer's h).

    .venv/bin/python tests/data/make_zero_state_vectors.py      # needs torch (CPU is enough)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
FILES = ("gru_cell_torch", "lstm_cell_torch", "gru2_torch", "lstm2_torch")


def _module(name: str, ref: dict) -> torch.nn.Module:
    F, H = ref["weight_ih" if "weight_ih" in ref else "weight_ih_l0"].shape[1], ref["head.weight"].shape[1]
    cell = "lstm" if name.startswith("lstm") else "gru"
    if name.endswith("cell_torch"):
        return (torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell)(F, H)
    return (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(F, H, num_layers=2, batch_first=True)


def _run(name: str, ref: dict) -> tuple[np.ndarray, np.ndarray]:
    module = _module(name, ref)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in ref.items() if "." not in k})
    head = torch.nn.Linear(ref["head.weight"].shape[1], ref["head.weight"].shape[0])
    head.load_state_dict({"weight": torch.from_numpy(ref["head.weight"]), "bias": torch.from_numpy(ref["head.bias"])})
    x = ref["input.x"].transpose(1, 0, 2) if name == "gru_cell_torch" else ref["input.x"]  # -> [batch, T, F]
    x = torch.from_numpy(np.ascontiguousarray(x))
    with torch.no_grad():
        if isinstance(module, (torch.nn.GRU, torch.nn.LSTM)):
            top, _ = module(x)  # zero initial states by default
        else:
            state, tops = None, []
            for t in range(x.shape[1]):
                state = module(x[:, t], state)
                tops.append(state[0] if isinstance(state, tuple) else state)
            top = torch.stack(tops, dim=1)
        return head(top).numpy(), top.numpy()


def main() -> None:
    arrays = {}
    for name in FILES:
        ref = dict(np.load(HERE / f"{name}.npz"))
        arrays[f"{name}.logits"], arrays[f"{name}.h_top"] = _run(name, ref)
    np.savez(HERE / "recurrent_zero_state_torch.npz", torch_version=np.array(torch.__version__), **arrays)


if __name__ == "__main__":
    main()
