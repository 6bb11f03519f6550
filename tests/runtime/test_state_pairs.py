"""Named state pairs: every part carries each recurrent state by name, never by position.

A two-layer LSTM head has four pairs (h, c, h_l1, c_l1). Declared in a scrambled order, with
the graph's inputs and outputs in another order again, it must give the same results, step
after step and through a checkpoint written by one run and restored by another; a state
handed over under the wrong name must change them (so the check can tell).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from helpers import require_tensorrt_gpu

from export.build import BuildOptions, build
from export.graphs.head import build_head_step, head_step_numpy, init_head_weights
from runtime import EmitMode, Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.backends.engine import EngineError, Recurrence
from runtime.backends.onnxrt import OrtEngine, available_providers
from runtime.errors import EXIT_ENGINES, ManifestError
from runtime.manifest import state_pairs
from runtime.pipeline import PipelineState
from runtime.service.checkpoint import Checkpoint, decode, encode, restore, snapshot

F, H, C = 12, 8, 3
PAIRS = tuple(Recurrence(i, o) for i, o in state_pairs("lstm", 2).items())
SCRAMBLED = (PAIRS[3], PAIRS[0], PAIRS[2], PAIRS[1])


@pytest.fixture(scope="module")
def lstm2(tmp_path_factory):
    """(weights, path of the step model, path of the same model with its inputs and outputs reversed)."""
    folder = tmp_path_factory.mktemp("lstm2")
    weights = init_head_weights("lstm", 2, F, H, C, seed=4)
    model = build_head_step(weights)
    onnx.save(model, folder / "step.onnx")
    for field in (model.graph.input, model.graph.output):
        items = list(field)
        del field[:]
        field.extend(reversed(items))
    onnx.save(model, folder / "reversed.onnx")
    return weights, folder / "step.onnx", folder / "reversed.onnx"


# Host buffers bound in place (the CPU provider), and the device-resident ping-pong of GPU
# providers: run here with CPU OrtValues, and on CUDA where onnxruntime-gpu and a GPU are.
PLACES = [("cpu", False), ("cpu", True), pytest.param("cuda", True, marks=pytest.mark.skipif(
    "CUDAExecutionProvider" not in available_providers(), reason="needs onnxruntime-gpu and a CUDA device"))]


@pytest.mark.parametrize("backend, resident", PLACES)
def test_scrambled_declaration_and_graph_order_step_identically(lstm2, backend, resident):
    # given the same head declared in two orders, once with its graph's tensors reversed too
    weights, path, reversed_path = lstm2
    plain = OrtEngine(str(path), "plain", max_batch=3, precision="fp32", recurrences=PAIRS, backend=backend,
                      resident_state=resident)
    scrambled = OrtEngine(str(reversed_path), "scrambled", max_batch=3, precision="fp32", recurrences=SCRAMBLED,
                          backend=backend, resident_state=resident)
    assert set(plain.state()) == set(scrambled.state()) == {"h", "c", "h_l1", "c_l1"}
    reference = {name: np.zeros((3, H), np.float32) for name in plain.state_names}
    rng = np.random.default_rng(0)
    for t in range(40):
        # when both step 40 frames, the last ten with the third stream sitting out
        batch = 3 if t < 30 else 2
        x = rng.standard_normal((batch, F)).astype(np.float32)
        for engine in (plain, scrambled):
            engine.input("x")[:batch] = x
            engine.step(batch)
        stepped, logits = head_step_numpy(weights, x, {n: v[:batch] for n, v in reference.items()})
        for name, value in stepped.items():
            reference[name][:batch] = value
        # then both give the numpy head's logits, and every state by name is the numpy head's
        # (1e-5: float32 engines against the float32 numpy head, as for the GRU)
        for engine in (plain, scrambled):
            np.testing.assert_allclose(engine.output("logits")[:batch], logits, atol=1e-5)
            for name in reference:
                np.testing.assert_allclose(engine.state()[name], reference[name], atol=1e-5, err_msg=name)


@pytest.mark.parametrize("backend, resident", PLACES)
def test_load_state_takes_exactly_the_engine_s_names_and_shapes(lstm2, backend, resident):
    _, path, _ = lstm2
    engine = OrtEngine(str(path), "lstm2", max_batch=2, precision="fp32", recurrences=SCRAMBLED, backend=backend,
                       resident_state=resident)
    states = {name: np.full((2, H), i + 1.0, np.float32) for i, name in enumerate(("h", "c", "h_l1", "c_l1"))}
    engine.load_state(states)
    # a load and a read by name give back each array under its own name
    assert {name: float(value[0, 0]) for name, value in engine.state().items()} == {"h": 1.0, "c": 2.0, "h_l1": 3.0, "c_l1": 4.0}
    with pytest.raises(EngineError, match=r"state names do not match \(missing c_l1\)"):
        engine.load_state({k: v for k, v in states.items() if k != "c_l1"})
    with pytest.raises(EngineError, match=r"unknown hidden"):
        engine.load_state({**states, "hidden": states["h"]})
    with pytest.raises(EngineError, match=r"state c must have shape \(2, 8\), got \(2, 7\)"):
        engine.load_state({**states, "c": states["c"][:, :7]})
    # and a reset of one row zeroes that row of every pair, nothing else
    engine.reset_state([1])
    for i, name in enumerate(("h", "c", "h_l1", "c_l1")):
        np.testing.assert_array_equal(engine.state()[name], [[i + 1.0] * H, [0.0] * H])


def test_a_pair_the_graph_does_not_have_is_refused(lstm2):
    _, path, _ = lstm2
    with pytest.raises(EngineError, match="no state pair c_l2 -> c_l2_next"):
        OrtEngine(str(path), "lstm2", max_batch=1, precision="fp32", recurrences=(*PAIRS, Recurrence("c_l2", "c_l2_next")))
    with pytest.raises(EngineError, match="state h is declared in more than one pair"):
        OrtEngine(str(path), "lstm2", max_batch=1, precision="fp32", recurrences=(*PAIRS, Recurrence("h", "c_next")))


# Through the runtime: manifests, pipelines, checkpoints -------------------------------------------
def _tiny(out, cell: str, layers: int):
    return build(BuildOptions(out=out, input_size=(32, 32), calib_frames=4, holdout_frames=2, int8=False, hidden=H,
                              cell=cell, layers=layers, window=4, stride=2))


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Tiny engines with a two-layer LSTM head (as built, and with the manifest's pairs listed
    in reverse) and with a one-layer GRU head."""
    root = tmp_path_factory.mktemp("heads")
    _tiny(root / "lstm2", "lstm", 2)
    shutil.copytree(root / "lstm2", root / "lstm2_reversed")
    path = root / "lstm2_reversed" / "manifest.json"
    data = json.loads(path.read_text())
    data["states"] = dict(reversed(list(data["states"].items())))
    path.write_text(json.dumps(data))
    _tiny(root / "gru", "gru", 1)
    return root


