"""Backbone features of training clips, extracted once and cached on disk.

Features come from the backbone engine that will be deployed (an ONNX file from the
manifest, INT8 by default) run with onnxruntime on the CPU, on frames decoded and
preprocessed by the runtime's own code (`export.training.clips.read_clip`). The cache is keyed by
the engine file's SHA-256 and the clip's identity (path, size and modification time for a
file; seed, index and size for a demo clip), so changing either re-extracts and
re-running a training reuses every clip already done.

Layout: `<cache>/<engine sha256[:16]>/<sha1(clip key)>.npy`, float32 [T, F], written
atomically. Unreadable clips are returned separately with the reason, never cached.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from export.training.clips import ClipRef, read_clip
from runtime.files import atomic_write_bytes, sha256_file
from runtime.manifest import InputSpec
from runtime.preprocess import Preprocessor
from runtime.sources import SourceError

BATCH = 16


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-run" / "features"


@dataclass
class Extracted:
    features: list[np.ndarray] = field(default_factory=list)  # [T, F] per usable clip
    clips: list[ClipRef] = field(default_factory=list)
    failed: list[tuple[ClipRef, str]] = field(default_factory=list)
    cached: int = 0  # clips served from the cache


class FeatureExtractor:
    """One backbone ONNX file + input spec -> cached features per clip."""

    def __init__(self, backbone: str | os.PathLike, spec: InputSpec, cache_dir: Optional[str | os.PathLike] = None,
                 threads: Optional[int] = None) -> None:
        self.path = Path(backbone)
        self.spec = spec
        self.digest = sha256_file(self.path)
        self.cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.preprocess = Preprocessor(spec)

    def _cache_path(self, clip: ClipRef) -> Path:
        spec = self.spec
        key = f"{clip.key}|{spec.height}x{spec.width}|{spec.color_order}|{spec.mean}|{spec.std}|{spec.scale}"
        return self.cache / self.digest[:16] / (hashlib.sha1(key.encode()).hexdigest() + ".npy")

    def features(self, frames: np.ndarray) -> np.ndarray:
        """Backbone features [T, F] of preprocessed frames [T, 3, H, W]."""
        out = [self.session.run(None, {self.input_name: frames[i:i + BATCH]})[0] for i in range(0, len(frames), BATCH)]
        return np.concatenate(out).astype(np.float32)

    def clip_features(self, clip: ClipRef) -> tuple[np.ndarray, bool]:
        """(features [T, F], served from cache). Raises SourceError when the clip cannot be read."""
        path = self._cache_path(clip)
        if path.is_file():
            try:
                return np.load(path, allow_pickle=False), True
            except (OSError, ValueError):
                pass  # a damaged cache entry is recomputed
        feats = self.features(read_clip(clip, self.preprocess))
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, feats)
        atomic_write_bytes(path, buffer.getvalue())
        return feats, False

    def extract(self, clips: Sequence[ClipRef], progress: bool = True, desc: str = "features") -> Extracted:
        """Features of every clip, with a progress bar on stderr; unreadable clips listed in `failed`."""
        result = Extracted()
        # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI)
        bar = tqdm(clips, desc=desc, unit="clip", file=sys.stderr, disable=None if progress else True,
                   dynamic_ncols=True)
        for clip in bar:
            try:
                feats, cached = self.clip_features(clip)
            except (SourceError, OSError, ValueError) as exc:
                result.failed.append((clip, str(exc)))
                continue
            result.features.append(feats)
            result.clips.append(clip)
            result.cached += int(cached)
        bar.close()
        return result
