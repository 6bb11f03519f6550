"""The recording format: per stream, a folder of self-contained chunks, each one `.npz` file.

    DIR/stream0/chunk-000000.npz, chunk-000001.npz, ...   (stream1/, ... for more streams)

A chunk holds T consecutive per-step results of one stream, as plain arrays that
`numpy.load(path)` reads (no pickle):

| key | shape, type | meaning |
|---|---|---|
| `format` | () int | FORMAT |
| `model` | () str | the engines' identity (Manifest.identity()) that computed it |
| `source`, `stream` | () str, () int | the source's name (credentials masked) and stream number |
| `labels` | [C] str | class names, in the order of `probs` |
| `state_names` | [k] str | the head's state input names (`h`; `h`, `c` for an LSTM; one pair per layer) |
| `frame`, `time` | [T] int64, [T] float64 | the source's frame index and capture time (seconds since the epoch) |
| `latency`, `dropped` | [T] float64, [T] int32 | capture -> result seconds, frames dropped before it (as in the JSON lines) |
| `features` | [T, F] float32 | the CNN's features, the GRU's input |
| `probs`, `label` | [T, C] float32, [T] int16 | the result: every class's probability, the arg-max |
| `true_label` | [T] int16 | index into `labels` of the ground truth, -1 where the source has none |
| `scorable` | [T] bool | counted by `--score` (the last W frames show one clip, no reset in between) |
| `reset` | [T] bool | the state was zero before this step (a reset, or the stream's first step) |
| `initial.<name>` | [H] float32 | each state before the chunk's first step |
| `state.<name>` | [T, H] float32 | each state after each step |

With `initial.*` every chunk replays on its own: the state before step t is `initial`
for t = 0, zero where `reset[t]`, else the state after step t - 1.

A chunk is written whole (temporary file, fsync, rename), so a crash loses at most the
chunk in progress; files whose name starts with "." are such temporaries.
"""
from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger("edge_run.recording")

FORMAT = 1
CHUNK_NAME = re.compile(r"chunk-(\d{6,})\.npz")
STREAM_DIR = re.compile(r"stream(\d+)")


def chunk_name(sequence: int) -> str:
    return f"chunk-{sequence:06d}.npz"


def stream_dir(root: Path, stream: int) -> Path:
    return root / f"stream{stream}"


def chunk_files(root: str | Path) -> list[Path]:
    """Every complete chunk under `root`, oldest first (by stream, then sequence)."""
    found = []
    root = Path(root)
    if not root.is_dir():
        return []
    for folder in root.iterdir():
        match = STREAM_DIR.fullmatch(folder.name)
        if match is None or not folder.is_dir():
            continue
        for path in folder.iterdir():
            chunk = CHUNK_NAME.fullmatch(path.name)
            if chunk is not None:
                found.append((int(match.group(1)), int(chunk.group(1)), path))
    return [path for _, _, path in sorted(found)]


def load_chunk(path: str | Path) -> dict[str, np.ndarray]:
    """One chunk's arrays; ValueError for a file that is not a readable chunk of this format."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path}: not a readable chunk ({type(exc).__name__}: {exc})") from exc
    if int(arrays.get("format", -1)) != FORMAT:
        raise ValueError(f"{path}: recording format {arrays.get('format')}, this edge-run reads {FORMAT}")
    return arrays


def read_stream_chunks(root: str | Path) -> Iterator[tuple[int, Path, dict[str, np.ndarray]]]:
    """(stream, path, arrays) for every readable chunk, oldest first; unreadable ones are logged and skipped."""
    for path in chunk_files(root):
        try:
            arrays = load_chunk(path)
        except ValueError as exc:
            log.warning("skipping %s", exc)
            continue
        yield int(arrays["stream"]), path, arrays


def state_names(arrays: dict[str, np.ndarray]) -> tuple[str, ...]:
    return tuple(str(name) for name in arrays["state_names"])
