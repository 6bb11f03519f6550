"""`edge-run replay DIR`: the head engine of an engines folder over recorded features, offline.

With the engines that made the recording (the same `Manifest.identity()`), every chunk
starts from its recorded initial state and the replay must reproduce the recorded states
and probabilities: it prints the largest difference and exits 1 beyond `--tolerance`.
With another head the state is carried from chunk to chunk (zeroed where the live state
was reset) and the replay shows how that head would have decided on the same footage.
Either way it writes one JSON line per step, exactly like the live run (the recorded
frame, capture time, latency and drops; the replayed label and probabilities), and prints
accuracy against the recorded ground truth where there is one (counted like `--score`)
and agreement with the recorded decisions.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from runtime import validation as valid
from runtime.backends import BACKENDS, open_head
from runtime.errors import EXIT_FAILED, EXIT_OK, EngineError, PipelineError, SourceError
from runtime.help_format import ArgumentParser
from runtime.manifest import Manifest, load_manifest
from runtime.recording.format import chunk_files, read_stream_chunks, state_names
from runtime.result import Result
from runtime.sinks import JsonLinesSink
from runtime.temporal import StepRunner

log = logging.getLogger("edge_run.replay")

DEFAULT_TOLERANCE = 1e-5  # float32 engines reproduce their own steps to ~1e-7


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="edge-run replay",
        description="Run the head (GRU) engine of an engines folder over the features of a recording (--record DIR).",
        epilog="Examples:  edge-run replay rec/   |   edge-run replay rec/ --engines other_head/ --out replayed.jsonl",
    )
    parser.add_argument("recording", metavar="DIR", help="a folder written by edge-run --record")
    parser.add_argument("--engines", default="engines", metavar="DIR", help="folder holding manifest.json whose head is replayed")
    parser.add_argument("--backend", choices=BACKENDS, default="cpu", help="where the head runs")
    parser.add_argument("--out", metavar="FILE", help="append JSON lines to FILE instead of stdout")
    parser.add_argument("--quiet", action="store_true", help="no JSON lines on stdout (summary only)")
    parser.add_argument("--tolerance", type=valid.fraction(0.0, 1.0), default=DEFAULT_TOLERANCE,
                        help="with the recording's own engines: the largest state or probability difference accepted")
    return parser


@dataclass
class StreamReplay:
    """What the replay of one stream found."""

    stream: int
    source: str = ""
    steps: int = 0
    chunks: int = 0
    same_model: int = 0  # steps whose chunk was recorded by the replayed engines
    max_state_error: float = 0.0
    max_prob_error: float = 0.0
    agree: int = 0  # replayed label == recorded label
    scored: list[int] = field(default_factory=lambda: [0, 0])  # correct, total over scorable labelled steps


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max()
    e = np.exp(z)
    return e / e.sum()


def replay(root: Path, manifest: Manifest, backend: str, emit) -> list[StreamReplay]:
    """Replay every chunk under `root` through `manifest`'s head; `emit(result)` gets each step's result."""
    if not chunk_files(root):
        raise SourceError(f"{root}: no recording here (expected stream<N>/chunk-*.npz written by edge-run --record)")
    identity = manifest.identity()
    engine = open_head(manifest, backend)
    try:
        runner = StepRunner(engine, 1)
        names = runner.engine.state_names
        found: dict[int, StreamReplay] = {}
        for stream, path, arrays in read_stream_chunks(root):
            summary = found.setdefault(stream, StreamReplay(stream))
            _check_fits(path, arrays, manifest)
            same = str(arrays["model"]) == identity
            if same and set(state_names(arrays)) != set(names):
                raise EngineError(f"{path}: states {', '.join(state_names(arrays))} recorded, the head carries {', '.join(names)}")
            if same or summary.chunks == 0:
                # The recording's own engines start from the recorded state; another head starts from
                # zero and then carries its own state across chunks.
                runner.load({name: np.asarray(arrays[f"initial.{name}"], np.float32)[None] if same else np.zeros_like(value)
                             for name, value in runner.state().items()})
            _replay_chunk(runner, arrays, same, summary, emit, manifest.model_id())
            summary.chunks += 1
    finally:
        engine.close()
    return [found[stream] for stream in sorted(found)]


def _check_fits(path: Path, arrays: dict[str, np.ndarray], manifest: Manifest) -> None:
    features = arrays["features"].shape[1]
    if features != manifest.feature_size:
        raise EngineError(f"{path} holds features of size {features}, the head of {manifest.folder} takes {manifest.feature_size}")
    labels = tuple(str(label) for label in arrays["labels"])
    if len(labels) != manifest.num_classes:
        raise EngineError(f"{path} has {len(labels)} labels, the head of {manifest.folder} gives {manifest.num_classes}")


def _replay_chunk(runner: StepRunner, arrays: dict[str, np.ndarray], same: bool, summary: StreamReplay, emit, model: str) -> None:
    """`model`: the replaying head's short manifest hash, which every replayed result carries."""
    labels = tuple(str(label) for label in arrays["labels"])
    summary.source = str(arrays["source"])
    recorded_states = {name: arrays[f"state.{name}"] for name in state_names(arrays)} if same else {}
    for t in range(len(arrays["frame"])):
        if t > 0 and arrays["reset"][t]:
            runner.reset(0)
        runner.x[0] = arrays["features"][t]
        logits = runner.step([0])
        probs = _softmax(np.asarray(logits[0], np.float64)).astype(np.float32)
        best = int(np.argmax(probs))
        if same:
            summary.same_model += 1
            summary.max_prob_error = max(summary.max_prob_error, float(np.abs(probs - arrays["probs"][t]).max()))
            for name, value in runner.state().items():
                summary.max_state_error = max(summary.max_state_error, float(np.abs(value[0] - recorded_states[name][t]).max()))
        summary.steps += 1
        summary.agree += int(best == int(arrays["label"][t]))
        truth = int(arrays["true_label"][t])
        if truth >= 0 and arrays["scorable"][t]:
            summary.scored[0] += int(best == truth)
            summary.scored[1] += 1
        emit(Result(
            stream=int(arrays["stream"]), frame_index=int(arrays["frame"][t]), capture_time=float(arrays["time"][t]),
            mode="step", label=labels[best], score=float(probs[best]), probabilities=tuple(float(p) for p in probs),
            latency=float(arrays["latency"][t]), dropped=int(arrays["dropped"][t]),
            true_label=labels[truth] if truth >= 0 else None, source=summary.source, model=model, labels=labels,
        ))


