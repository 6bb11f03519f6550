"""The manifest: the one contract between `edge-export` and `edge-run`.

`engines/manifest.json` tells the runtime everything it needs to run the engines
without guessing: input geometry and normalisation, feature and hidden sizes,
labels, window defaults, and every engine file with its SHA-256. The runtime refuses
a manifest it does not understand and a file whose hash does not match.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from runtime.errors import ManifestError
from runtime.files import atomic_write_json, sha256_file

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
EXPORT_COMMAND = "edge-export --out {out}"

# Roles an engine file can play.
BACKBONE = "backbone"
GRU_STEP = "gru_step"
GRU_SEQUENCE = "gru_sequence"


@dataclass(frozen=True)
class InputSpec:
    height: int = 224
    width: int = 224
    color_order: str = "RGB"  # order the network expects; sources deliver BGR
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: float = 1.0 / 255.0  # applied to uint8 pixels before mean/std


@dataclass(frozen=True)
class EngineFile:
    """One engine file: a role (backbone, gru_step, gru_sequence), a format, a precision."""

    role: str
    format: str  # "onnx" or "tensorrt"
    precision: str  # "fp32", "fp16", "int8"
    file: str  # relative to the manifest's folder
    sha256: str
    inputs: dict[str, list[Any]] = field(default_factory=dict)  # name -> shape (str for dynamic dims)
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    max_batch: int = 8
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. TensorRT build key


@dataclass(frozen=True)
class Manifest:
    input: InputSpec
    backbone_arch: str
    feature_size: int
    hidden_size: int
    labels: tuple[str, ...]
    window: int
    stride: int
    engines: tuple[EngineFile, ...]
    versions: dict[str, Optional[str]] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    folder: Path = field(default=Path("."), compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def find(self, role: str, fmt: str, precision: Optional[str] = None) -> Optional[EngineFile]:
        for entry in self.engines:
            if entry.role == role and entry.format == fmt and (precision is None or entry.precision == precision):
                return entry
        return None

    def precisions(self, role: str, fmt: str) -> list[str]:
        return [e.precision for e in self.engines if e.role == role and e.format == fmt]

    def path_of(self, entry: EngineFile) -> Path:
        return self.folder / entry.file

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("folder")
        data["labels"] = list(self.labels)
        data["engines"] = [asdict(e) for e in self.engines]
        data["input"]["mean"] = list(self.input.mean)
        data["input"]["std"] = list(self.input.std)
        # Schema first so a human reading the file sees it at once.
        return {"schema_version": data.pop("schema_version"), **data}

    def identity(self) -> str:
        """A stable hash of what the engines compute: checkpoints are only valid for the same one."""
        digest = hashlib.sha256()
        for entry in sorted(self.engines, key=lambda e: (e.role, e.format, e.precision)):
            digest.update(f"{entry.role}:{entry.format}:{entry.precision}:{entry.sha256};".encode())
        digest.update(json.dumps(list(self.labels)).encode())
        return digest.hexdigest()


def save_manifest(manifest: Manifest, folder: str | os.PathLike) -> Path:
    path = Path(folder) / MANIFEST_NAME
    atomic_write_json(path, manifest.to_json())
    return path


def rebuild_hint(folder: str | os.PathLike) -> str:
    return "run: " + EXPORT_COMMAND.format(out=folder)


def load_manifest(folder: str | os.PathLike, verify_hashes: bool = True) -> Manifest:
    """Read and check `folder/manifest.json`; raise ManifestError saying what is wrong and what to run."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    hint = rebuild_hint(folder)
    if not path.is_file():
        raise ManifestError(f"no engines found: {path} does not exist; {hint}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not a readable manifest ({exc}); {hint}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path} is not a manifest (expected a JSON object); {hint}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema_version {version!r}; this edge-run understands {SCHEMA_VERSION}. "
            f"Rebuild the engines with this version: {hint}"
        )
    try:
        manifest = _from_json(data, folder)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path} is missing or has a malformed field ({exc!r}); {hint}") from exc
    _check_consistency(manifest, path, hint)
    if verify_hashes:
        for entry in manifest.engines:
            verify_engine_file(manifest, entry)
    return manifest


def verify_engine_file(manifest: Manifest, entry: EngineFile) -> Path:
    file_path = manifest.path_of(entry)
    hint = rebuild_hint(manifest.folder)
    if not file_path.is_file():
        raise ManifestError(f"engine file {file_path} listed in the manifest is missing; {hint}")
    actual = sha256_file(file_path)
    if actual != entry.sha256:
        raise ManifestError(
            f"engine file {file_path} does not match the manifest (sha256 {actual[:12]}…, "
            f"expected {entry.sha256[:12]}…): it was changed or corrupted; {hint}"
        )
    return file_path


def _from_json(data: dict[str, Any], folder: Path) -> Manifest:
    spec = data["input"]
    input_spec = InputSpec(
        height=int(spec["height"]),
        width=int(spec["width"]),
        color_order=str(spec["color_order"]),
        mean=tuple(float(v) for v in spec["mean"]),
        std=tuple(float(v) for v in spec["std"]),
        scale=float(spec.get("scale", 1.0 / 255.0)),
    )
    engines = tuple(EngineFile(**entry) for entry in data["engines"])
    return Manifest(
        input=input_spec,
        backbone_arch=str(data["backbone_arch"]),
        feature_size=int(data["feature_size"]),
        hidden_size=int(data["hidden_size"]),
        labels=tuple(str(x) for x in data["labels"]),
        window=int(data["window"]),
        stride=int(data["stride"]),
        engines=engines,
        versions=dict(data.get("versions", {})),
        quantization=dict(data.get("quantization", {})),
        training=dict(data.get("training", {})),
        provenance=dict(data.get("provenance", {})),
        schema_version=int(data["schema_version"]),
        folder=folder,
    )


def _check_consistency(manifest: Manifest, path: Path, hint: str) -> None:
    problems = []
    if manifest.input.color_order not in ("RGB", "BGR"):
        problems.append(f"color_order {manifest.input.color_order!r} is not RGB or BGR")
    if len(manifest.input.mean) != 3 or len(manifest.input.std) != 3 or min(manifest.input.std) <= 0:
        problems.append("mean/std must have 3 entries and std must be positive")
    if manifest.feature_size <= 0 or manifest.hidden_size <= 0 or manifest.num_classes < 1:
        problems.append("feature_size, hidden_size and labels must be non-empty")
    if manifest.window < 1 or not 1 <= manifest.stride:
        problems.append("window and stride must be at least 1")
    if manifest.find(BACKBONE, "onnx") is None and manifest.find(BACKBONE, "tensorrt") is None:
        problems.append("no backbone engine listed")
    if manifest.find(GRU_STEP, "onnx") is None and manifest.find(GRU_STEP, "tensorrt") is None:
        problems.append("no gru_step engine listed")
    if problems:
        raise ManifestError(f"{path} is inconsistent: {'; '.join(problems)}; {hint}")
