"""What the runtime does, checked from its outputs rather than from its own counters.

An API reset changes the next result, a latency budget decides the deadline misses, the
accuracy `--score` prints is the one the JSON lines give, every documented exit code is
the one a user gets, and each flag of `edge-run` changes what it says it changes. Runs are
in-process (`runtime.cli.main`) on the session's engines to keep them cheap.
"""
from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from helpers import PacedLiveSource, gru_weights, naive

from export.graphs.gru import gru_step_numpy
from runtime import Pipeline, PipelineConfig, cli, load_manifest, open_engines, open_source
from runtime.errors import EXIT_ENGINES, EXIT_FAILED, EXIT_OK, EXIT_SOURCE, EXIT_USAGE
from runtime.frame import Frame
from runtime.manifest import InputSpec
from runtime.preprocess import Preprocessor
from runtime.result import Result
from runtime.sinks import JsonLinesSink
from runtime.sources import Source, SourceReadError
from runtime.sources.opencv import StreamSource, redact


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def edge_run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary_count(stderr: str, name: str) -> int:
    return int(re.search(rf"\b{name} (\d+)", stderr).group(1))


def video_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            return frames
        frames.append(image)


# 1. An API reset ---------------------------------------------------------------------------------
def test_after_an_api_reset_the_next_step_is_a_step_from_a_zero_state(engines_dir, demo_video):
    # given a file run that has carried its state over 5 frames
    manifest = load_manifest(engines_dir)
    pipeline = Pipeline(open_engines(manifest, "cpu"), [open_source(str(demo_video))], PipelineConfig(max_frames=8))
    iterator = iter(pipeline)
    carried = [next(iterator) for _ in range(5)]
    # when the API asks for a reset
    pipeline.request_reset(0)
    after = next(iterator)
    list(iterator)
    # then frame 5's result is the GRU stepped once from h = 0 on frame 5's features, computed
    # independently: OpenCV decode, textbook preprocessing, plain session.run, the numpy GRU
    image = video_frames(demo_video)[5]
    session = ort.InferenceSession(str(manifest.folder / "backbone_fp32.onnx"))
    feature = session.run(None, {"image": naive(image, manifest.input)[None]})[0]
    _, logits = gru_step_numpy(gru_weights(manifest), feature, np.zeros((1, manifest.hidden_size), np.float32))
    assert after.frame_index == 5 and len(carried) == 5
    # 1e-5: float32 engines against float32 numpy on the same features (the precision the
    # offline chain reaches, ~1e-7, with room for a different summation order)
    np.testing.assert_allclose(after.probabilities, softmax(logits[0]), atol=1e-5)
    assert pipeline.stats.streams[0].resets == {"api": 1}
    # and it is not what the carried state gives at frame 5 (so the check can tell them apart)
    uninterrupted = list(Pipeline(open_engines(manifest, "cpu"), [open_source(str(demo_video))], PipelineConfig(max_frames=6)))
    assert not np.allclose(uninterrupted[5].probabilities, after.probabilities, atol=1e-3)


# 2. --budget-ms ----------------------------------------------------------------------------------
@pytest.mark.parametrize("budget_ms, late", [(0.001, True), (60000, False)])
def test_the_budget_decides_the_deadline_misses(engines_dir, capsys, budget_ms, late):
    # A result takes more than 1 µs from capture (a CNN call alone is milliseconds) and far less than 60 s.
    code, _, err = edge_run(capsys, "--engines", engines_dir, "--source", "demo", "--max-frames", 12, "--backend", "cpu",
                            "--quiet", "--budget-ms", budget_ms)
    assert code == EXIT_OK, err
    assert summary_count(err, "results") == 12
    assert summary_count(err, "deadline misses") == (12 if late else 0)
    manifest = load_manifest(engines_dir)
    with Pipeline(open_engines(manifest, "cpu"), [open_source("demo")],
                  PipelineConfig(max_frames=12, budget=budget_ms / 1e3)) as pipeline:
        results = list(pipeline)
    assert pipeline.stats.streams[0].misses == (len(results) if late else 0) and len(results) == 12


