"""edge-export's bad flag values: exit 2 and one line naming the flag, the value and the range.

Every numeric and list flag of the build and of train, pretrain, evaluate and verify is
tried with zero (where 0 is not valid), a negative, NaN, a huge value and the wrong type;
`BuildOptions` refuses the same values with `UsageError`.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from export.build import BuildOptions
from export.cli import main
from export.commands import build_parser
from runtime.errors import EXIT_USAGE, UsageError

# (subcommand, flag) -> refused values; `None` is the default subcommand (build).
REFUSED = {
    (None, "--hidden"): ["0", "-1", "4097", "1e9", "big", "nan"],
    (None, "--layers"): ["0", "-1", "3", "two", "1.5"],
    (None, "--input-size"): ["0", "-1", "31", "100000", "224.0"],
    (None, "--calib-frames"): ["0", "-1", "2049", "many"],
    (None, "--holdout-frames"): ["0", "-4", "1000000"],
    (None, "--min-cosine"): ["nan", "1.5", "-2", "inf", "high"],
    (None, "--window"): ["0", "-1", "100000000", "x"],
    (None, "--stride"): ["0", "-1", "1e3"],
    (None, "--max-batch"): ["0", "-1", "257", "eight"],
    (None, "--workspace-mb"): ["0", "-1", "1000000", "1.5"],
    (None, "--dla-core"): ["-1", "2", "dla"],
    (None, "--seed"): ["-1", "4294967296", "s"],
    (None, "--labels"): ["", ",", "a", "a,a", "a,,b", " , "],
    (None, "--trt-precision"): ["", "int4", "int8,int8", "fp32"],
    ("train", "--window"): ["0", "-1", "100000000"],
    ("train", "--hidden"): ["0", "-1", "5000"],
    ("train", "--layers"): ["0", "3", "x"],
    ("train", "--val-fraction"): ["-0.1", "1", "nan"],
    ("train", "--epochs"): ["0", "-1", "x"],
    ("train", "--patience"): ["0", "-1"],
    ("train", "--iterations"): ["0", "-1", "1e9"],
    ("train", "--batch"): ["0", "-1", "1000000"],
    ("train", "--lr"): ["0", "-1", "nan", "inf", "100"],
    ("train", "--max-drop"): ["-0.1", "1", "nan"],
    ("train", "--seed"): ["-1", "x"],
    ("train", "--threads"): ["0", "-1", "1000"],
    ("train", "--max-failed"): ["-0.5", "1.5", "nan"],
    ("train", "--demo-seed"): ["-1"],
    ("train", "--demo-frames"): ["0", "-1", "10000000"],
    ("train", "--demo-size"): ["0", "-1", "100000"],
    ("pretrain", "--steps"): ["0", "-1", "x"],
    ("pretrain", "--batch"): ["0", "-1"],
    ("pretrain", "--lr"): ["0", "nan"],
    ("pretrain", "--seed"): ["-1"],
    ("pretrain", "--input-size"): ["0", "-1", "5000"],
    ("pretrain", "--threads"): ["0", "-1"],
    ("evaluate", "--demo-seed"): ["-1", "x"],
    ("evaluate", "--demo-frames"): ["0", "-1"],
    ("evaluate", "--demo-size"): ["0", "-1"],
    ("evaluate", "--drop"): ["-0.1", "1", "nan"],
    ("verify", "--frames"): ["0", "-1", "100000", "x"],
    ("verify", "--min-cosine"): ["nan", "2", "-1.5"],
}
CASES = [(command, flag, value) for (command, flag), values in REFUSED.items() for value in values]
TWO_VALUES = {"--input-size", "--demo-size"}  # nargs=2: the bad value first, a good one second


def _argv(command, flag, value):
    head = [command] if command else []
    rest = [value, "64"] if flag in TWO_VALUES else [value]
    if value.startswith("-") and not value[1:2].isdigit() or value == "":  # -inf, "": only the = form reaches the type
        return [*head, f"{flag}={value}"] if flag not in TWO_VALUES else [*head, flag, *rest]
    return [*head, flag, *rest]


@pytest.mark.parametrize(("command", "flag", "value"), CASES, ids=[f"{c or 'build'}{f}={v!r}" for c, f, v in CASES])
def test_bad_flag_value_exits_2_with_one_line(command, flag, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command that ran anyway would write engines/ here
    code = main(_argv(command, flag, value))
    captured = capsys.readouterr()
    assert code == EXIT_USAGE
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"edge-export: error: argument {flag}: {value!r} "), lines[0]
    assert "allowed: " in lines[0]
    assert "Traceback" not in captured.err and "usage:" not in captured.err
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_labels_are_parsed_stripped_and_the_list_flags_become_tuples():
    args = build_parser().parse_args(["--labels", " a, b ,c", "--trt-precision", "fp16"])
    assert args.labels == ("a", "b", "c")
    assert args.trt_precision == ("fp16",)
    defaults = build_parser().parse_args([])
    assert defaults.labels is None and defaults.trt_precision == ("int8", "fp16") and defaults.dla_core is None


def test_dla_core_zero_is_core_zero_not_the_default():
    assert build_parser().parse_args(["--dla-core", "0"]).dla_core == 0


@pytest.mark.parametrize("argv", [["--hidden", "0"], ["--labels", "a,a"], ["train", "--lr", "nan"], ["--input-size", "0", "0"]])
def test_real_console_output(argv, tmp_path):
    """Through the console as a user sees it (from an empty folder: nothing may be written there)."""
    done = subprocess.run([sys.executable, "-m", "export.cli", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    flag = next(arg for arg in argv if arg.startswith("--"))
    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"edge-export: error: argument {flag}: "), done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


BUILD_BAD = [
    ("hidden", 0), ("hidden", -1), ("hidden", 10**6), ("hidden", "256"), ("calib_frames", 0), ("holdout_frames", -1),
    ("layers", 0), ("layers", 3), ("layers", "2"), ("cell", "rnn"), ("cell", None),
    ("min_cosine", math.nan), ("min_cosine", 2.0), ("window", 0), ("window", 10**8), ("stride", 0), ("seed", -1),
    ("max_batch", 0), ("max_batch", "8"), ("workspace_mb", 0), ("dla_core", -1), ("dla_core", 2),
    ("labels", ()), ("labels", ("a",)), ("labels", ("a", "a")), ("labels", ("a", "")), ("labels", "a,b"), ("labels", ("a", 5)),
    ("trt_precision", ()), ("trt_precision", ("int4",)), ("trt_precision", "int8"),
    ("input_size", (0, 224)), ("input_size", (224,)), ("input_size", (224, 224.5)), ("input_size", 224),
]


@pytest.mark.parametrize(("field", "value"), BUILD_BAD, ids=[f"{f}={v!r}" for f, v in BUILD_BAD])
def test_build_options_refuse_bad_values(field, value):
    with pytest.raises(UsageError, match=rf"^BuildOptions\.{field}.* allowed: "):
        BuildOptions(**{field: value})


def test_build_options_defaults_and_valid_edges_are_accepted():
    BuildOptions()
    BuildOptions(hidden=1, window=3600, stride=1, labels=("a", "b"), dla_core=0, min_cosine=-1.0, input_size=(32, 1024),
                 trt_precision=("fp16",))
