"""`--record` and `edge-run replay` with a head of several states: a two-layer LSTM (h, c per layer)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from export.build import BuildOptions, build
from runtime.cli import main as edge_run_main
from runtime.recording import chunk_files

# Reproduction of the recorded states and probabilities: the 1e-5.
TOLERANCE = 1e-5
STATES = ("h", "c", "h_l1", "c_l1")


@pytest.fixture(scope="module")
def lstm2_engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("lstm2")
    build(BuildOptions(out=out, input_size=(32, 32), calib_frames=4, holdout_frames=2, int8=False, hidden=16,
                       cell="lstm", layers=2, window=4, stride=2))
    return out


def test_a_two_layer_lstm_run_is_recorded_per_state_and_replayed_exactly(lstm2_engines, demo_video, tmp_path, capsys):
    root, live = tmp_path / "rec", tmp_path / "live.jsonl"
    code = edge_run_main(["--engines", str(lstm2_engines), "--source", str(demo_video), "--backend", "cpu",
                          "--out", str(live), "--record", str(root), "--record-chunk", "16"])
    assert code == 0, capsys.readouterr().err
    chunks = [dict(np.load(path, allow_pickle=False)) for path in chunk_files(root)]
    assert sum(len(c["frame"]) for c in chunks) == 60  # every frame of the 60-frame video, chunks of 16
    for chunk in chunks:
        for name in STATES:  # one array per state name, each [T, H], and the state each chunk starts from
            assert chunk[f"state.{name}"].shape == (len(chunk["frame"]), 16)
            assert chunk[f"initial.{name}"].shape == (16,)
    # a layer's cell state is not its hidden state: the names are not a relabelling of one array
    assert not np.allclose(chunks[-1]["state.h"], chunks[-1]["state.c"])

    capsys.readouterr()
    replayed = tmp_path / "replayed.jsonl"
    code = edge_run_main(["replay", str(root), "--engines", str(lstm2_engines), "--out", str(replayed)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "reproduced with the recording's engines over 60 steps" in err
    assert float(err.split("max |state diff| ")[1].split(",")[0]) <= TOLERANCE
    lines = [json.loads(line) for line in replayed.read_text().splitlines()]
    originals = [json.loads(line) for line in live.read_text().splitlines()]
    assert [line["frame"] for line in lines] == [line["frame"] for line in originals] == list(range(60))
    np.testing.assert_allclose([list(line["probs"].values()) for line in lines],
                               [list(line["probs"].values()) for line in originals], atol=TOLERANCE)
