"""The written results: bench.md (tables), bench.json (every figure), and bench.png by way of `plot`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from runtime.bench.options import VIDEO_SIZE
from runtime.bench.plot import plot


def _f(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    m, models = r["machine"], r["models"]
    lines = [
        "# edge-bench",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {_f(m['memory_gib'], 1)} GiB; {m['os']}; Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}, OpenCV {m['opencv']}, numpy {m['numpy']}; backend `{m['backend']}`.",
        f"Load: load average {m['load_average_start']} at start, {m.get('load_average_end')} at end; other processes "
        f"used {_f(m.get('other_processes_cpu_percent'), 0)}% of the machine's CPU during the run.",
        f"Models: {models['backbone']} {models['input']} ({', '.join(models['precisions'])}; INT8 gate: "
        f"{models['int8_gate']}), GRU H={models['hidden_size']}, window W={models['window']}; default backbone "
        f"`{models['default_precision']}`." + (" Reduced (quick) run." if r["options"].get("quick") else ""),
        "",
        "## 1. Floor: each stage alone (batch 1)",
        "",
        "| stage | p50 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|",
    ]
    for name, value in r["floor"].items():
        if isinstance(value, dict):
            lines.append(f"| {name} | {_f(value['p50_ms'], 3)} | {_f(value['p99_ms'], 3)} | {_f(value['mean_ms'], 3)} |")
    interleaved = r.get("floor_interleaved", {})
    if interleaved:
        lines.append("")
        lines.append("The serial loop's stages timed in its order, frame after frame, with no pipeline around them "
                     "(each finds the caches as the others left them):")
        lines.append("")
        lines.append("| stage (interleaved) | p50 ms | p99 ms | mean ms |")
        lines.append("|---|---:|---:|---:|")
        for name, value in interleaved.items():
            lines.append(f"| {name} | {_f(value['p50_ms'], 3)} | {_f(value['p99_ms'], 3)} | {_f(value['mean_ms'], 3)} |")
    lines.append(f"\nPer-window decision: the {r['floor']['window_engine_used']} way is faster here.")
    lines += [
        "",
        f"## 2-3. Pipeline on a generated {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} video, as fast as it goes, and the naive loop",
        "",
        "| run | frames/s | ms/frame | CPU ms/frame | latency p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, run in r["pipeline"].items():
        lines.append(f"| {name.replace('_', ' ')} | {_f(run['fps'], 0)} | {_f(run['ms_per_frame'], 3)} | "
                     f"{_f(run['cpu_ms_per_frame'], 3)} | {_f(run['latency']['p50_ms'])} | {_f(run['latency']['p99_ms'])} |")
    for precision, run in r["naive"].items():
        if isinstance(run, dict):
            lines.append(f"| naive {precision.replace('_', ' ')} | {_f(run['fps'], 0)} | {_f(1e3 / run['fps'] if run['fps'] else None, 3)} | "
                         f"{_f(run['cpu_ms_per_frame'], 3)} | {_f(run['latency']['p50_ms'])} | {_f(run['latency']['p99_ms'])} |")
    live = r["live"]
    lines += [
        "",
        f"## 4. Live source at 30 fps ({live['precision']} backbone)",
        "",
        "| processed | dropped | produced | drops exact | deadline misses | budget ms | p50 ms | p99 ms |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
        f"| {live['frames']} | {live['dropped']} | {live['produced']} | {'yes' if live['drops_exact'] else 'NO'} | "
        f"{live['misses']} | {_f(live['budget_ms'], 1)} | {_f(live['latency']['p50_ms'])} | {_f(live['latency']['p99_ms'])} |",
        "",
        "## 5. Streams: batched (one CNN and one GRU call per batch) against one call per stream",
        "",
        "| streams | batched frames/s | unbatched frames/s | speed-up | mean batch | per-stream p99 ms (batched, worst) | "
        "(unbatched, worst) | CPU ms/frame (batched) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count, row in r["streams"].items():
        if "skipped" in row:
            lines.append(f"| {count} | {row['skipped']} | | | | | | |")
            continue
        b, u = row["batched"], row["unbatched"]
        lines.append(f"| {count} | {_f(b['fps'], 0)} | {_f(u['fps'], 0)} | {_f(row['speedup'])} | {_f(b['mean_batch'], 1)} | "
                     f"{_f(max(b['per_stream_p99_ms']))} | {_f(max(u['per_stream_p99_ms']))} | {_f(b['cpu_ms_per_frame'], 3)} |")
    four = r["streams"].get("4", {})
    if "unbatched_1thread" in four:
        lines.append(f"\n4 streams unbatched on one intra-op thread (the best setting for batches of 1): "
                     f"{_f(four['unbatched_1thread']['fps'], 0)} frames/s; batched is "
                     f"{_f(four['speedup_vs_unbatched_1thread'])}x that.")
    memory = r["memory"]
    lines += [
        "",
        "## 6. Memory (resident set size)",
        "",
        "| after warm-up MiB | after N more frames MiB | N | growth MiB |",
        "|---:|---:|---:|---:|",
        f"| {_f(memory['rss_after_warmup_mib'], 1)} | {_f(memory['rss_after_mib'], 1)} | {memory['frames_after_warmup']} | "
        f"{_f(memory['growth_mib'], 3)} |",
    ]
    observers = r.get("observers", {})
    if observers:
        alone = observers["nothing attached"]["ms_per_frame"]
        lines += [
            "",
            "## 8. Observers: the preview, the recorder and event clips (pipelined, as fast as it goes)",
            "",
            "| attached | frames/s | ms/frame | added ms/frame | CPU ms/frame | p99 ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, run in observers.items():
            lines.append(f"| {name} | {_f(run['fps'], 0)} | {_f(run['ms_per_frame'], 3)} | {_f(run['ms_per_frame'] - alone, 3)} | "
                         f"{_f(run['cpu_ms_per_frame'], 3)} | {_f(run['latency']['p99_ms'])} |")
    lines += [
        "",
        "## Targets",
        "",
        "| target | goal | measured | met | detail |",
        "|---|---|---:|---|---|",
    ]
    for row in r["targets"]:
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['target']} | {row['goal']} | {_f(row['measured'])} | {met} | {row['detail']} |")
    return "\n".join(lines) + "\n"


def write_outputs(r: dict[str, Any], samples: dict[str, np.ndarray], out: Path, plot_engine: str = "auto") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "bench.md", "json": out / "bench.json", "plot": out / "bench.png"}
    r["plot"] = plot(r, samples, paths["plot"], plot_engine)
    paths["json"].write_text(json.dumps(r, indent=2, default=_json_default) + "\n")
    paths["markdown"].write_text(markdown(r))
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