# 3. --score --------------------------------------------------------------------------------------
def scored_accuracy(lines: list[dict], window: int) -> dict[str, tuple[int, int]]:
    """Accuracy per mode by the README's rule: only steps/windows whose last W frames show one label.

    (No resets in a demo file run, so "since the last reset" is every frame.) The label run
    at each frame is read off the step lines, which cover every frame.
    """
    run_at, run, previous = {}, 0, None
    for line in (r for r in lines if r["mode"] == "step"):
        run = run + 1 if line["true_label"] == previous else 1
        previous = line["true_label"]
        run_at[line["frame"]] = run
    tally: dict[str, list[int]] = {}
    for line in lines:
        if run_at[line["frame"]] >= window and (line["mode"] == "window" or line["frame"] + 1 >= window):
            entry = tally.setdefault(line["mode"], [0, 0])
            entry[0] += line["label"] == line["true_label"]
            entry[1] += 1
    return {mode: (c, t) for mode, (c, t) in tally.items()}


def test_score_prints_the_accuracy_the_json_lines_give(engines_dir, capsys):
    # given a demo run with both outputs and a short window (so early, harder steps are scored too)
    code, out, err = edge_run(capsys, "--engines", engines_dir, "--source", "demo", "--max-frames", 240, "--backend", "cpu",
                              "--emit", "both", "--window", 3, "--stride", 2, "--score")
    assert code == EXIT_OK, err
    tally = scored_accuracy(records(out), window=3)
    # the run has both right and wrong labels, so a scorer that judged everything right (or wrong) differs
    assert 0 < tally["step"][0] < tally["step"][1]
    for mode, noun in (("step", "steps"), ("window", "windows")):
        correct, total = tally[mode]
        assert f"{mode} accuracy {100.0 * correct / total:.1f}% ({total} {noun})" in err


# 5. Exit codes -----------------------------------------------------------------------------------
class BreakingFile(Source):
    """A file-like (finite) source whose reader raises after `good` frames: a decoder bug, a lost disk."""

    def __init__(self, error: Exception, good: int = 5) -> None:
        super().__init__("breaking.mp4", live=False, fps=30.0)
        self.error = error
        self.good = good
        self.read_count = 0

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _read(self, out: Optional[np.ndarray]) -> Optional[Frame]:
        self.read_count += 1
        if self.read_count > self.good:
            raise self.error
        return self._emit(np.full((120, 160, 3), 90, np.uint8), 0.0)


@pytest.mark.parametrize("error", [RuntimeError("cv2.error: decoder crashed (injected)"),
                                   SourceReadError("read failed (injected)")], ids=["crash", "read-error"])
def test_a_source_failing_for_good_mid_run_exits_1_after_its_results(engines_dir, tmp_path, capsys, monkeypatch, error):
    # given a file source that breaks after 5 frames (a file is not reopened: it fails the run)
    monkeypatch.setattr(cli, "open_source", lambda *args, **kwargs: BreakingFile(error))
    out = tmp_path / "r.jsonl"
    code, _, err = edge_run(capsys, "--engines", engines_dir, "--source", "x", "--backend", "cpu", "--out", out)
    # then the run exits 1 with one line saying which source failed, no traceback, and the 5 results kept
    assert code == EXIT_FAILED, err
    assert "edge-run: error: source breaking.mp4 failed" in err and "Traceback" not in err
    assert [r["frame"] for r in records(out.read_text())] == list(range(5))


def test_every_documented_exit_code(engines_dir, engines_copy, tmp_path, capsys):
    ok = edge_run(capsys, "--engines", engines_dir, "--source", "demo", "--max-frames", 2, "--backend", "cpu", "--quiet")
    assert ok[0] == EXIT_OK == 0, ok[2]
    bad = edge_run(capsys, "--engines", engines_dir, "--window", 0)
    assert bad[0] == EXIT_USAGE == 2 and "--window" in bad[2]
    (engines_copy / "backbone_fp32.onnx").write_bytes(b"not an onnx model")
    engines = edge_run(capsys, "--engines", engines_copy, "--source", "demo", "--max-frames", 1, "--backend", "cpu")
    assert engines[0] == EXIT_ENGINES == 3 and "edge-export" in engines[2]
    fake = tmp_path / "clip.mp4"
    fake.write_text("not a video")
    unreadable = edge_run(capsys, "--engines", engines_dir, "--source", fake, "--backend", "cpu")
    assert unreadable[0] == EXIT_SOURCE == 4 and "clip.mp4" in unreadable[2]


# 7. Flags, one behaviour each --------------------------------------------------------------------
def run_pipeline(manifest, sources, **config) -> tuple[list[Result], Pipeline]:
    with Pipeline(open_engines(manifest, "cpu", num_streams=len(sources)), sources, PipelineConfig(**config)) as pipeline:
        results = list(pipeline)
    return results, pipeline


