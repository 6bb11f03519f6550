"""Labelled clips for training the temporal head: a folder, a CSV, or the synthetic demo task.

Accepted inputs (`edge-export train --clips ...`):

- a folder with one sub-folder per class: `clips/<label>/*.mp4|avi|mkv|mov|m4v|webm`, or
  `clips/<label>/<clip>/` image-sequence folders (`*.jpg|jpeg|png|bmp`, sorted by name);
- a CSV file of `path,label` rows (a header row `path,label` is allowed; relative paths
  are relative to the CSV's folder);
- `demo` or `demo:N`: N clips per class of the runtime's synthetic demo task
  (`runtime.sources.demo`), rendered on the fly, never written to disk.

Frames are decoded by the runtime's own sources (`runtime.sources.open_source`) and
prepared by its `Preprocessor`, so training sees exactly what deployment sees.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from export.errors import ExportError
from export.training.augment import ClipAugmentation, draw, flipped_label
from runtime.preprocess import Preprocessor
from runtime.sources import IMAGE_EXTENSIONS, SourceError, is_valid_image, open_source
from runtime.sources.demo import CLASSES, WORLD_VERSION, render_clip

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm")
DEMO_CLIPS_PER_CLASS = 400
DEMO_CLIP_FRAMES = 48
_DEMO = re.compile(r"^demo(?::(\d+))?$")


class ClipsError(ExportError, ValueError):
    """Training clips that cannot be used; the message says which and what to do (bad input, exit 2)."""


@dataclass(frozen=True)
class ClipRef:
    """One labelled clip: a video file or image folder (`path`), or a demo clip (`demo`).

    With `view`, an augmented view of that clip: every frame changed by the same parameters,
    and `label` already what the view shows (a mirrored move_left is a move_right).
    """

    label: str
    path: Optional[Path] = None
    demo: Optional[tuple[int, int, int, int, int]] = None  # (seed, index, frames, width, height)
    view: Optional[ClipAugmentation] = None
    demo_class: Optional[str] = None  # on views of demo clips: the class rendered (`label` may be its mirror)

    @property
    def key(self) -> str:
        """A stable identity for the feature cache: changes when the clip's content may have."""
        return self._source_key() + (f"|view:{self.view.key()}" if self.view is not None else "")

    def _source_key(self) -> str:
        if self.demo is not None:
            seed, index, frames, width, height = self.demo
            return f"demo{WORLD_VERSION}:{self.demo_label}:{seed}:{index}:{frames}:{width}x{height}"
        stat = self.path.stat()
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.is_file())
            latest = max((p.stat().st_mtime_ns for p in files), default=stat.st_mtime_ns)
            return f"folder:{self.path.resolve()}:{len(files)}:{latest}"
        return f"file:{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"

    @property
    def name(self) -> str:
        base = f"demo/{self.demo_label}/{self.demo[1]}" if self.demo is not None else str(self.path)
        return base if self.view is None else f"{base} (view {self.view.key()})"

    @property
    def demo_label(self) -> str:
        """The class a demo clip was rendered as (a flipped view's `label` is the mirrored class)."""
        return self.demo_class or self.label


def augmented_views(clip: ClipRef, count: int, rng: np.random.Generator,
                    flip_map: Optional[dict[str, str]]) -> list[ClipRef]:
    """`count` augmented views of `clip`, one random draw each (flips only with a label map)."""
    views = []
    for _ in range(count):
        view = draw(rng, flips=bool(flip_map))
        label = flipped_label(clip.label, flip_map) if view.flip else clip.label
        views.append(ClipRef(label, path=clip.path, demo=clip.demo, view=view,
                             demo_class=clip.demo_label if clip.demo is not None else None))
    return views


@dataclass
class ClipSet:
    clips: list[ClipRef]
    labels: tuple[str, ...]
    source: str
    empty_classes: list[str] = field(default_factory=list)

    def per_class(self) -> dict[str, int]:
        counts = {label: 0 for label in self.labels}
        for clip in self.clips:
            counts[clip.label] += 1
        return counts


def find_clips(spec: str | os.PathLike, *, demo_seed: int = 0, demo_frames: int = DEMO_CLIP_FRAMES,
               demo_size: tuple[int, int] = (320, 240)) -> ClipSet:
    """The labelled clips `spec` names (see the module docstring); ClipsError when unusable."""
    text = os.fspath(spec)
    match = _DEMO.match(text.strip())
    if match:
        return demo_clips(int(match.group(1) or DEMO_CLIPS_PER_CLASS), seed=demo_seed, frames=demo_frames,
                          size=demo_size)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        clip_set = _from_csv(path)
    elif path.is_dir():
        clip_set = _from_folder(path)
    elif path.exists():
        raise ClipsError(f"--clips {path}: expected a folder of class sub-folders, a .csv of path,label, or demo[:N]")
    else:
        raise ClipsError(f"--clips {path}: no such file or folder")
    return _checked(clip_set)


