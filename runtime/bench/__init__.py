"""`edge-bench`: the figures that judge an edge box, in one run, on one machine, same models.

    edge-export --out engines            # MobileNet-V3-Small FP32 + INT8, GRU H=256, window engine
    edge-bench --engines engines         # writes results/bench.md, bench.json, bench.png
    edge-bench --engines engines --backend tensorrt     # the same on a Jetson

Sections (each a key of the JSON file and a table of the Markdown file):

1. `floor`: every stage alone, median and p99: decode (a 640x480 MJPG frame), preprocess,
   the backbone per precision, the GRU step (engine and the same step in numpy), the
   per-window decision (sequence engine against W steps).
2. `pipeline`: the runtime on a generated 640x480 video, as fast as it goes, serial
   (`threaded=False`) and pipelined (capture threads), per backbone precision.
3. `naive`: the loop a user writes first (OpenCV read, resize/normalise, `session.run` for
   the CNN, `session.run` for the GRU with a numpy state), same models, same video.
4. `live`: the video paced at 30 fps like a camera: end-to-end p99 against the budget,
   drops and deadline misses, on the INT8 backbone where there is one.
5. `streams`: 1, 2, 4, 8 streams of that video, batched against one engine call per stream.
6. `memory`: resident set size after warm-up and after 10,000 more frames (the video looped).
7. `targets`: the ratios the design is held to, each met or not, from the figures above.
8. `observers`: the pipelined run with the live preview (no client, a reading client, a
   client that stopped reading), the recorder, event clips: what each adds per frame.

CPU time per frame (process time over frames) is reported next to frames/s: on a box whose
clock and power are fixed it is the frames-per-watt figure. The machine and how loaded it
was (load average, CPU used by other processes during the run) are part of the report:
absolute times are only comparable on the same machine, ratios within one run.

The runtime never imports the export stage, and neither does this: the numpy GRU reads its
weights from the step engine's ONNX file, and engines come from `edge-export`. Nothing in
the runtime imports the benchmark.

Where each part lives:

| module | holds |
|---|---|
| `cli.py` | `edge-bench`'s arguments, `main` (errors to exit codes), `run` (the whole benchmark) |
| `options.py` | `BenchOptions` (full and reduced runs) and the shared constants |
| `sections.py` | `Bench`: sections 1-6 and 8, one method each |
| `observers.py` | section 8 and the MJPEG clients it (and the preview test) connects |
| `runs.py` | `Run`, `run_pipeline`, `round_robin` (variants interleaved), `pool` |
| `baselines.py` | `naive_loop` and `numpy_gru_step`, what the runtime is compared with |
| `sources.py` | `LoopedVideo`, the endless stream of the memory run |
| `timing.py` | `time_calls` and `summary` (p50, p99, mean) |
| `machine.py` | `machine_description`, `LoadMeter`, `rss_bytes` |
| `targets.py` | `targets`: section 7 |
| `report.py` | `markdown`, `write_outputs` (bench.md, bench.json, bench.png) |
| `plot.py` | `plot`: matplotlib when installed, else OpenCV |
"""
from runtime.bench.cli import main

__all__ = ["main"]