def summary_lines(streams: Sequence[StreamReplay], tolerance: float) -> list[str]:
    lines = []
    for s in streams:
        line = f"stream {s.stream} ({s.source}): {s.steps} steps in {s.chunks} chunk(s); agrees with the recorded labels on " \
               f"{100.0 * s.agree / max(1, s.steps):.1f}%"
        if s.same_model:
            verdict = "reproduced" if max(s.max_state_error, s.max_prob_error) <= tolerance else "NOT reproduced"
            line += (f"; {verdict} with the recording's engines over {s.same_model} steps: max |state diff| "
                     f"{s.max_state_error:.2e}, max |prob diff| {s.max_prob_error:.2e} (tolerance {tolerance:g})")
        else:
            line += "; another head than the recording's"
        lines.append(line)
        if s.scored[1]:
            lines.append(f"stream {s.stream} step accuracy {100.0 * s.scored[0] / s.scored[1]:.1f}% ({s.scored[1]} steps)")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """edge-run replay; errors propagate as EdgeRunError for edge-run's main to print with their exit code."""
    args = build_parser().parse_args(argv)
    manifest = load_manifest(args.engines)
    if args.out:
        sink = JsonLinesSink.to_path(args.out, manifest.labels)
    elif not args.quiet:
        sink = JsonLinesSink.to_stdout(manifest.labels)
    else:
        sink = None
    try:
        streams = replay(Path(args.recording), manifest, args.backend, sink if sink is not None else (lambda _result: None))
    finally:
        if sink is not None:
            sink.close()
    for line in summary_lines(streams, args.tolerance):
        print(f"edge-run replay: {line}", file=sys.stderr)
    if sink is not None and sink.lost:
        raise PipelineError(f"{sink.lost} result(s) lost: {sink.lost_why}")
    worst = max((max(s.max_state_error, s.max_prob_error) for s in streams if s.same_model), default=0.0)
    if worst > args.tolerance:
        print(f"edge-run replay: error: the recording's engines give results {worst:.2e} away from the recorded ones "
              f"(tolerance {args.tolerance:g})", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
