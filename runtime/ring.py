"""Fixed-length ring buffer of feature vectors, one per stream.

Each row is written twice, at `head` and `head + W`, into a [2W, F] array. Push stays
O(1) (two row copies), and the last W rows in chronological order are always the
contiguous slice `[head, head + W)`: a window is a view, never a concatenation.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


class RingBuffer:
    def __init__(self, length: int, feature_size: int, dtype=np.float32) -> None:
        if length < 1 or feature_size < 1:
            raise ValueError(f"ring buffer needs length >= 1 and feature_size >= 1, got {length}, {feature_size}")
        self.length = length
        self.feature_size = feature_size
        self._data = np.zeros((2 * length, feature_size), dtype)
        self._head = 0  # index of the oldest row once full; next write position
        self._count = 0  # rows pushed since the last reset (saturates at length)
        self.pushed = 0  # rows pushed since the last reset (does not saturate)

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count == self.length

    def push(self, feature: np.ndarray) -> None:
        self._data[self._head] = feature
        self._data[self._head + self.length] = feature
        self._head = (self._head + 1) % self.length
        if self._count < self.length:
            self._count += 1
        self.pushed += 1

    def window(self) -> np.ndarray:
        """The buffered rows, oldest first: a read-only view of shape [len(self), F]."""
        start = self._head + self.length - self._count
        view = self._data[start : start + self._count]
        view.flags.writeable = False
        return view

    def reset(self) -> None:
        self._head = 0
        self._count = 0
        self.pushed = 0

    # Checkpointing ----------------------------------------------------------------------
    def snapshot(self) -> np.ndarray:
        return np.array(self.window(), copy=True)

    def restore(self, rows: np.ndarray, pushed: Optional[int] = None) -> None:
        """Refill from `rows` (oldest first); `pushed` (default: the rows given) keeps the stride schedule."""
        self.reset()
        for row in rows[-self.length :]:
            self.push(row)
        if pushed is not None:
            self.pushed = pushed
