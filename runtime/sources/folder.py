"""A folder of still images (or one image file) as a source."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from runtime.sources.base import EMPTY_IMAGE, DecodedFrame, PlaybackSource, SourceError, buffer_fits, is_valid_image

log = logging.getLogger("edge_run.sources")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_NAMES_SHOWN = 5  # unreadable files named in the error of a folder with none readable


class ImageFolderSource(PlaybackSource):
    """The images of a folder (*.jpg, *.jpeg, *.png, *.bmp, any case), sorted by file name.

    Not live; `fps` is None unless given (a nominal rate, used for realtime pacing, which
    falls back to 30). A single image file is a one-frame folder. An empty folder fails at
    open. An image that does not decode is skipped: its frame comes as an empty image at
    its index (the reader counts it as corrupt, and the next frame shows the gap), its
    name is logged once and kept in `unreadable`. Opening decodes up to the first
    readable image, so a folder where nothing decodes fails at open, naming the files.
    """

    def __init__(self, path: str | os.PathLike, *, fps: Optional[float] = None,
                 realtime: bool = False, stream: int = 0) -> None:
        self.path = Path(path)
        super().__init__(str(self.path), fps=fps, realtime=realtime, stream=stream)
        self.files: list[Path] = []
        self.unreadable: list[Path] = []  # images that did not decode, in the order found
        self._bad: set[int] = set()  # positions known not to decode: not read again
        self._first: Optional[tuple[int, np.ndarray]] = None  # the image decoded at open

    def _open(self) -> None:
        if self.path.is_dir():
            files = sorted(
                (p for p in self.path.iterdir()
                 if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                key=lambda p: p.name)
            if not files:
                raise SourceError(f"image folder {self.path} holds no "
                                  f"{'/'.join(IMAGE_EXTENSIONS)} files")
        elif self.path.is_file():
            files = [self.path]
        else:
            raise SourceError(f"no such file or folder: {self.path}")
        self.files = files
        self._bad = set()
        self._first = None
        for position in range(len(files)):
            image = self._decode(position)
            if image is not None:
                self._first = (position, image)
                return
        if len(files) == 1:
            raise SourceError(f"cannot read image {files[0]} (corrupt or not an image)")
        names = ", ".join(p.name for p in files[:_NAMES_SHOWN])
        more = f" and {len(files) - _NAMES_SHOWN} more" if len(files) > _NAMES_SHOWN else ""
        raise SourceError(f"image folder {self.path}: none of its {len(files)} images can be read "
                          f"(corrupt or not images: {names}{more})")

    def _close(self) -> None:
        self._first = None

    def _decode(self, position: int) -> Optional[np.ndarray]:
        """The image at `position`, or None (remembered and logged once) when it does not decode."""
        path = self.files[position]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None and is_valid_image(image):
            return image
        self._bad.add(position)
        if path not in self.unreadable:
            self.unreadable.append(path)
            log.warning("%s: skipping %s (corrupt or not an image)", self.name, path.name)
        return None

    def _skip_frames(self, count: int) -> int:
        # Skipped files are never opened: a late reader pays nothing for them.
        return min(count, len(self.files) - self._next_index)

    def _read_frame(self, position: int, out: Optional[np.ndarray]) -> Optional[DecodedFrame]:
        if position >= len(self.files):
            return None
        first = self._first
        if first is not None and first[0] <= position:
            self._first = None  # used now, or passed by a late reader
        if first is not None and first[0] == position:
            image = first[1]
        elif position in self._bad:
            return DecodedFrame(EMPTY_IMAGE, time.perf_counter())
        else:
            image = self._decode(position)
            if image is None:
                return DecodedFrame(EMPTY_IMAGE, time.perf_counter())
        if buffer_fits(out, image.shape):
            np.copyto(out, image)
            image = out
        return DecodedFrame(image, time.perf_counter())
