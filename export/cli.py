"""`edge-export`: build the engines (default), train the head, `inspect` a manifest, `verify` engines.

    edge-export                         # shipped MobileNet-V3-Small + shipped demo head, INT8 from demo frames
    edge-export --weights ft.safetensors --calib factory.mp4 --trt
    edge-export train --clips clips/    # train the GRU head on labelled clips (needs the `train` extra)
    edge-export train --clips demo      # ... on the synthetic demo task (reproduces the shipped head)
    edge-export pretrain                # pretrain the default backbone on synthetic images (~15-30 min CPU)
    edge-export evaluate --clips demo:20 --demo-seed 1   # task accuracy of the engines on labelled clips
    edge-export inspect [--out engines]
    edge-export verify [--out engines] [--backend tensorrt] [--frames 64]

Exit codes: 0 done; 1 build failed (quality gate, engine error); 2 bad input (arguments,
weights, ONNX, calibration source, output folder). Each command raises; `main` maps any
`EdgeRunError` to its code with `export.errors.code_for`.

The subcommands live by concern: `export.commands` (build, inspect), `export.verify`,
`export.training.commands` (train, pretrain, evaluate).
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from export.commands import build_command, build_parser, inspect_command, inspect_parser
from export.errors import code_for
from export.training.commands import (
    evaluate_command,
    evaluate_parser,
    pretrain_command,
    pretrain_parser,
    train_command,
    train_parser,
)
from export.verify import verify_command, verify_parser
from runtime.errors import EdgeRunError

SUBCOMMANDS = ("build", "inspect", "verify", "train", "pretrain", "evaluate")

# command -> run(argv): parse the command's arguments and run it; the exit code for a result.
_RUN: dict[str, Callable[[list[str]], int]] = {
    "build": lambda argv: build_command(build_parser().parse_args(argv)),
    "inspect": lambda argv: inspect_command(inspect_parser().parse_args(argv)),
    "verify": lambda argv: verify_command(verify_parser().parse_args(argv)),
    "train": lambda argv: train_command(train_parser().parse_args(argv), argv),
    "pretrain": lambda argv: pretrain_command(pretrain_parser().parse_args(argv)),
    "evaluate": lambda argv: evaluate_command(evaluate_parser().parse_args(argv)),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "build"
    try:
        return _RUN[command](argv)
    except EdgeRunError as exc:
        return _fail(code_for(exc, command), str(exc))
    except KeyboardInterrupt:
        print("edge-export: interrupted; the previous engines are untouched", file=sys.stderr)
        return 130


def _fail(code: int, message: str) -> int:
    print(f"edge-export: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