def _run(folder, video, frames: int, checkpoint=None):
    pipeline = Pipeline(open_engines(load_manifest(folder), "cpu"), [open_source(str(video))],
                        PipelineConfig(emit=EmitMode.BOTH, max_frames=frames))
    report = restore(pipeline, checkpoint) if checkpoint is not None else None
    return [(r.frame_index, r.mode, r.probabilities) for r in pipeline], pipeline, report


def test_the_manifest_records_the_head_and_its_state_names(heads):
    manifest = load_manifest(heads / "lstm2")
    assert (manifest.cell, manifest.layers) == ("lstm", 2)
    assert manifest.states == {"h": "h_next", "c": "c_next", "h_l1": "h_l1_next", "c_l1": "c_l1_next"}
    assert list(load_manifest(heads / "lstm2_reversed").states) == ["c_l1", "h_l1", "c", "h"]
    assert load_manifest(heads / "lstm2_reversed").identity() == manifest.identity()  # the same engines


def test_results_and_checkpoints_do_not_depend_on_the_order_of_the_pairs(heads, demo_video):
    # given 16 frames run without a break by the engines as built
    straight, _, _ = _run(heads / "lstm2", demo_video, 16)
    # when one run takes 8 frames and a run of the same engines with the pairs declared in
    # reverse resumes from its checkpoint (written and read back as bytes)
    first, pipeline, _ = _run(heads / "lstm2", demo_video, 8)
    saved = decode(encode(snapshot(pipeline, load_manifest(heads / "lstm2").identity())))
    assert sorted(saved.states) == ["c", "c_l1", "h", "h_l1"] and all(v.shape == (1, H) for v in saved.states.values())
    resumed, _, report = _run(heads / "lstm2_reversed", demo_video, 8, saved)
    # then the resumed run continues exactly where the straight run was, every step and window
    assert report.restored == (0,) and report.resumed == {0: 8}
    assert [r[:2] for r in first + resumed] == [r[:2] for r in straight]
    np.testing.assert_allclose([r[2] for r in first + resumed], [r[2] for r in straight], atol=1e-6)
    # and a checkpoint whose h and c were swapped (what a positional mix-up does) resumes differently
    swapped = Checkpoint(saved.identity, saved.saved_at, {**saved.states, "h": saved.states["c"], "c": saved.states["h"]},
                         saved.streams)
    wrong, _, _ = _run(heads / "lstm2_reversed", demo_video, 8, swapped)
    steps = [i for i, r in enumerate(resumed) if r[1] == "step"]
    assert not np.allclose([wrong[i][2] for i in steps[:1]], [resumed[i][2] for i in steps[:1]], atol=1e-4)


