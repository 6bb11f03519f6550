"""Bad flag values and bad config objects: exit 2 and one line naming the flag, the value and the range.

Every numeric flag of edge-run is tried with zero (where 0 is not valid), a negative, NaN,
a huge value and the wrong type. The ranges come from `runtime.validation`; the config
dataclasses of the Python API refuse the same values with `UsageError`.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
from helpers import REPO

from runtime import validation as valid
from runtime.backends import open_engines
from runtime.cli import build_parser, main
from runtime.errors import EXIT_SOURCE, EXIT_USAGE, UsageError
from runtime.mailbox import DropPolicy
from runtime.manifest import load_manifest
from runtime.pipeline import PipelineConfig
from runtime.result import EmitMode
from runtime.service import ServiceOptions

# flag -> values it refuses. 0 is listed where 0 is invalid; where 0 is valid it is in ACCEPTED.
REFUSED = {
    "--camera": ["-1", "1024", "abc", "1.5", "nan"],
    "--width": ["0", "-1", "16385", "wide", "nan"],
    "--height": ["0", "-1", "100000", "1e3"],
    "--fps": ["0", "-1", "nan", "inf", "1e9", "fast"],
    "--max-frames": ["0", "-1", "10000000000000", "1.5", "nan"],
    "--threads": ["0", "-1", "257", "two"],
    "--window": ["0", "-1", "100000000", "8.0", "nan"],
    "--stride": ["0", "-1", "99999999999", "x"],
    "--reset-gap-ms": ["0", "-1", "nan", "inf", "1e12", "soon"],
    "--budget-ms": ["0", "-5", "nan", "-inf", "1e9", "ms"],
    "--mqtt-queue": ["0", "-1", "1000001", "lots"],
    "--checkpoint-every": ["0", "-1", "nan", "1e9", "often"],
    "--checkpoint-max-age": ["0", "-1", "nan", "inf", "1e12"],
    "--metrics-port": ["-1", "65536", "70000", "http", "80.5"],
    "--stall-after": ["0", "-1", "nan", "1e9"],
    "--stop-timeout": ["0", "-1", "1", "nan", "3601", "later"],
    "--preview-fps": ["0", "-1", "nan", "61", "often"],
    "--record-max-mb": ["0", "-1", "nan", "inf", "1e8"],
    "--record-chunk": ["0", "-1", "100001", "1.5"],
    "--clip-pre": ["-1", "nan", "601", "long"],
    "--clip-post": ["-0.5", "inf", "601"],
    "--clip-min-score": ["-0.1", "1.1", "nan"],
    "--clip-holdoff": ["-1", "nan", "1e6"],
    "--clip-max-mb": ["0", "-1", "1e8"],
    "--clip-on": ["blink,blink", "blink,", ""],
}
CASES = [(flag, value) for flag, values in REFUSED.items() for value in values]

# Values at the edges of each range that must parse (0 where 0 means 0).
ACCEPTED = [
    ("--camera", "0", 0), ("--window", "1", 1), ("--window", "3600", 3600), ("--stride", "1", 1),
    ("--metrics-port", "0", 0), ("--metrics-port", "65535", 65535), ("--stop-timeout", "2", 2.0),
    ("--budget-ms", "0.5", 0.5), ("--reset-gap-ms", "0.001", 0.001), ("--threads", "1", 1), ("--max-frames", "1", 1),
    ("--fps", "1000", 1000.0), ("--mqtt-queue", "1", 1),
    ("--clip-pre", "0", 0.0), ("--clip-holdoff", "0", 0.0), ("--clip-min-score", "0", 0.0), ("--clip-min-score", "1", 1.0),
    ("--preview-fps", "60", 60.0), ("--record-chunk", "1", 1), ("--clip-on", "blink", ("blink",)),
]


def _flag_argv(flag: str, value: str) -> list[str]:
    # argparse reads "-inf" after a flag as another flag; a user writes --budget-ms=-inf (a number like -5 is fine).
    return [f"{flag}={value}"] if value.startswith("-") and not value[1:2].isdigit() else [flag, value]


def _one_error_line(err: str, flag: str, value: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"edge-run: error: argument {flag}: "), line
    assert repr(value) in line and "allowed: " in line, line
    assert "Traceback" not in err and "usage:" not in err
    return line


@pytest.mark.parametrize(("flag", "value"), CASES, ids=[f"{f}={v}" for f, v in CASES])
def test_bad_flag_value_exits_2_with_one_line(flag, value, capsys, tmp_path):
    out = tmp_path / "results.jsonl"
    code = main(["--source", "demo", "--out", str(out), "--engines", str(tmp_path / "none"), *_flag_argv(flag, value)])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE
    _one_error_line(captured.err, flag, value)
    assert captured.out == ""
    assert not out.exists()  # the arguments are checked before anything is created


@pytest.mark.parametrize(("flag", "text", "value"), ACCEPTED, ids=[f"{f}={t}" for f, t, _ in ACCEPTED])
def test_values_at_the_edges_of_each_range_parse(flag, text, value):
    args = build_parser().parse_args([flag, text])
    got = getattr(args, flag.lstrip("-").replace("-", "_"))
    assert (got[0] if isinstance(got, list) else got) == value


def test_no_value_means_the_default():
    args = build_parser().parse_args([])
    assert args.window is None and args.stride is None and args.budget_ms is None and args.max_frames is None
    assert args.metrics_port is None and args.threads is None
    assert args.reset_gap_ms == 1000.0 and args.stop_timeout == 15.0


def test_unknown_flag_and_missing_value_are_one_line_too(capsys):
    assert main(["--no-such-flag"]) == EXIT_USAGE
    assert capsys.readouterr().err == "edge-run: error: unrecognized arguments: --no-such-flag\n"
    assert main(["--window"]) == EXIT_USAGE
    assert capsys.readouterr().err == "edge-run: error: argument --window: expected one argument\n"


@pytest.mark.parametrize(("flag", "value"), [("--window", "100000000"), ("--metrics-port", "70000"), ("--budget-ms", "nan")])
def test_real_console_output(flag, value, tmp_path):
    """Through the console as a user sees it: one line on stderr, exit 2, nothing on stdout."""
    out = tmp_path / "r.jsonl"
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "--out", str(out), flag, value],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    _one_error_line(done.stderr, flag, value)
    assert not out.exists()


def test_bad_out_is_refused_before_any_source_opens(engines_dir, tmp_path):
    """--out in a missing folder with a missing source file: the --out error (2), not the source's (4)."""
    missing = tmp_path / "nowhere" / "r.jsonl"
    code_args = ["--engines", str(engines_dir), "--backend", "cpu", "--source", str(tmp_path / "no.mp4"), "--out", str(missing)]
    done = subprocess.run([sys.executable, "-m", "runtime.cli", *code_args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("edge-run: error: --out ") and "Traceback" not in done.stderr
    # The same source with a writable --out is the source's error: the order above was the check, not chance.
    ok_out = tmp_path / "r.jsonl"
    done = subprocess.run([sys.executable, "-m", "runtime.cli", *code_args[:-1], str(ok_out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == EXIT_SOURCE, done.stderr


# --- the Python API's config objects -----------------------------------------------------------
PIPELINE_BAD = [
    ("stride", 0), ("stride", -3), ("stride", 2.5), ("stride", "8"), ("stride", True),
    ("budget", 0.0), ("budget", -0.005), ("budget", math.nan), ("budget", math.inf), ("budget", 1e6), ("budget", "0.04"),
    ("reset_gap", 0.0), ("reset_gap", -1.0), ("reset_gap", math.nan),
    ("max_frames", 0), ("max_frames", -1), ("max_frames", 10.0), ("max_frames", False),
    ("collect_timeout", -0.1), ("collect_timeout", math.nan), ("queue_frames", 0), ("queue_frames", 10**6),
    ("emit", "step"), ("drop_policy", "newest"),
]


@pytest.mark.parametrize(("field", "value"), PIPELINE_BAD, ids=[f"{f}={v!r}" for f, v in PIPELINE_BAD])
def test_pipeline_config_refuses_bad_values(field, value):
    with pytest.raises(UsageError) as caught:
        PipelineConfig(**{field: value})
    message = str(caught.value)
    assert message.startswith(f"PipelineConfig.{field} = {value!r} ") and "allowed: " in message
    assert caught.value.exit_code == EXIT_USAGE


def test_pipeline_config_takes_none_as_the_default_and_zero_where_valid():
    config = PipelineConfig(stride=None, budget=None, max_frames=None, drop_policy=None, collect_timeout=0.0)
    assert config.collect_timeout == 0.0  # 0: do not wait for the other streams, not "the default"
    PipelineConfig(emit=EmitMode.BOTH, drop_policy=DropPolicy.NONE, stride=1, budget=60.0, max_frames=1)


SERVICE_BAD = [
    ("metrics_port", -1), ("metrics_port", 70000), ("metrics_port", "9100"), ("checkpoint_every", 0.0),
    ("checkpoint_every", math.nan), ("checkpoint_max_age", -1.0), ("checkpoint_max_age", 0), ("stall_after", 0),
    ("stall_after", math.inf), ("flush_timeout", 0.0), ("flush_timeout", -1.0),
]


@pytest.mark.parametrize(("field", "value"), SERVICE_BAD, ids=[f"{f}={v!r}" for f, v in SERVICE_BAD])
def test_service_options_refuse_bad_values(field, value):
    with pytest.raises(UsageError, match=rf"^ServiceOptions\.{field} = .* allowed: "):
        ServiceOptions(**{field: value})


def test_service_options_port_zero_means_any_free_port():
    assert ServiceOptions(metrics_port=0).metrics_port == 0
    assert ServiceOptions().metrics_port is None


@pytest.mark.parametrize("window", [0, -1, 100_000_000, 4.0])
def test_open_engines_refuses_a_bad_window_before_loading(engines_dir, window):
    with pytest.raises(UsageError, match=r"^window = .* allowed: an integer from 1 to 3600 frames$"):
        open_engines(load_manifest(engines_dir), "cpu", window=window)


def test_spec_messages_name_value_and_range():
    with pytest.raises(UsageError) as caught:
        valid.WINDOW.check("window", 10**8)
    assert str(caught.value) == "window = 100000000 is out of range; allowed: an integer from 1 to 3600 frames"
    assert valid.BUDGET_MS.describe() == "a number greater than 0 and at most 60000 ms"
    assert valid.BUDGET_MS("40") == 40.0 and valid.WINDOW(" 16 ") == 16
