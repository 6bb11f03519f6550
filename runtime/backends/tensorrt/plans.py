"""TensorRT plans as a cache: check each plan's build key, rebuild the stale ones in place.

A plan only loads on the TensorRT version and GPU model that built it; a JetPack upgrade
makes every plan unloadable (the breakage Jetson users report most). `edge-export`
records each plan's key (TensorRT version, GPU, precision, source ONNX SHA-256; see
`keys.plan_key`) and the ONNX file it came from in the manifest. Before the
native TensorRT backend loads, `ensure_plans` compares those keys with this machine:

- a plan that matches is used as it is;
- a stale or missing plan whose ONNX file is present (and matches the manifest) is
  rebuilt here, with one log line saying why, reusing `timing.cache` beside it, and the
  manifest is rewritten atomically with the new plan's hash and key;
- a plan that cannot be rebuilt (no ONNX, TensorRT's builder unavailable, the folder
  read-only, rebuilding switched off) is an EngineError that says why and gives the
  command to run.

The builder is `build.build_plan` (shared with `edge-export --trt`); it lives in `runtime`
because an edge box must be able to rebuild its plans without the build-time `export`
stage. It is always importable; what a box may lack is TensorRT itself, which
`device_key` reports (before any rebuild) as TensorRTUnavailable naming the extra.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

from runtime.backends.engine import EngineError
from runtime.backends.tensorrt.build import DEFAULT_WORKSPACE_MB, TIMING_CACHE_NAME, build_plan
from runtime.backends.tensorrt.keys import REBUILD_COMMAND, device_key, plan_matches
from runtime.errors import PlanBuildError, TensorRTUnavailable
from runtime.files import sha256_file
from runtime.manifest import EngineFile, Manifest, ManifestError, save_manifest, verify_engine_file

log = logging.getLogger("edge_run.plans")

Builder = Callable[..., Mapping]  # build_plan(onnx_path, plan_path, precision=, max_batch=, dla_core=, timing_cache_path=)
OnRebuild = Callable[[str], None]


def default_builder() -> Builder:
    """The builder `ensure_plans` uses when given none: `build_plan`, looked up per call so it can be swapped."""
    return build_plan


def ensure_plans(
    manifest: Manifest,
    entries: Sequence[EngineFile],
    *,
    rebuild: bool = True,
    key: Optional[Mapping[str, str]] = None,
    builder: Optional[Builder] = None,
    on_rebuild: Optional[OnRebuild] = None,
) -> Manifest:
    """The manifest with every TensorRT plan in `entries` usable on this machine.

    `key` (default: `device_key()`) describes this machine; `builder` (default:
    `build_plan`) builds a plan; `on_rebuild` hears a one-line
    status before each rebuild (the service extends systemd's start timeout with it).
    """
    plans = [e for e in entries if e is not None and e.format == "tensorrt"]
    if not plans:
        return manifest
    key = dict(key) if key is not None else device_key()
    command = REBUILD_COMMAND.format(out=manifest.folder)
    stale: list[tuple[EngineFile, str, Path]] = []
    for entry in plans:
        plan_path = manifest.path_of(entry)
        onnx_entry = _onnx_entry(manifest, entry)
        current = dict(key, precision=entry.precision, dla_core=build_options(entry)["dla_core"])
        if onnx_entry is not None:
            current["onnx_sha256"] = onnx_entry.sha256
        if not plan_path.is_file():
            reason = "the plan file is missing"
        else:
            ok, reason = plan_matches(entry.extra, current)
            if ok:
                continue
        if not rebuild:
            raise EngineError(f"cannot use TensorRT plan {plan_path}: {reason}; rebuild it with: {command}")
        if onnx_entry is None:
            raise EngineError(f"cannot use TensorRT plan {plan_path}: {reason}, and the manifest names no ONNX file to "
                              f"rebuild it from; run: {command}")
        try:
            onnx_path = verify_engine_file(manifest, onnx_entry)
        except ManifestError as exc:
            raise EngineError(f"cannot use TensorRT plan {plan_path}: {reason}, and it cannot be rebuilt: {exc}") from exc
        stale.append((entry, reason, onnx_path))
    if not stale:
        return manifest
    if not os.access(manifest.folder, os.W_OK):
        raise EngineError(f"TensorRT plan(s) in {manifest.folder} must be rebuilt ({stale[0][1]}) but the folder is not "
                          f"writable by this user; run: {command}")
    build = builder or default_builder()
    replaced: dict[int, EngineFile] = {}  # by position in manifest.engines (entries hold dicts: unhashable)
    with _rebuild_lock(manifest.folder):
        for entry, reason, onnx_path in stale:
            plan_path = manifest.path_of(entry)
            cache = manifest.folder / TIMING_CACHE_NAME
            log.warning("rebuilding TensorRT plan %s from %s: %s (timing cache %s%s)", plan_path.name, onnx_path.name,
                        reason, cache.name, "" if cache.is_file() else ", cold")
            if on_rebuild is not None:
                on_rebuild(f"rebuilding TensorRT plan {plan_path.name}")
            try:
                summary = build(onnx_path, plan_path, precision=entry.precision, timing_cache_path=cache, **build_options(entry))
            except Exception as exc:  # build_plan's TensorRTUnavailable / PlanBuildError, or TensorRT's own
                # Those two are EngineErrors since the one error root, but name neither the plan nor the command:
                # wrap them like every build failure. Only another EngineError (a swapped-in builder's) says enough.
                if isinstance(exc, EngineError) and not isinstance(exc, (TensorRTUnavailable, PlanBuildError)):
                    raise
                raise EngineError(f"rebuilding TensorRT plan {plan_path} failed: {exc}; run: {command}") from exc
            extra = plan_extra(entry.extra, summary)
            replaced[_position(manifest, entry)] = dataclasses.replace(entry, sha256=sha256_file(plan_path), extra=extra)
            log.warning("rebuilt %s in %.0f s", plan_path.name, float(summary.get("seconds", 0.0)))
        updated = dataclasses.replace(manifest, engines=tuple(replaced.get(i, e) for i, e in enumerate(manifest.engines)))
        try:
            save_manifest(updated, manifest.folder)
        except OSError as exc:
            raise EngineError(f"rebuilt plans but cannot update {manifest.folder}/manifest.json ({exc}); run: {command}") from exc
    return updated


def build_options(entry: EngineFile) -> dict:
    """What `build_plan` needs besides the precision to build `entry`'s plan again as it was built.

    `edge-export` records them under `extra["build"]`; an entry from before that record
    existed falls back to its max batch and the `dla_core` its key names.
    """
    record = entry.extra.get("build") or {}
    max_batch = int(record.get("max_batch", entry.max_batch))
    return {
        "min_batch": int(record.get("min_batch", 1)),
        "opt_batch": int(record.get("opt_batch", 1)),
        "max_batch": max_batch,
        "workspace_mb": int(record.get("workspace_mb", DEFAULT_WORKSPACE_MB)),
        "dla_core": record.get("dla_core", entry.extra.get("dla_core")),
    }


def plan_extra(previous: Mapping, summary: Mapping) -> dict:
    """A plan entry's `extra` after a build: the previous one (`onnx_file`, ...) with the new key and build record."""
    extra = dict(previous)
    extra.update(summary.get("key", {}))
    if "build" in summary:
        extra["build"] = dict(summary["build"])
    return extra


def plan_file_name(onnx_file: str, precision: str) -> str:
    """The plan's file name beside its ONNX file: backbone_int8.onnx -> backbone_int8.int8.plan."""
    return f"{Path(onnx_file).stem}.{precision}.plan"


def with_planned(manifest: Manifest, onnx_entries: Sequence[EngineFile], precisions: Sequence[str],
                 max_batch: int) -> Manifest:
    """The manifest plus a plan entry for each ONNX entry that has none yet (built by `ensure_plans`).

    This is how `--backend tensorrt` (and `auto` on a box with TensorRT) runs engines
    exported without `--trt`: the plans are built at start, on the GPU (no DLA), and kept.
    """
    added = []
    for onnx_entry, precision in zip(onnx_entries, precisions):
        name = plan_file_name(onnx_entry.file, precision)
        if any(e.format == "tensorrt" and e.file == name for e in (*manifest.engines, *added)):
            continue
        extra = dict(onnx_entry.extra)
        extra.update(onnx_file=onnx_entry.file, build={"max_batch": max_batch, "dla_core": None})
        added.append(dataclasses.replace(onnx_entry, format="tensorrt", precision=precision, file=name, sha256="",
                                         max_batch=max_batch, extra=extra))
    if not added:
        return manifest
    return dataclasses.replace(manifest, engines=manifest.engines + tuple(added))


def _onnx_entry(manifest: Manifest, plan: EngineFile) -> Optional[EngineFile]:
    """The manifest's ONNX entry the plan was built from (`extra["onnx_file"]`, as edge-export records)."""
    name = plan.extra.get("onnx_file")
    if not name:
        return None
    for entry in manifest.engines:
        if entry.format == "onnx" and entry.file == name:
            return entry
    return None


def _position(manifest: Manifest, entry: EngineFile) -> int:
    return next(i for i, e in enumerate(manifest.engines) if e is entry or e == entry)


@contextlib.contextmanager
def _rebuild_lock(folder: Path) -> Iterator[None]:
    """One rebuild at a time per engines folder (two services starting together after an upgrade)."""
    import fcntl  # here, not at the top: POSIX only, and `import runtime` reaches this module on every platform

    with open(folder / ".rebuild.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
