"""The manifest: the one contract between `edge-export` and `edge-run`.

`engines/manifest.json` tells the runtime everything it needs to run the engines
without guessing: input geometry and normalisation, feature and hidden sizes, the
recurrent head's cell, layers and named state pairs, labels, window defaults, and every
engine file with its SHA-256. The runtime refuses
a manifest it does not understand and a file whose hash does not match.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Optional

from runtime import validation as valid
from runtime.errors import ManifestError
from runtime.files import atomic_write_json, sha256_file

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_ID_DIGITS = 12  # hex digits of the identity a result carries as "model"
EXPORT_COMMAND = "edge-export --out {out}"

# Roles an engine file can play.
BACKBONE = "backbone"
GRU_STEP = "gru_step"
GRU_SEQUENCE = "gru_sequence"
ROLES = (BACKBONE, GRU_STEP, GRU_SEQUENCE)
FORMATS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
COLOR_ORDERS = valid.COLOR_ORDERS
CELLS = valid.CELLS
# What a manifest written before heads had a choice of cell means: the one-layer GRU (h -> h_next).
LEGACY_CELL, LEGACY_LAYERS = "gru", 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


_ENGINE_FIELDS = frozenset(EngineFile.__dataclass_fields__)


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
    cell: str = LEGACY_CELL  # the recurrent head's cell: "gru" or "lstm"
    layers: int = LEGACY_LAYERS  # stacked layers of that cell
    # The step engine's state pairs, input name -> output name (state_pairs(cell, layers) for
    # the project's builders). The runtime declares its recurrences from these names.
    states: dict[str, str] = field(default_factory=lambda: state_pairs(LEGACY_CELL, LEGACY_LAYERS))
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

    def model_id(self) -> str:
        """The short hash every result carries as `model` (and `edge-export inspect` prints): the first
        12 hex digits of `identity()`, so it changes exactly when what the engines compute changes."""
        return self.identity()[:MODEL_ID_DIGITS]


def state_pairs(cell: str, layers: int) -> dict[str, str]:
    """The state pairs the project's builders give a head, input name -> output name.

    Layer 0 carries `h` (and an LSTM's `c`), layer l > 0 `h_l<l>` (and `c_l<l>`), PyTorch's
    `_l<l>` suffix; each is fed by the output of the same name plus `_next`. A one-layer GRU
    is `h -> h_next`, the names every manifest before this field used.
    """
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; choose from {', '.join(CELLS)}")
    kinds = ("h", "c") if cell == "lstm" else ("h",)
    pairs = {}
    for layer in range(int(layers)):
        for kind in kinds:
            name = kind if layer == 0 else f"{kind}_l{layer}"
            pairs[name] = f"{name}_next"
    return pairs


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
    except _FieldError as exc:
        raise ManifestError(f"{path}: {exc}; {hint}") from None
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
    try:
        actual = sha256_file(file_path)
    except OSError as exc:
        raise ManifestError(f"engine file {file_path} cannot be read ({exc.strerror or exc}); {hint}") from exc
    if actual != entry.sha256:
        raise ManifestError(
            f"engine file {file_path} does not match the manifest (sha256 {actual[:12]}…, "
            f"expected {entry.sha256[:12]}…): it was changed or corrupted; {hint}"
        )
    return file_path


def _from_json(data: dict[str, Any], folder: Path) -> Manifest:
    """Build the manifest, checking every field's type and range as it is read.

    A hand-edited or foreign manifest must fail here with the field's name, not later as a
    TypeError deep in a backend or as a wrong result.
    """
    spec = _dict(data, "input", required=True)
    input_spec = InputSpec(
        height=_positive_int(spec, "height", "input."),
        width=_positive_int(spec, "width", "input."),
        color_order=_choice(spec, "color_order", COLOR_ORDERS, "input."),
        mean=_triple(spec, "mean", positive=False),
        std=_triple(spec, "std", positive=True),
        scale=_positive_float(spec, "scale", "input.", default=1.0 / 255.0),
    )
    engines = _list(data, "engines")
    return Manifest(
        input=input_spec,
        backbone_arch=_text(data, "backbone_arch"),
        feature_size=_positive_int(data, "feature_size"),
        hidden_size=_positive_int(data, "hidden_size", spec=valid.HIDDEN),
        labels=_labels(data),
        window=_positive_int(data, "window", spec=valid.WINDOW),
        stride=_positive_int(data, "stride", spec=valid.STRIDE),
        engines=tuple(_engine_file(entry, i) for i, entry in enumerate(engines)),
        **_head(data),
        versions=_dict(data, "versions"),
        quantization=_dict(data, "quantization"),
        training=_dict(data, "training"),
        provenance=_dict(data, "provenance"),
        schema_version=SCHEMA_VERSION,
        folder=folder,
    )


def _head(data: dict[str, Any]) -> dict[str, Any]:
    """cell, layers and states; a manifest without them is the one-layer GRU every older build made."""
    if not any(key in data for key in ("cell", "layers", "states")):
        return {}
    cell = _choice(data, "cell", CELLS)
    layers = _positive_int(data, "layers", spec=valid.LAYERS)
    states = _dict(data, "states")
    expected = 2 * layers if cell == "lstm" else layers
    if len(states) != expected or not all(isinstance(v, str) and v.strip() for v in (*states, *states.values())):
        raise _bad("states", states, f"{expected} pairs of state names (input name -> output name) for a "
                                     f"{layers}-layer {cell.upper()}")
    outputs = list(states.values())
    if len(set(outputs)) != len(outputs) or set(outputs) & set(states):
        raise _bad("states", states, "distinct input and output names")
    return {"cell": cell, "layers": layers, "states": dict(states)}


class _FieldError(Exception):
    """One bad field, named by its dotted path, with the value found and what was expected."""


def _bad(field_name: str, value: Any, expected: str) -> _FieldError:
    return _FieldError(f"{field_name} is {_shown(value)}, expected {expected}")


_MISSING = object()  # a field absent from the JSON: refused by each check with its own expectation


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    # JSON true/false load as bool, a subclass of int: never a count.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _positive_int(data: dict[str, Any], key: str, prefix: str = "", spec: Optional[valid.Spec] = None) -> int:
    """A positive int, within `spec`'s range where the runtime declares one (an absurd window
    from a hand-edited manifest must not become a MemoryError in the ring buffer)."""
    value = data.get(key, _MISSING)
    low, high = (1, math.inf) if spec is None else (spec.low, spec.high)
    if not _is_int(value) or not low <= value <= high:
        raise _bad(prefix + key, value, "a positive integer" if spec is None else spec.describe())
    return value


def _positive_float(data: dict[str, Any], key: str, prefix: str, default: Any = _MISSING) -> float:
    value = data.get(key, default)
    if not _is_number(value) or value <= 0:
        raise _bad(prefix + key, value, "a positive finite number")
    return float(value)


def _text(data: dict[str, Any], key: str, prefix: str = "") -> str:
    value = data.get(key, _MISSING)
    if not isinstance(value, str) or not value.strip():
        raise _bad(prefix + key, value, "a non-empty string")
    return value


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...], prefix: str = "") -> str:
    value = data.get(key, _MISSING)
    if not isinstance(value, str) or value not in allowed:
        raise _bad(prefix + key, value, "one of " + ", ".join(allowed))
    return value


def _dict(data: dict[str, Any], key: str, prefix: str = "", required: bool = False) -> dict[str, Any]:
    value = data.get(key, _MISSING if required else {})
    if not isinstance(value, dict):
        raise _bad(prefix + key, value, "a JSON object")
    return dict(value)


def _list(data: dict[str, Any], key: str, prefix: str = "") -> list[Any]:
    value = data.get(key, _MISSING)
    if not isinstance(value, list) or not value:
        raise _bad(prefix + key, value, "a non-empty list")
    return value


def _triple(spec: dict[str, Any], key: str, positive: bool) -> tuple[float, float, float]:
    value = spec.get(key, _MISSING)
    if (not isinstance(value, list) or len(value) != 3 or not all(_is_number(v) for v in value)
            or (positive and min(value) <= 0)):
        raise _bad("input." + key, value, f"3 {'positive ' if positive else ''}finite numbers (one per channel)")
    return (float(value[0]), float(value[1]), float(value[2]))


def _labels(data: dict[str, Any]) -> tuple[str, ...]:
    value = _list(data, "labels")
    for i, label in enumerate(value):
        if not isinstance(label, str) or not label.strip():
            raise _bad(f"labels[{i}]", label, "a non-empty string")
    repeated = sorted({label for label in value if value.count(label) > 1})
    if repeated:
        raise _bad("labels", value, f"unique labels ({', '.join(repeated)} repeated)")
    return tuple(value)


def _shapes(entry: dict[str, Any], key: str, prefix: str) -> dict[str, list[Any]]:
    shapes = _dict(entry, key, prefix)
    for name, shape in shapes.items():
        if not isinstance(shape, list) or not all(_is_int(d) and d > 0 or isinstance(d, str) for d in shape):
            raise _bad(f"{prefix}{key}.{name}", shape, "a list of positive integers or dimension names")
    return shapes


def _engine_file(entry: Any, index: int) -> EngineFile:
    prefix = f"engines[{index}]."
    if not isinstance(entry, dict):
        raise _bad(f"engines[{index}]", entry, "a JSON object")
    role = _choice(entry, "role", ROLES, prefix)
    prefix = f"engines[{index}] ({role})."
    unknown = sorted(set(entry) - _ENGINE_FIELDS)
    if unknown:
        raise _FieldError(f"{prefix}{unknown[0]} is not a field this edge-run knows "
                          f"(known: {', '.join(sorted(_ENGINE_FIELDS))})")
    file = _text(entry, "file", prefix)
    relative = PurePosixPath(file.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or PureWindowsPath(file).drive:
        raise _bad(prefix + "file", file, "a file name inside the engines folder")
    sha256 = entry.get("sha256", _MISSING)
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise _bad(prefix + "sha256", sha256, "64 lowercase hex digits")
    extra = _dict(entry, "extra", prefix)
    if role == GRU_SEQUENCE:
        _positive_int(extra, "window", prefix + "extra.", valid.WINDOW)
    return EngineFile(
        role=role,
        format=_choice(entry, "format", FORMATS, prefix),
        precision=_choice(entry, "precision", PRECISIONS, prefix),
        file=file,
        sha256=sha256,
        inputs=_shapes(entry, "inputs", prefix),
        outputs=_shapes(entry, "outputs", prefix),
        max_batch=_positive_int(entry, "max_batch", prefix, valid.MAX_BATCH) if "max_batch" in entry else EngineFile.max_batch,
        extra=extra,
    )


def _check_consistency(manifest: Manifest, path: Path, hint: str) -> None:
    problems = []
    if manifest.find(BACKBONE, "onnx") is None and manifest.find(BACKBONE, "tensorrt") is None:
        problems.append("no backbone engine listed")
    if manifest.find(GRU_STEP, "onnx") is None and manifest.find(GRU_STEP, "tensorrt") is None:
        problems.append("no gru_step engine listed")
    for entry in manifest.engines:
        # Entries that record their tensors must carry the states the manifest names.
        if entry.role == GRU_STEP and entry.inputs and entry.outputs:
            absent = [n for n in manifest.states if n not in entry.inputs] + \
                     [n for n in manifest.states.values() if n not in entry.outputs]
            if absent:
                problems.append(f"the gru_step engine {entry.file} has no state tensor {', '.join(absent)}")
    if problems:
        raise ManifestError(f"{path} is inconsistent: {'; '.join(problems)}; {hint}")
