"""Timed pipeline runs: one run kept raw, variants interleaved against drifting load, runs pooled into one row."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from runtime.backends import EngineSet
from runtime.bench.timing import summary
from runtime.pipeline import Pipeline, PipelineConfig
from runtime.sources import Source


@dataclass
class Run:
    """One timed run, kept raw so that repeated runs can be pooled."""

    frames: int
    wall: float  # seconds
    cpu: float  # process CPU seconds
    latency: np.ndarray  # end-to-end seconds per result
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    stream_latency: list[np.ndarray] = field(default_factory=list)
    batches: int = 0
    dropped: int = 0
    misses: int = 0
    last_index: int = -1


def run_pipeline(engines: EngineSet, sources: Sequence[Source], config: PipelineConfig) -> Run:
    """Run a pipeline to its end, timed."""
    return run_built(Pipeline(engines, sources, config))


def run_built(pipeline: Pipeline) -> Run:
    """Run `pipeline` (observers attached, if any) to its end, timed."""
    last_index = -1
    cpu0, t0 = time.process_time(), time.perf_counter()
    with pipeline:
        for result in pipeline:
            if result.frame_index > last_index:
                last_index = result.frame_index
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stats = pipeline.stats
    return Run(
        frames=stats.total("frames"), wall=wall, cpu=cpu,
        latency=np.array(stats.stages["end_to_end"].values()),
        stages={stage: np.array(stats.stages[stage].values()) for stage in ("capture_wait", "preprocess", "cnn", "gru")},
        stream_latency=[np.array(recorder.values()) for recorder in stats.stream_latency],
        batches=stats.batches, dropped=stats.total("dropped"), misses=stats.total("misses"), last_index=last_index,
    )


def round_robin(variants: dict[str, Callable[[], Run]], repeats: int) -> dict[str, list[Run]]:
    """Each variant `repeats` times, in order and then in reverse order (A B C C B A ...), so
    that load drifting during the benchmark weighs on every variant alike."""
    runs: dict[str, list[Run]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(max(1, repeats)):
        for name in (order if repeat % 2 == 0 else order[::-1]):
            runs[name].append(variants[name]())
    return runs


def pool(runs: list[Run]) -> dict[str, Any]:
    """Frames/s over the runs' total time; latency percentiles over all their samples."""
    frames = sum(run.frames for run in runs)
    wall = sum(run.wall for run in runs)
    cpu = sum(run.cpu for run in runs)
    out: dict[str, Any] = {
        "runs": len(runs),
        "frames": frames,
        "fps": frames / wall if wall > 0 else 0.0,
        "ms_per_frame": 1e3 * wall / max(frames, 1),
        "cpu_ms_per_frame": 1e3 * cpu / max(frames, 1),
        "latency": summary(np.concatenate([run.latency for run in runs])),
        "dropped": sum(run.dropped for run in runs),
        "misses": sum(run.misses for run in runs),
    }
    if runs[0].stages:
        out["stages"] = {stage: summary(np.concatenate([run.stages[stage] for run in runs])) for stage in runs[0].stages}
    if runs[0].stream_latency:
        streams = len(runs[0].stream_latency)
        out["per_stream_p99_ms"] = [summary(np.concatenate([run.stream_latency[i] for run in runs]))["p99_ms"]
                                    for i in range(streams)]
    if any(run.batches for run in runs):
        out["mean_batch"] = frames / sum(run.batches for run in runs)
    return out
