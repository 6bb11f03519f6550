"""Mutation check: plant small faults in a scratch copy of the repository, one at a time, and see whether the tests catch them.

Each fault is the kind of bug a refactor introduces (an activation swapped, a residual dropped,
a reset that does not zero, a counter never incremented, QoS lowered, a check removed, ...):
a file, an exact old text, the new text, and the smallest set of tests that should catch it.
The old text must occur exactly once in the file: when a refactor moves or rewrites the code,
the fault is reported as NOT APPLIED instead of silently "caught", and its entry needs updating.

For each fault the script writes the mutated file into the scratch copy, runs
`<repo>/.venv/bin/python -m pytest -x -q <tests>` there with PYTHONPATH set to the scratch copy
(it checks first that `runtime` and `export` then import from the scratch copy, not from the
editable install), restores the file and prints one row: fault, tests, caught / SURVIVED /
NOT APPLIED / ERROR (pytest could not run the tests: collection error, no test selected) /
TIMEOUT, and seconds. It exits 0 when every fault was caught, 1 otherwise.

Run it from the repository root (not collected by pytest: its name is not test_*.py, and CI does
not run it, it is too slow for every push):

    .venv/bin/python tests/mutation/run.py                  # every fault: about 2-3 minutes on 2 cores
    .venv/bin/python tests/mutation/run.py --list           # the faults and their tests
    .venv/bin/python tests/mutation/run.py --only mqtt-qos-0 --only reset-counts-but-does-not-zero
    .venv/bin/python tests/mutation/run.py --baseline       # first check the chosen tests pass unmutated

Timings: each fault costs one pytest run of its tests, including the session fixture that builds
the engines (~2 s). A full run of the first 24 faults took 2 minutes on 2 busy cores (most 2-12 s each;
the MQTT retained-status faults ~15 s, as their test asks the broker again for 10 s before failing);
the three named-state faults add ~8-10 s each, the six of the Jetson path 3-25 s each. All 43
took 311 s on an otherwise idle 2-core box (the runtime-streams fault ~40 s, the stopper's ~35 s).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
TIMEOUT = 900.0  # seconds per fault; a hang past it is reported as TIMEOUT (pytest-timeout would fail it in CI)


@dataclass(frozen=True)
class Fault:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments: paths, node ids, -k expressions


MOBILENET = "tests/export/graphs/test_mobilenet.py"
MQTT = "tests/runtime/sinks/test_mqtt.py"
BEHAVIOUR = "tests/runtime/test_behaviour.py"
RECORDING = "tests/runtime/recording/test_recording.py"

FAULTS: tuple[Fault, ...] = (
    Fault("mobilenet-early-activation-swapped", "export/graphs/mobilenet.py",
          '(16, 3, 72, 24, False, "RE", 2),', '(16, 3, 72, 24, False, "HS", 2),', (MOBILENET,)),
    Fault("mobilenet-early-residual-dropped", "export/graphs/mobilenet.py",
          "out.append(Stage(tuple(layers), stride == 1 and cin == cout))",
          "out.append(Stage(tuple(layers), stride == 1 and cin == cout and index != 3))", (MOBILENET,)),
    # The same two faults against the numbers alone: torchvision's input-dependent reference, not the architecture table.
    Fault("mobilenet-early-activation-swapped/reference", "export/graphs/mobilenet.py",
          '(16, 3, 72, 24, False, "RE", 2),', '(16, 3, 72, 24, False, "HS", 2),', (MOBILENET, "-k", "reference")),
    Fault("mobilenet-early-residual-dropped/reference", "export/graphs/mobilenet.py",
          "out.append(Stage(tuple(layers), stride == 1 and cin == cout))",
          "out.append(Stage(tuple(layers), stride == 1 and cin == cout and index != 3))", (MOBILENET, "-k", "reference")),
    Fault("reset-counts-but-does-not-zero", "runtime/pipeline.py",
          "        self.steps.reset(stream.slot)\n        self.rings.reset(stream.slot)\n        stream.since_reset = 0\n",
          "        self.rings.reset(stream.slot)\n        stream.since_reset = 0\n",
          ("tests/runtime/test_pipeline.py", BEHAVIOUR, "-k", "reset")),
    Fault("deadline-misses-never-counted", "runtime/stats.py",
          "        if missed:\n            counters.misses += 1\n", "        if missed:\n            pass\n",
          (BEHAVIOUR, "-k", "budget")),
    Fault("score-judges-every-label-correct", "runtime/stats.py",
          "entry[0] += int(correct)", "entry[0] += 1", (BEHAVIOUR, "-k", "score")),
    Fault("metric-exports-the-wrong-counter", "runtime/service/metrics.py",
          "family.add_metric(label, getattr(counters, field))",
          'family.add_metric(label, getattr(counters, "dropped" if field == "misses" else field))',
          ("tests/runtime/service/test_metrics.py", "tests/runtime/service/test_metrics_values.py")),
    Fault("mqtt-qos-0", "runtime/sinks/mqtt.py",
          "queue: int = DEFAULT_QUEUE, qos: int = 1,", "queue: int = DEFAULT_QUEUE, qos: int = 0,", (MQTT,)),
    Fault("mqtt-order-guard-across-reconnect-removed", "runtime/sinks/mqtt.py",
          "            if in_paho > 0:\n                return False\n            self._resync = False\n",
          "            self._resync = False\n", (MQTT, "-k", "frozen_then_killed")),
    Fault("mqtt-status-not-retained", "runtime/sinks/mqtt.py",
          '(f"{self.prefix}/status", text, True)', '(f"{self.prefix}/status", text, False)', (MQTT, "-k", "retained")),
    Fault("mqtt-last-will-not-retained", "runtime/sinks/mqtt.py",
          'client.will_set(f"{config.prefix}/status", "offline", qos=1, retain=True)',
          'client.will_set(f"{config.prefix}/status", "offline", qos=1, retain=False)', (MQTT, "-k", "retained")),
    Fault("mqtt-offer-waits-for-the-broker", "runtime/sinks/mqtt.py",
          "        with self._cond:\n            if len(self._waiting) >= self.bound:\n",
          "        with self._cond:\n            self._cond.wait_for(lambda: self.connected, 2.0)\n"
          "            if len(self._waiting) >= self.bound:\n", (MQTT, "-k", "absent")),
    Fault("mqtt-unacknowledged-at-stop-not-counted-as-lost", "runtime/sinks/mqtt.py",
          "            self.unacknowledged = self.pending\n", "            self.unacknowledged = 0\n", (MQTT, "-k", "sigterm")),
    Fault("sigint-not-handled-like-sigterm", "runtime/cli.py",
          "signal.SIGINT: self._handle, signal.SIGTERM: self._handle,", "signal.SIGTERM: self._handle,",
          ("tests/runtime/service/test_service_shutdown.py", "-k", "sigint")),
    Fault("reset-gap-ignores-the-flag", "runtime/pipeline.py",
          "and frame.timestamp - stream.last_timestamp > self.config.reset_gap",
          "and frame.timestamp - stream.last_timestamp > 1.0", (BEHAVIOUR, "-k", "reset_gap")),
    # Activation ranges 2.5x too wide: 1 - cosine to FP32 grows ~8x (mean cosine 0.9991 -> 0.9924 on the session's
    # engines), still above the 0.95 gate, so only a test holding the precision INT8 reaches catches it.
    Fault("int8-calibration-ranges-2.5x-too-wide", "export/quantize/qdq.py",
          "reader = _make_reader(frames, input_name, batch)", "reader = _make_reader(frames * 2.5, input_name, batch)",
          ("tests/export/quantize/test_quantize.py",)),
    # 6x too wide: mean cosine 0.69, below the gate.
    Fault("int8-calibration-ranges-6x-too-wide", "export/quantize/qdq.py",
          "reader = _make_reader(frames, input_name, batch)", "reader = _make_reader(frames * 6, input_name, batch)",
          ("tests/export/quantize/test_quantize.py",)),
    Fault("verify-gru-check-always-ok", "export/verify.py",
          "    return bool(ok), worst\n", "    return True, worst\n", ("tests/export/test_export_cli.py", "-k", "verify")),
    Fault("carried-gru-state-rounded-to-float16", "runtime/temporal.py",
          "        if key == self._identity[:n]:\n            self.engine.step(n)\n",
          "        if key == self._identity[:n]:\n            self.engine.step(n)\n"
          "            self.engine.load_state({name: value.astype(np.float16).astype(np.float32)\n"
          "                                    for name, value in self.engine.state().items()})\n",
          ("tests/runtime/test_pipeline.py",)),
    Fault("dropped-frames-off-by-one", "runtime/mailbox.py",
          "                    self.dropped += 1\n", "                    self.dropped += 1 if self.dropped else 0\n",
          ("tests/runtime/test_pipeline.py", "-k", "drop")),
    Fault("json-lines-write-failure-not-counted", "runtime/sinks/__init__.py",
          "            self.lost = 1\n            self.error = ", "            self.lost = 0\n            self.error = ",
          ("tests/runtime/sinks/test_output_loss.py",)),
    # Named state pairs taken by position instead of by name (triton-inference-server #5446, #8586):
    # harmless for a one-layer GRU, wrong for a head with several pairs declared in another order.
    Fault("checkpoint-states-restored-by-position", "runtime/service/checkpoint.py",
          "            value[i] = checkpoint.states[name][j]\n",
          "            value[i] = list(checkpoint.states.values())[list(states).index(name)][j]\n",
          ("tests/runtime/test_state_pairs.py", "-k", "order_of_the_pairs")),
    Fault("engine-states-loaded-by-position", "runtime/backends/onnxrt.py",
          "                self._state_host[name][self._parity][...] = value\n",
          "                self._state_host[name][self._parity][...] = list(states.values())[list(arrays).index(name)]\n",
          ("tests/runtime/test_state_pairs.py", "-k", "names_and_shapes")),
    Fault("step-runner-states-loaded-by-position", "runtime/temporal.py",
          "            value[: len(states[name])] = states[name]\n",
          "            value[: len(states[name])] = list(states.values())[list(full).index(name)]\n",
          ("tests/runtime/test_state_pairs.py", "-k", "by_name")),
    Fault("engine-hidden-size-check-removed", "runtime/backends/__init__.py",
          "        if spec.shape != (manifest.hidden_size,):\n", "        if False:\n",
          ("tests/runtime/backends/test_engine_checks.py",)),
    Fault("flag-upper-range-check-removed", "runtime/validation.py",
          "        if too_low or value > self.high:\n", "        if too_low:\n",
          ("tests/runtime/test_cli_validation.py", "tests/export/test_cli_validation.py")),
    Fault("swap-keeps-the-state-across-new-labels", "runtime/service/swap.py",
          '        reasons.append("labels changed")\n', "        pass\n",
          ("tests/runtime/service/test_swap.py", "-k", "sighup")),
    Fault("removed-stream-number-reused", "runtime/pipeline.py",
          "            number, self._next_number = self._next_number, self._next_number + 1\n",
          "            number = self._next_number = len(self.stream_numbers)\n",
          ("tests/runtime/service/test_streams_runtime.py",)),
    Fault("flip-ignores-the-label-map", "export/training/augment.py",
          "    return flip_map.get(label, label)\n", "    return label\n",
          ("tests/export/training/test_augment.py",)),
    Fault("model-scale-ignored-by-preprocessing", "runtime/preprocess.py",
          "        self._gain = (spec.scale / std).astype(np.float32)\n", "        self._gain = (1.0 / 255.0 / std).astype(np.float32)\n",
          ("tests/export/graphs/test_user_backbone.py", "tests/runtime/test_preprocess.py")),
    Fault("stop-timeout-overrun-does-not-exit", "runtime/cli.py",
          "        logging.shutdown()\n        os._exit(EXIT_FAILED)\n", "        logging.shutdown()\n",
          ("tests/runtime/test_stopper.py",)),
    Fault("recording-loses-the-reset-flag", "runtime/recording/recorder.py",
          "        chunk.reset[row] = record.fresh\n", "        chunk.reset[row] = False\n", (RECORDING,)),
    Fault("replay-ignores-the-recorded-resets", "runtime/recording/replay.py",
          '        if t > 0 and arrays["reset"][t]:\n', "        if False:\n", (RECORDING, "-k", "replay")),
    Fault("recording-bound-forgets-the-incoming-chunk", "runtime/recording/recorder.py",
          "while self._files and total + incoming > self.max_bytes:", "while self._files and total > self.max_bytes:",
          (RECORDING, "-k", "size_bound")),
    Fault("clip-ring-holds-half-the-pre-roll", "runtime/service/clips.py",
          "deque(maxlen=self.pre_frames + 1)", "deque(maxlen=self.pre_frames // 2 + 1)",
          ("tests/runtime/service/test_clips.py", "-k", "blink")),
    Fault("preview-bars-in-reverse-class-order", "runtime/service/preview.py",
          "[round(p, 6) for p in result.probabilities]", "[round(p, 6) for p in reversed(result.probabilities)]",
          ("tests/runtime/service/test_preview.py", "-k", "label_score")),
    Fault("dla-given-to-the-fp32-gru-plans", "export/build.py",
          "precision, dla_core = \"fp32\", None", "precision, dla_core = \"fp32\", options.dla_core",
          ("tests/runtime/backends/test_trt_conformance.py", "-k", "plan_set")),
    Fault("tensorrt-11-removed-flag-unguarded", "runtime/backends/tensorrt/build.py",
          "if precision == \"int8\" and hasattr(trt.BuilderFlag, \"INT8\"):", "if precision == \"int8\":",
          ("tests/runtime/backends/test_trt_conformance.py", "-k", "removed")),
    Fault("trt-streams-outside-the-batch-lose-their-state", "runtime/backends/tensorrt/runner.py",
          "            if batch < self.max_batch:\n                # Streams outside", "            if False:\n                # Streams outside",
          ("tests/runtime/backends/test_trt_runner.py",)),
    Fault("plan-key-ignores-the-jetson-module", "runtime/backends/tensorrt/keys.py",
          "KEY_FIELDS = (\"tensorrt\", \"gpu\", \"soc\", \"dla_core\", ", "KEY_FIELDS = (\"tensorrt\", \"gpu\", \"dla_core\", ",
          ("tests/runtime/backends/test_plans.py", "-k", "orin_nano")),
    Fault("refused-timing-cache-kept", "runtime/backends/tensorrt/build.py",
          "    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):\n        return cache",
          "    if cache is not None:\n        config.set_timing_cache(cache, ignore_mismatch=False)\n        return cache",
          ("tests/runtime/backends/test_plans.py", "-k", "timing_cache")),
    Fault("auto-skips-native-tensorrt", "runtime/backends/resolve.py",
          "    if not available.native_tensorrt_missing:\n        return \"tensorrt\"", "",
          ("tests/runtime/backends/test_resolve.py", "tests/deploy/test_deploy.py", "-k", "tensorrt or auto")),
)


def scratch_copy(target: Path) -> Path:
    """The repository without its virtualenv, git data, built engines and byte code."""
    root = target / "repo"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(".venv", ".git", "engines", "__pycache__", ".pytest_cache",
                                                              "results", "*.egg-info"))
    (root / "engines").mkdir()  # the tests build their own; the folder only keeps paths the same
    return root


def environment(root: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "STATE_DIRECTORY", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = str(root)
    # No byte code: a mutation of the same size written in the same second as the original would
    # otherwise leave a .pyc that the restored file still matches (its check is mtime and size).
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports(root: Path, env: dict[str, str]) -> None:
    done = subprocess.run([str(PYTHON), "-c", "import runtime, export; print(runtime.__file__); print(export.__file__)"],
                          cwd=root, env=env, capture_output=True, text=True, check=True)
    paths = [Path(line).resolve() for line in done.stdout.split()]
    if not all(root.resolve() in path.parents for path in paths):
        sys.exit(f"mutation: the scratch copy's packages are not the ones imported ({paths}); nothing would be tested")


def pytest(root: Path, env: dict[str, str], tests: tuple[str, ...]) -> tuple[str, float, str]:
    """(outcome, seconds, last lines of output) of one pytest run in the scratch copy."""
    missing = [arg for arg in tests if arg.startswith("tests/") and not (root / arg.split("::")[0]).exists()]
    args = [arg for arg in tests if arg not in missing]
    started = time.monotonic()
    try:
        done = subprocess.run([str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return "TIMEOUT", time.monotonic() - started, ""
    took = time.monotonic() - started
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    if missing:
        tail = f"(missing test files: {', '.join(missing)})\n{tail}"
    # pytest: 0 all passed, 1 some failed; anything else (interrupted, internal error, usage, nothing collected) is no verdict.
    return {0: "passed", 1: "failed"}.get(done.returncode, f"ERROR rc={done.returncode}"), took, tail


def run_fault(root: Path, env: dict[str, str], fault: Fault) -> tuple[str, float, str]:
    path = root / fault.file
    original = path.read_text()
    count = original.count(fault.old)
    if count != 1:
        return f"NOT APPLIED (old text found {count} times)", 0.0, ""
    path.write_text(original.replace(fault.old, fault.new))
    try:
        outcome, took, tail = pytest(root, env, fault.tests)
    finally:
        path.write_text(original)
    verdict = {"failed": "caught", "passed": "SURVIVED"}.get(outcome, outcome)
    return verdict, took, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this fault (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the faults and their tests, run nothing")
    parser.add_argument("--baseline", action="store_true", help="first run each fault's tests unmutated (they must pass)")
    parser.add_argument("--verbose", action="store_true", help="print pytest's last lines for every fault")
    args = parser.parse_args(argv)
    unknown = set(args.only) - {fault.name for fault in FAULTS}
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    faults = [fault for fault in FAULTS if not args.only or fault.name in args.only]
    if args.list:
        for fault in faults:
            print(f"{fault.name:48s} {fault.file:32s} {' '.join(fault.tests)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutation.") as tmp:
        root = scratch_copy(Path(tmp))
        env = environment(root)
        check_imports(root, env)
        if args.baseline:
            for tests in dict.fromkeys(fault.tests for fault in faults):
                outcome, took, tail = pytest(root, env, tests)
                print(f"baseline {' '.join(tests)}: {outcome} ({took:.0f} s)", flush=True)
                if outcome != "passed":
                    print(tail)
                    return 1
        rows = []
        print(f"{'fault':48s} {'verdict':10s} {'s':>5s}  tests", flush=True)
        for fault in faults:
            verdict, took, tail = run_fault(root, env, fault)
            rows.append((fault, verdict, took))
            print(f"{fault.name:48s} {verdict:10s} {took:5.0f}  {' '.join(fault.tests)}", flush=True)
            if args.verbose or verdict not in ("caught", "SURVIVED"):
                print("    " + tail.replace("\n", "\n    "))
        survivors = [fault.name for fault, verdict, _ in rows if verdict != "caught"]
        total = sum(took for _, _, took in rows)
        print(f"\n{len(rows) - len(survivors)}/{len(rows)} caught in {total:.0f} s" +
              (f"; not caught: {', '.join(survivors)}" if survivors else ""))
        return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
