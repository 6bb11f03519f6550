"""`edge-bench --jetson`: the on-box acceptance run, one table to set beside NVIDIA's published figures.

On a Jetson, in this order:
1. the TensorRT plans: built from the ONNX files where the manifest has none or they do
   not fit this board (the plan cache, as `edge-export --trt` builds them);
2. `edge-export verify --backend tensorrt`: every plan against the FP32 ONNX reference;
3. the stage floors on TensorRT at batch 1: backbone INT8 and FP16, the GRU step;
4. camera to result: the pipelined loop on a 640x480 video (or `--video`), frames/s and
   capture-to-result latency.

The table holds the published TensorRT FP16 MobileNet-V3 figures (Small: 1.56 ms on an
Orin Nano, 0.72 ms on an AGX Orin; Large: 2.51 / 0.92 ms) and the targets (backbone INT8
<= 1.3 ms and GRU step <= 0.2 ms on an Orin Nano; >= 300 frames/s camera to result).
What to send back: results/jetson.md and results/jetson.json (README, "On-box acceptance").
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from runtime.backends import open_engines
from runtime.backends.tensorrt import device_key
from runtime.bench.options import NO_DEADLINE, BenchOptions
from runtime.bench.runs import pool, run_pipeline
from runtime.bench.timing import summary, time_calls
from runtime.manifest import BACKBONE, load_manifest
from runtime.pipeline import PipelineConfig
from runtime.sources import open_source

# NVIDIA's published TensorRT FP16 MobileNet-V3 latencies (batch 1), ms: {variant: {board: ms}}.
PUBLISHED_FP16_MS = {"small": {"Orin Nano": 1.56, "AGX Orin": 0.72}, "large": {"Orin Nano": 2.51, "AGX Orin": 0.92}}
TARGET_INT8_MS = 1.3  # backbone INT8 on an Orin Nano
TARGET_GRU_MS = 0.2  # GRU step on an Orin Nano
TARGET_FPS = 300.0  # camera to result


def acceptance(options: BenchOptions, video: Path, log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Run the acceptance steps on this box (TensorRTUnavailable, exit 3, where TensorRT is missing)."""
    key = device_key()  # first: without TensorRT this is the one-line error naming what to install
    manifest = load_manifest(options.engines)
    results: dict[str, Any] = {"device": key, "backbone_arch": manifest.backbone_arch,
                               "input": f"{manifest.input.width}x{manifest.input.height}"}
    have = {e.precision for e in manifest.engines if e.role == BACKBONE}
    # the plans TensorRT runs: INT8 from the Q/DQ graph (or an INT8 plan), FP16 from the FP32 graph (or an FP16 plan)
    precisions = [p for p, sources in (("int8", {"int8"}), ("fp16", {"fp16", "fp32"})) if have & sources]
    floors: dict[str, Any] = {}
    for precision in precisions:
        log(f"TensorRT {precision} plans (built here where missing or stale) ...")
        engines = open_engines(manifest, "tensorrt", precision, on_rebuild=log)
        manifest = engines.manifest
        try:
            backbone = engines.backbone
            backbone.input(backbone.input_names[0])[0] = 0.0
            floors[f"backbone_{precision}"] = summary(time_calls(lambda b=backbone: b.run(1), max(50, options.iterations)))
            if "gru_step" not in floors:
                step = engines.gru_step
                step.input("x")[0] = 0.0
                floors["gru_step"] = summary(time_calls(lambda s=step: s.step(1), options.iterations * 4, warmup=50))
        finally:
            engines.close()
    results["floors"] = floors
    log("edge-export verify --backend tensorrt ...")
    results["verify"] = verify(options.engines)
    log("camera to result ...")
    engines = open_engines(manifest, "tensorrt", precisions[0] if precisions else None)
    try:
        config = PipelineConfig(threaded=True, max_frames=options.frames, budget=NO_DEADLINE)
        results["camera_to_result"] = pool([run_pipeline(engines, [open_source(str(video))], config)])
        results["camera_to_result"]["precision"] = engines.precision
    finally:
        engines.close()
    return results


def verify(engines: Path) -> dict[str, Any]:
    """`edge-export verify --backend tensorrt` in its own process (the runtime does not import `export`)."""
    command = [str(Path(sys.executable).with_name("edge-export")), "verify", "--out", str(engines), "--backend", "tensorrt"]
    done = subprocess.run(command, capture_output=True, text=True)
    return {"command": " ".join(command[1:]), "exit_code": done.returncode, "passed": done.returncode == 0,
            "output": (done.stdout + done.stderr).strip().splitlines()[-8:]}


def table(results: dict[str, Any]) -> str:
    """The acceptance table (Markdown): measured, published and target side by side."""
    floors, run = results.get("floors", {}), results.get("camera_to_result", {})
    variant = "large" if "large" in str(results.get("backbone_arch", "")) else "small"
    published = PUBLISHED_FP16_MS[variant]
    device = results.get("device", {})

    def ms(name: str) -> Optional[float]:
        return floors[name]["p50_ms"] if name in floors else None

    def row(what: str, value: Optional[float], unit: str, reference: str, met: Optional[bool]) -> str:
        shown = "n/a" if value is None else (f"{value:.3f}" if unit == "ms" else f"{value:.0f}")
        verdict = "n/a" if met is None else ("yes" if met else "**no**")
        return f"| {what} | {shown} {unit} | {reference} | {verdict} |"

    fp16, int8, gru = ms("backbone_fp16"), ms("backbone_int8"), ms("gru_step")
    fps = run.get("fps")
    lines = [
        "# edge-bench --jetson",
        "",
        f"Board: {device.get('soc') or 'unknown module'}; GPU {device.get('gpu')}; TensorRT {device.get('tensorrt')}; "
        f"backbone {results.get('backbone_arch')} {results.get('input')}.",
        "",
        "| measured (batch 1, p50) | here | published / target | met |",
        "|---|---:|---|---|",
        row(f"backbone FP16 (MobileNet-V3-{variant.title()})", fp16, "ms",
            f"published TensorRT FP16: {published['Orin Nano']} ms Orin Nano, {published['AGX Orin']} ms AGX Orin", None),
        row("backbone INT8", int8, "ms", f"target <= {TARGET_INT8_MS} ms on an Orin Nano",
            None if int8 is None else int8 <= TARGET_INT8_MS),
        row("GRU step", gru, "ms", f"target <= {TARGET_GRU_MS} ms on an Orin Nano", None if gru is None else gru <= TARGET_GRU_MS),
        row(f"camera to result ({run.get('precision', '?')}, pipelined)", fps, "frames/s", f"target >= {TARGET_FPS:.0f} frames/s",
            None if fps is None else fps >= TARGET_FPS),
    ]
    latency = run.get("latency")
    if latency:
        lines.append(f"| capture-to-result latency | p50 {latency['p50_ms']:.2f} / p99 {latency['p99_ms']:.2f} ms | | |")
    check = results.get("verify", {})
    if check:
        lines.append(f"| `{check['command']}` | exit {check['exit_code']} | against the FP32 ONNX reference | "
                     f"{'yes' if check['passed'] else '**no**'} |")
        lines += ["", "Verify said:", "", *[f"    {line}" for line in check["output"]]]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "jetson.md", "json": out / "jetson.json"}
    paths["json"].write_text(json.dumps(results, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)) + "\n")
    paths["markdown"].write_text(table(results))
    return paths