def test_import_state_takes_each_state_by_name(heads, demo_video):
    # given the carried states of a run, handed over in another order than the engine declares them
    _, pipeline, _ = _run(heads / "lstm2", demo_video, 6)
    state = pipeline.export_state()
    shuffled = PipelineState({name: state.states[name] for name in ("c_l1", "h", "c", "h_l1")}, state.streams)
    # when another run imports them, then each lands under its own name
    second = Pipeline(open_engines(load_manifest(heads / "lstm2"), "cpu"), [open_source(str(demo_video))],
                      PipelineConfig(max_frames=1))
    second.import_state(shuffled)
    for name, value in second.export_state().states.items():
        np.testing.assert_array_equal(value, state.states[name], err_msg=name)
    assert len({float(v[0, 0]) for v in state.states.values()}) == 4  # four different arrays: a mix-up would show


def test_a_format_1_checkpoint_resumes_a_gru_and_another_head_starts_fresh(heads, demo_video):
    # given a checkpoint written by the previous format: one array `hidden` (the one-layer GRU's h)
    _, pipeline, _ = _run(heads / "gru", demo_video, 6)
    current = snapshot(pipeline, "x")
    legacy = _format_1(current.identity, current.states["h"], current.streams)
    # when a GRU run restores it, it takes it as its state h
    decoded = decode(legacy)
    assert list(decoded.states) == ["h"]
    np.testing.assert_array_equal(decoded.states["h"], current.states["h"])
    _, gru_run, report = _run(heads / "gru", demo_video, 2, decoded)
    assert report.restored == (0,)
    # and an LSTM run starts fresh and says why
    _, _, report = _run(heads / "lstm2", demo_video, 2, decoded)
    assert report.restored == () and "other state names (h; this head carries c, c_l1, h, h_l1)" in report.fresh[0]