def parsed_config(*flags) -> PipelineConfig:
    return cli._config(cli.build_parser().parse_args([str(f) for f in flags]))


def test_reset_gap_ms_is_the_capture_gap_that_resets_a_live_stream(engines_dir):
    # given a camera that stalls 0.4 s before frame 6
    manifest = load_manifest(engines_dir)
    for flag, resets in (("250", {"timestamp gap": 1}), ("5000", {})):
        config = parsed_config("--reset-gap-ms", flag, "--drop-policy", "none", "--max-frames", 10)
        _, pipeline = run_pipeline(manifest, [PacedLiveSource(fps=100.0, pause_at={6: 0.4})], reset_gap=config.reset_gap,
                                   drop_policy=config.drop_policy, max_frames=config.max_frames)
        # then a 250 ms gap setting resets the state once, a 5 s one never
        assert pipeline.stats.streams[0].resets == resets, flag


def test_drop_policy_none_keeps_every_frame_and_newest_drops_stale_ones(engines_dir):
    manifest = load_manifest(engines_dir)
    for flag in ("none", "newest"):
        config = parsed_config("--drop-policy", flag, "--max-frames", 150)
        source = PacedLiveSource(fps=3000.0)  # far faster than a ~3 ms loop
        results, pipeline = run_pipeline(manifest, [source], drop_policy=config.drop_policy, max_frames=150)
        indices = [r.frame_index for r in results]
        if flag == "none":
            assert indices == list(range(150)) and pipeline.stats.total("dropped") == 0
        else:
            assert pipeline.stats.total("dropped") > 0 and indices == sorted(set(indices))
            assert pipeline.stats.total("dropped") == sum(r.dropped for r in results)


def test_window_and_stride_set_the_window_schedule_and_length(engines_dir, demo_video, capsys):
    # given W=5, S=3 instead of the manifest's 8 and 4
    code, out, err = edge_run(capsys, "--engines", engines_dir, "--source", demo_video, "--backend", "cpu",
                              "--emit", "window", "--window", 5, "--stride", 3)
    assert code == EXIT_OK, err
    lines = records(out)
    # then a decision every 3 frames once 5 are buffered
    assert [r["frame"] for r in lines] == list(range(4, 60, 3))
    # and each is the GRU from zero over exactly the last 5 frames' features
    manifest = load_manifest(engines_dir)
    session = ort.InferenceSession(str(manifest.folder / "backbone_fp32.onnx"))
    images = video_frames(demo_video)
    weights = gru_weights(manifest)
    for line in lines[:3]:
        h = np.zeros((1, manifest.hidden_size), np.float32)
        for image in images[line["frame"] - 4 : line["frame"] + 1]:
            h, logits = gru_step_numpy(weights, session.run(None, {"image": naive(image, manifest.input)[None]})[0], h)
        # 1e-5: see the API-reset test (float32 chain against float32 numpy)
        np.testing.assert_allclose(list(line["probs"].values()), softmax(logits[0]), atol=1e-5)


def test_precision_int8_runs_the_int8_backbone_within_the_quality_gate(engines_dir, demo_video, capsys, caplog):
    manifest = load_manifest(engines_dir)
    caplog.set_level(logging.INFO, logger="edge_run")
    runs = {}
    for precision in ("fp32", "int8"):
        code, out, err = edge_run(capsys, "--engines", engines_dir, "--source", demo_video, "--backend", "cpu",
                                  "--max-frames", 8, "--precision", precision, "--log-level", "INFO")
        assert code == EXIT_OK, err
        assert any(f"backbone {precision}" in r.getMessage() for r in caplog.records)
        runs[precision] = np.array([list(r["probs"].values()) for r in records(out)])
    # a different backbone ran: the results are not the FP32 ones
    assert not np.array_equal(runs["fp32"], runs["int8"])
    # and its features meet the documented INT8 gate (mean cosine to FP32 >= the manifest's min_cosine_gate)
    cosines = []
    images = video_frames(demo_video)[:8]
    for image in images:
        features = []
        for precision in ("fp32", "int8"):
            engines = open_engines(manifest, "cpu", precision)
            assert engines.precision == precision
            Preprocessor(manifest.input)(image, engines.backbone.input("image")[0])
            engines.backbone.run(1)
            features.append(engines.backbone.output("features")[0].copy())
            engines.close()
        a, b = features
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    assert np.mean(cosines) >= manifest.quantization["min_cosine_gate"]


