"""File helpers shared by export and runtime: content hashes and atomic writes.

Everything the project persists (manifests, engines, checkpoints) goes through
`atomic_write_bytes` so a crash or a full disk never leaves a half-written file
where a good one used to be.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

_CHUNK = 1 << 20
# `atomic_write_bytes` names its temporary ".<target>.<random>.tmp" (mkstemp's prefix and
# suffix); only names of exactly that shape are ever treated as our leftovers.
_TEMP_PREFIX = "."
_TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\.(?P<target>[^/]+)\.[A-Za-z0-9_]{6,}\.tmp")
# A temporary younger than this may belong to a writer that is still fsyncing (an SD card
# can take seconds); a SIGKILLed writer's leftover only gets older.
STALE_TEMPORARY_AGE = 30.0


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder, fsync and rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; engines and manifests are read by other users
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def remove_stale_temporaries(
    folder: str | os.PathLike, min_age: float = STALE_TEMPORARY_AGE, now: Optional[float] = None
) -> list[Path]:
    """Delete what an interrupted `atomic_write_bytes` left in `folder` (not its sub-folders).

    Only regular files named like its temporaries and not modified for `min_age` seconds
    go, so another process writing into the same folder right now is spared. Returns the
    paths removed; a folder that does not exist yet has none.
    """
    folder = Path(folder)
    now = time.time() if now is None else now
    removed = []
    try:
        with os.scandir(folder) as scan:
            entries = list(scan)
    except OSError:  # not there yet, or unreadable: the checkpoint write will say so itself
        return removed
    for entry in entries:
        if not _TEMP_NAME.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < min_age:
                continue
            os.unlink(entry.path)
        except OSError:  # gone already (another cleaner, or its writer renamed it after all), or not ours to delete
            continue
        removed.append(Path(entry.path))
    return removed


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry itself is flushed.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
