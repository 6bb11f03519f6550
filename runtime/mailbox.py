"""Hand-over between a capture thread and the inference loop, with an explicit drop policy.

NEWEST (live sources): a one-slot mailbox; a frame that arrives while the previous one
is still waiting replaces it, and the replaced frame is counted as dropped. Latency
stays bounded however far behind the loop falls.
NONE (files, or `--drop-policy none`): a bounded FIFO; the producer blocks when it is
full, so every frame is processed and memory stays bounded (back-pressure). A producer
that calls `wait_for_room` before it decodes holds no decoded frame while it waits, so
at most `capacity` decoded frames exist ahead of the consumer (and none ages in a queue).
"""
from __future__ import annotations

import enum
import threading
from collections import deque
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class DropPolicy(str, enum.Enum):
    NEWEST = "newest"
    NONE = "none"


class Closed(Exception):
    """The producer closed the mailbox and nothing is left in it."""


class Mailbox(Generic[T]):
    def __init__(
        self,
        policy: DropPolicy,
        capacity: int = 4,
        on_drop: Optional[Callable[[T], None]] = None,
        doorbell: Optional[threading.Event] = None,
    ) -> None:
        self.policy = DropPolicy(policy)
        self.capacity = 1 if self.policy is DropPolicy.NEWEST else max(1, capacity)
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._on_drop = on_drop
        self._doorbell = doorbell  # shared by all streams' mailboxes: "some frame is ready"
        self.dropped = 0  # replaced before the consumer took them
        self.taken = 0
        self.high_water = 0  # the most items ever waiting at once (<= capacity)

    def put(self, item: T, timeout: Optional[float] = None) -> bool:
        """Hand over `item`. NEWEST never blocks; NONE blocks while full (False on timeout/close)."""
        with self._cond:
            if self._closed:
                return False
            if self.policy is DropPolicy.NEWEST:
                if self._items:
                    stale = self._items.popleft()
                    self.dropped += 1
                    if self._on_drop is not None:
                        self._on_drop(stale)
            elif not self._cond.wait_for(lambda: len(self._items) < self.capacity or self._closed, timeout):
                return False
            if self._closed:
                return False
            self._items.append(item)
            if len(self._items) > self.high_water:
                self.high_water = len(self._items)
            self._cond.notify_all()
        if self._doorbell is not None:
            self._doorbell.set()
        return True

    def get(self, timeout: Optional[float] = None) -> Optional[T]:
        """The oldest waiting item; None on timeout; raises Closed once closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if not self._items:
                raise Closed()
            self.taken += 1
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def wait_for_room(self, timeout: Optional[float] = None) -> bool:
        """Block until a `put` would not block (always at once under NEWEST); False on timeout or close."""
        if self.policy is DropPolicy.NEWEST:
            return not self._closed
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) < self.capacity or self._closed, timeout)
            return not self._closed and len(self._items) < self.capacity

    def ready(self) -> bool:
        # A deque's truth value is read atomically under the GIL: no lock on the loop's poll.
        return bool(self._items)

    def close(self) -> None:
        """No more puts; the consumer drains what is left, then gets Closed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._doorbell is not None:
            self._doorbell.set()

    @property
    def closed(self) -> bool:
        return self._closed