def test_serial_gives_the_same_results_as_threaded_on_a_file(engines_dir, demo_video, capsys, monkeypatch):
    # --serial reads the sources in the loop thread: no capture thread is ever started
    threaded: dict[int, bool] = {}  # per pipeline (the service and the loop both call start)
    alive = []  # keeps each pipeline, so no id is reused
    original_start = cli.Pipeline.start

    def start(self) -> None:
        original_start(self)
        alive.append(self)
        threaded[id(self)] = any(stream.capture is not None for stream in self.streams)

    monkeypatch.setattr(cli.Pipeline, "start", start)
    outputs = []
    for extra in ([], ["--serial"]):
        code, out, err = edge_run(capsys, "--engines", engines_dir, "--source", demo_video, "--backend", "cpu",
                                  "--emit", "both", *extra)
        assert code == EXIT_OK, err
        outputs.append([(r["mode"], r["frame"], r["label"], r["probs"]) for r in records(out)])
    assert outputs[0] == outputs[1] and len(outputs[0]) > 60  # identical: same frames, same engines, same order
    assert list(threaded.values()) == [True, False]  # capture threads for the default run, none under --serial


def test_no_restore_and_checkpoint_max_age_decide_whether_a_checkpoint_is_used(engines_dir, tmp_path, capsys, caplog):
    state = tmp_path / "state"
    base = ["--engines", engines_dir, "--source", "demo", "--backend", "cpu", "--state-dir", state, "--max-frames", 4]
    assert edge_run(capsys, *base)[0] == EXIT_OK
    # a checkpoint of 4 frames of the (resumable) demo exists: by default the next run resumes at frame 4
    code, out, err = edge_run(capsys, *base)
    assert code == EXIT_OK and [r["frame"] for r in records(out)] == [4, 5, 6, 7], err
    # --no-restore starts from frame 0 with a fresh state
    code, out, err = edge_run(capsys, *base, "--no-restore")
    assert code == EXIT_OK and [r["frame"] for r in records(out)] == [0, 1, 2, 3], err
    # a checkpoint older than --checkpoint-max-age (1 ms: any written before this run) is not used, and the log says why
    caplog.clear()
    code, out, err = edge_run(capsys, *base, "--checkpoint-max-age", 0.001)
    assert code == EXIT_OK and [r["frame"] for r in records(out)] == [0, 1, 2, 3], err
    assert any("starting fresh" in r.getMessage() and "old (limit" in r.getMessage() for r in caplog.records)


def test_credentials_are_masked_in_the_source_name_and_the_json_source_field(engines_dir, tmp_path, capsys):
    uri = "rtsp://user:s3cret@127.0.0.1:9/stream"
    assert redact(uri) == "rtsp://user:***@127.0.0.1:9/stream"
    source = StreamSource(uri, backend="ffmpeg")  # never opened: no camera needed
    assert source.name == redact(uri)
    # the JSON lines carry the source's (masked) name
    manifest = load_manifest(engines_dir)
    buffer = io.StringIO()
    sink = JsonLinesSink(buffer, manifest.labels)
    probs = tuple([1.0 / manifest.num_classes] * manifest.num_classes)
    sink(Result(stream=0, frame_index=0, capture_time=0.0, mode="step", label=manifest.labels[0], score=probs[0],
                probabilities=probs, latency=0.0, dropped=0, source=source.name))
    sink.close()
    written = buffer.getvalue()
    assert json.loads(written)["source"] == "rtsp://user:***@127.0.0.1:9/stream" and "s3cret" not in written
    # and an unreachable camera's error names it masked
    code, _, err = edge_run(capsys, "--engines", engines_dir, "--source", uri, "--backend", "cpu")
    assert code == EXIT_USAGE and "user:***@" in err and "s3cret" not in err


def test_preprocessing_defaults_are_torchvisions_imagenet_normalisation(engines_dir):
    # torchvision's published ImageNet normalisation (transforms.Normalize in its reference scripts)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert InputSpec().mean == mean and InputSpec().std == std and InputSpec().color_order == "RGB"
    assert InputSpec().scale == 1.0 / 255.0
    spec = load_manifest(engines_dir).input
    assert tuple(spec.mean) == mean and tuple(spec.std) == std

