"""The ratios the design is held to, each met or not, computed from the measured sections."""
from __future__ import annotations

from typing import Any, Optional


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the design with its measured figure; `met` is None where it was not measured."""
    floor, pipe, naive, models = r["floor"], r["pipeline"], r["naive"], r["models"]
    chosen = models["default_precision"]
    rows: list[dict[str, Any]] = []

    def add(name: str, goal: str, value: Optional[float], met: Optional[bool], detail: str) -> None:
        rows.append({"target": name, "goal": goal, "measured": value, "met": met, "detail": detail})

    stages = ("decode", "preprocess", f"cnn_{chosen}", "gru_step")
    serial = pipe.get(f"serial_{chosen}")
    for name, source, how in (("glue", floor, "each stage alone"),
                              ("glue, stages interleaved", r.get("floor_interleaved", {}), "stages interleaved, no pipeline")):
        if serial and all(s in source for s in stages):
            total = sum(source[s]["mean_ms"] for s in stages)
            ratio = serial["ms_per_frame"] / total
            add(name, f"serial time per frame <= 1.10 x sum of stage times ({how})", ratio, ratio <= 1.10,
                f"serial {serial['ms_per_frame']:.3f} ms/frame vs {total:.3f} ms = "
                + " + ".join(f"{s} {source[s]['mean_ms']:.3f}" for s in stages) + " (means)")
    piped = pipe.get(f"pipelined_{chosen}")
    base = naive.get(chosen)
    if piped and base:
        ratio = piped["fps"] / base["fps"]
        p99_ok = piped["latency"]["p99_ms"] <= base["latency"]["p99_ms"]
        detail = (f"{piped['fps']:.0f} vs {base['fps']:.0f} frames/s; p99 {piped['latency']['p99_ms']:.2f} vs "
                  f"{base['latency']['p99_ms']:.2f} ms")
        tuned = naive.get(f"{chosen}_1thread")
        if tuned:
            detail += (f" (the naive loop with 1 intra-op thread: {tuned['fps']:.0f} frames/s, "
                       f"p99 {tuned['latency']['p99_ms']:.2f} ms, ratio {piped['fps'] / tuned['fps']:.2f})")
        add("pipelined throughput", ">= 1.3 x naive serial loop, p99 latency no worse", ratio, ratio >= 1.3 and p99_ok, detail)
    split = overlap(r)
    if split:
        add("overlap", "pipelined >= 1.4 x serial throughput (capture threads decode and preprocess)", split["over_serial"],
            split["over_serial"] >= 1.4, f"{split['pipelined_fps']:.0f} vs {split['serial_fps']:.0f} frames/s")
        add("overlap bound", "pipelined >= 0.9 x the bound set by the busiest thread", split["over_bound"], split["over_bound"] >= 0.9,
            f"capture thread (decode + preprocess) {split['capture_ms']:.3f} ms/frame, loop thread (engines and bookkeeping: "
            f"serial minus those) {split['loop_ms']:.3f} ms/frame: at most {split['bound_fps']:.0f} frames/s with each on its own core")
    cnn = {p: floor[f"cnn_{p}"]["p50_ms"] for p in models["precisions"] if f"cnn_{p}" in floor}
    eligible = {p: t for p, t in cnn.items() if p != "int8" or str(models.get("int8_gate") or "").startswith("passed")}
    if eligible:
        fastest = min(eligible, key=eligible.get)
        add("backbone variant", "the runtime's default is the fastest variant that passes the quality gate", None,
            chosen == fastest, ", ".join(f"{p} {t:.2f} ms" for p, t in cnn.items())
            + f"; INT8 gate: {models.get('int8_gate')}; default: {chosen}")
    if "gru_step" in floor and "gru_step_numpy" in floor:
        ratio = floor["gru_step"]["p50_ms"] / floor["gru_step_numpy"]["p50_ms"]
        add("GRU step", "<= 1.3 x the same step in numpy", ratio, ratio <= 1.3,
            f"engine {floor['gru_step']['p50_ms'] * 1e3:.0f} us vs numpy {floor['gru_step_numpy']['p50_ms'] * 1e3:.0f} us (medians)")
    four = r["streams"].get("4")
    if four and "speedup" in four:
        detail = f"{four['batched']['fps']:.0f} vs {four['unbatched']['fps']:.0f} frames/s (same engines)"
        if "unbatched_1thread" in four:
            detail += (f"; vs unbatched on 1 intra-op thread: {four['unbatched_1thread']['fps']:.0f} frames/s, "
                       f"ratio {four['speedup_vs_unbatched_1thread']:.2f}")
        add("batching", "4 streams batched >= 1.3 x unbatched, aggregate frames/s", four["speedup"], four["speedup"] >= 1.3,
            detail)
    memory = r["memory"]
    if memory.get("growth_mib") is not None:
        long_enough = memory["frames_after_warmup"] >= 10_000  # a shorter run says nothing either way
        add("memory", "RSS growth from warm-up over 10,000 frames <= 2 MiB", memory["growth_mib"],
            memory["growth_mib"] <= 2.0 if long_enough else None,
            f"{memory['rss_after_warmup_mib']:.1f} -> {memory['rss_after_mib']:.1f} MiB over "
            f"{memory['frames_after_warmup']} frames")
    live = r["live"]
    add("live 30 fps", "p99 end-to-end within the budget on INT8; drops counted exactly", live["latency"]["p99_ms"],
        live["latency"]["p99_ms"] <= live["budget_ms"] and live["drops_exact"] and live["precision"] == "int8",
        f"{live['precision']}: p99 {live['latency']['p99_ms']:.2f} ms vs {live['budget_ms']:.1f} ms budget; "
        f"{live['frames']} processed + {live['dropped']} dropped = {live['produced']} produced; {live['misses']} misses")
    return rows


def overlap(r: dict[str, Any]) -> Optional[dict[str, float]]:
    """Pipelined against serial throughput, and against the bound the busiest thread sets.

    Pipelined, a frame costs its capture thread decode + preprocess, and the loop thread
    everything else the serial loop does (the engines and the bookkeeping): the serial time
    per frame minus decode and preprocess, timed interleaved as the serial loop runs them.
    With each thread on its own core the pipeline cannot go faster than the slower of the two.
    """
    chosen = r["models"]["default_precision"]
    serial, piped = r["pipeline"].get(f"serial_{chosen}"), r["pipeline"].get(f"pipelined_{chosen}")
    stages = r.get("floor_interleaved", {})
    if not serial or not piped or "decode" not in stages or "preprocess" not in stages or not serial["fps"]:
        return None
    capture = stages["decode"]["mean_ms"] + stages["preprocess"]["mean_ms"]
    loop = max(serial["ms_per_frame"] - capture, 1e-6)
    bound = 1e3 / max(capture, loop)
    return {"serial_fps": serial["fps"], "pipelined_fps": piped["fps"], "over_serial": piped["fps"] / serial["fps"],
            "capture_ms": capture, "loop_ms": loop, "bound_fps": bound, "over_bound": piped["fps"] / bound}
