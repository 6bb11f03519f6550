"""Start-up removes what a process killed mid-write left in the state folder, and nothing else."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from helpers import REPO

from runtime import Pipeline, PipelineConfig, load_manifest, open_engines, open_source
from runtime.files import STALE_TEMPORARY_AGE, atomic_write_bytes, remove_stale_temporaries
from runtime.service import Service, ServiceOptions
from runtime.service.checkpoint import CHECKPOINT_NAME

# A real writer SIGKILLed between writing its temporary and renaming it into place.
KILLED_MID_WRITE = """
import os, signal, sys
from runtime.files import atomic_write_bytes
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
atomic_write_bytes(sys.argv[1], b"x" * 4096)
"""


def killed_mid_write(target) -> list:
    """Leave the temporary a SIGKILLed `atomic_write_bytes(target)` leaves; return the folder's new files."""
    before = set(target.parent.iterdir())
    done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target)], cwd=REPO, timeout=60)
    assert done.returncode == -signal.SIGKILL
    return sorted(set(target.parent.iterdir()) - before)


def backdate(path, seconds) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_sigkilled_writers_temporary_is_removed_once_stale_and_a_fresh_one_is_spared(tmp_path):
    # given two writers killed mid-write: one long ago, one just now (or still writing, as far as anyone can tell)
    (old,) = killed_mid_write(tmp_path / CHECKPOINT_NAME)
    backdate(old, 3600)
    (fresh,) = killed_mid_write(tmp_path / "manifest.json")
    assert old.name.startswith(f".{CHECKPOINT_NAME}.") and old.name.endswith(".tmp") and not (tmp_path / CHECKPOINT_NAME).exists()
    # and files that are not our temporaries, however old
    keep = [tmp_path / name for name in ("notes.tmp", ".checkpoint.npz.corrupt-20240101-000000", "checkpoint.npz.tmp",
                                         ".hidden.tmp", "data.bin")]
    for path in keep:
        path.write_bytes(b"keep")
        backdate(path, 3600)
    lookalike = tmp_path / ".checkpoint.npz.abcd1234.tmp"
    lookalike.mkdir()  # a folder named like one is not a file we wrote
    backdate(lookalike, 3600)
    # when the folder is cleaned
    removed = remove_stale_temporaries(tmp_path)
    # then only the stale temporary went
    assert removed == [old] and not old.exists()
    assert fresh.exists() and lookalike.is_dir() and all(path.exists() for path in keep)
    # and the fresh one goes too once it is older than the limit
    assert remove_stale_temporaries(tmp_path, now=time.time() + STALE_TEMPORARY_AGE + 1) == [fresh]


def test_a_missing_or_clean_folder_has_nothing_to_remove(tmp_path):
    assert remove_stale_temporaries(tmp_path / "not-yet") == []
    atomic_write_bytes(tmp_path / CHECKPOINT_NAME, b"data")  # a write that finished leaves no temporary
    assert remove_stale_temporaries(tmp_path, min_age=0.0) == []
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_the_service_cleans_its_state_folder_at_start_and_says_how_many(engines_dir, tmp_path, caplog):
    # given a state folder with two stale temporaries of killed checkpoint writes and one being written now
    stale = killed_mid_write(tmp_path / CHECKPOINT_NAME) + killed_mid_write(tmp_path / CHECKPOINT_NAME)
    for path in stale:
        backdate(path, 600)
    (current,) = killed_mid_write(tmp_path / CHECKPOINT_NAME)
    manifest = load_manifest(engines_dir)
    pipeline = Pipeline(open_engines(manifest, "cpu"), [open_source("demo")], PipelineConfig(max_frames=3))
    # when a service starts on it
    with caplog.at_level(logging.INFO, logger="edge_run.service"):
        Service(pipeline, [], ServiceOptions(state_dir=tmp_path), identity=manifest.identity()).run()
    # then the stale ones are gone, the fresh one stays, the run checkpointed, and one line gave the count
    assert not any(path.exists() for path in stale) and current.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_NAME, current.name])
    lines = [r.getMessage() for r in caplog.records if "stale temporary" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("removed 2 stale temporary file(s)"), lines
    assert all(path.name in lines[0] for path in stale)