def _format_1(identity, hidden, streams) -> bytes:
    """What the previous runtime wrote (its encode, before states had names)."""
    import io

    meta = {"format": 1, "identity": identity, "saved_at": 0.0,
            "streams": [{"name": s.name, "live": s.live, "position": s.position, "finished": s.finished, "pushed": s.pushed}
                        for s in streams]}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8), "hidden": hidden}
    arrays.update({f"ring{i}": s.ring for i, s in enumerate(streams)})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_a_manifest_without_head_fields_is_the_one_layer_gru(heads, tmp_path, demo_video):
    # given a manifest as builds wrote it before cells and layers were recorded
    shutil.copytree(heads / "gru", tmp_path / "old")
    path = tmp_path / "old" / "manifest.json"
    data = json.loads(path.read_text())
    for key in ("cell", "layers", "states"):
        data.pop(key)
    path.write_text(json.dumps(data))
    # then it loads as a one-layer GRU h -> h_next and gives what the recorded manifest gives
    manifest = load_manifest(tmp_path / "old")
    assert (manifest.cell, manifest.layers, manifest.states) == ("gru", 1, {"h": "h_next"})
    old, pipeline, _ = _run(tmp_path / "old", demo_video, 5)
    assert list(pipeline.export_state().states) == ["h"]
    recorded, _, _ = _run(heads / "gru", demo_video, 5)
    assert old == recorded and len(old) == 5 + 1  # 5 steps and one window (W=4: at frame 3; the next is due at 5)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d.update(states={"h": "h_next"}), "states is .*expected 4 pairs of state names .* for a 2-layer LSTM"),
    (lambda d: d.update(layers=3), "layers is 3, expected an integer from 1 to 2"),
    (lambda d: d.update(cell="rnn"), "cell is \"rnn\", expected one of gru, lstm"),
    (lambda d: d.update(states={**d["states"], "c_l1": "h_next"}), "distinct input and output names"),
    (lambda d: d.update(states={**{k: v for k, v in d["states"].items() if k != "c"}, "cell": "cell_next"}),
     "has no state tensor cell, cell_next"),
])
def test_head_fields_that_do_not_fit_are_refused_with_exit_3(heads, tmp_path, edit, expected):
    shutil.copytree(heads / "lstm2", tmp_path / "bad")
    path = tmp_path / "bad" / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=expected) as excinfo:
        load_manifest(tmp_path / "bad")
    assert excinfo.value.exit_code == EXIT_ENGINES


def test_tensorrt_keeps_one_ping_pong_pair_per_state_by_name(lstm2, tmp_path):
    # Runs where TensorRT, pycuda and a GPU are (a Jetson: the on-box acceptance run); skips elsewhere.
    require_tensorrt_gpu()
    from runtime.backends.tensorrt import TrtEngine, build_plan

    # given a plan of the graph with its tensors reversed, its pairs declared scrambled
    weights, _, reversed_path = lstm2
    info = build_plan(reversed_path, tmp_path / "lstm2.fp32.plan", precision="fp32", max_batch=3)
    reference = {name: np.zeros((3, H), np.float32) for name in state_pairs("lstm", 2)}
    rng = np.random.default_rng(1)
    with TrtEngine(info["plan"], "lstm2", max_batch=3, precision="fp32", recurrences=SCRAMBLED) as engine:
        for t in range(8):
            # when it steps, the third stream sitting out the last steps
            batch = 3 if t < 5 else 2
            x = rng.standard_normal((batch, F)).astype(np.float32)
            engine.input("x")[:batch] = x
            engine.step(batch)
            stepped, logits = head_step_numpy(weights, x, {n: v[:batch] for n, v in reference.items()})
            for name, value in stepped.items():
                reference[name][:batch] = value
            # then logits and every state by name follow the numpy head (1e-4: TensorRT's FP32 kernels)
            np.testing.assert_allclose(engine.output("logits")[:batch], logits, atol=1e-4)
        for name, value in engine.state().items():
            np.testing.assert_allclose(value, reference[name], atol=1e-4, err_msg=name)
        # and a reset of row 1 zeroes it in every pair; a loaded state is what the next step reads
        engine.reset_state([1])
        assert all(not value[1].any() and value[0].any() for value in engine.state().values())
        engine.load_state(reference)
        engine.input("x")[:3] = x[:1]
        engine.step(3)
        _, logits = head_step_numpy(weights, np.repeat(x[:1], 3, axis=0), reference)
        np.testing.assert_allclose(engine.output("logits")[:3], logits, atol=1e-4)
