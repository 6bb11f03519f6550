"""A folder of still images (or one image file) as a source."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from runtime.sources.base import DecodedFrame, PlaybackSource, SourceError, buffer_fits, is_valid_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class ImageFolderSource(PlaybackSource):
    """The images of a folder (*.jpg, *.jpeg, *.png, *.bmp, any case), sorted by file name.

    Not live; `fps` is None unless given (a nominal rate, used for realtime pacing, which
    falls back to 30). A single image file is a one-frame folder. An empty folder fails at
    open; a file that does not decode fails at its read, naming the file.
    """

    def __init__(self, path: str | os.PathLike, *, fps: Optional[float] = None,
                 realtime: bool = False, stream: int = 0) -> None:
        self.path = Path(path)
        super().__init__(str(self.path), fps=fps, realtime=realtime, stream=stream)
        self.files: list[Path] = []

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

    def _close(self) -> None:
        pass

    def _skip_frames(self, count: int) -> int:
        # Skipped files are never opened: a late reader pays nothing for them.
        return min(count, len(self.files) - self._next_index)

    def _read_frame(self, position: int, out: Optional[np.ndarray]) -> Optional[DecodedFrame]:
        if position >= len(self.files):
            return None
        path = self.files[position]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None or not is_valid_image(image):
            raise SourceError(f"cannot read image {path} (corrupt or not an image)")
        if buffer_fits(out, image.shape):
            np.copyto(out, image)
            image = out
        return DecodedFrame(image, time.perf_counter())