def demo_clips(per_class: int, *, seed: int = 0, frames: int = DEMO_CLIP_FRAMES,
               size: tuple[int, int] = (320, 240)) -> ClipSet:
    """`per_class` clips of every demo class; clip i of a class is the same for a given seed."""
    if per_class < 1:
        raise ClipsError(f"demo:N needs N >= 1 clips per class, got {per_class}")
    clips = [ClipRef(label, demo=(seed, index, frames, size[0], size[1]))
             for index in range(per_class) for label in CLASSES]
    return ClipSet(clips, tuple(CLASSES), f"demo:{per_class} (seed {seed}, {frames} frames of {size[0]}x{size[1]})")


def _is_image_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())


def _from_folder(root: Path) -> ClipSet:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ClipsError(f"--clips {root}: no class sub-folders; lay clips out as {root}/<label>/<clip>.mp4 "
                         "(or <label>/<clip>/ image folders), or pass a CSV of path,label")
    clips, empty = [], []
    for folder in classes:
        found = []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_file() and entry.suffix.lower() in VIDEO_EXTENSIONS:
                found.append(ClipRef(folder.name, path=entry))
            elif entry.is_dir() and _is_image_folder(entry):
                found.append(ClipRef(folder.name, path=entry))
            elif entry.is_file():
                found.append(ClipRef(folder.name, path=entry))  # unknown type: tried, and reported if unreadable
        if not found:
            empty.append(folder.name)
        clips.extend(found)
    return ClipSet(clips, tuple(c.name for c in classes), str(root), empty)


def _from_csv(path: Path) -> ClipSet:
    clips, labels = [], []
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ClipsError(f"--clips {path}: cannot read the CSV ({exc})") from exc
    for number, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and [c.lower() for c in cells[:2]] == ["path", "label"]:
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise ClipsError(f"--clips {path}, line {number}: expected path,label, got {row}")
        clip_path = Path(cells[0]).expanduser()
        if not clip_path.is_absolute():
            clip_path = path.parent / clip_path
        clips.append(ClipRef(cells[1], path=clip_path))
        if cells[1] not in labels:
            labels.append(cells[1])
    if not clips:
        raise ClipsError(f"--clips {path}: the CSV lists no clips (expected rows of path,label)")
    return ClipSet(clips, tuple(sorted(labels)), str(path))


def _checked(clip_set: ClipSet) -> ClipSet:
    if clip_set.empty_classes:
        raise ClipsError(f"--clips {clip_set.source}: class(es) with no clips: {', '.join(clip_set.empty_classes)}; "
                         "add clips or remove the folder(s)")
    if len(clip_set.labels) < 2:
        raise ClipsError(f"--clips {clip_set.source}: only one class ({', '.join(clip_set.labels) or 'none'}); "
                         "a classifier needs at least 2 classes")
    return clip_set


def read_clip(clip: ClipRef, preprocess: Preprocessor) -> np.ndarray:
    """Every frame of `clip`, preprocessed: float32 [T, 3, H, W]. SourceError when unreadable."""
    if clip.demo is not None:
        images = render_demo_clip(clip)
        return preprocess.batch([clip.view.apply(i) for i in images] if clip.view is not None else list(images))
    rows = []
    with open_source(clip.path) as source:
        while True:
            frame = source.read()
            if frame is None:
                break
            if not is_valid_image(frame.image):
                raise SourceError(f"{clip.path}: frame {frame.index} does not decode")
            rows.append(np.empty(preprocess.input_shape, np.float32))
            preprocess(clip.view.apply(frame.image) if clip.view is not None else frame.image, rows[-1])
    if not rows:
        raise SourceError(f"{clip.path}: no frames")
    return np.stack(rows)


def render_demo_clip(clip: ClipRef) -> np.ndarray:
    """The uint8 BGR frames [T, H, W, 3] of a demo ClipRef (its own seeded generator)."""
    seed, index, frames, width, height = clip.demo
    rng = np.random.default_rng([seed, index, CLASSES.index(clip.demo_label)])
    return render_clip(rng, clip.demo_label, frames, width, height)
