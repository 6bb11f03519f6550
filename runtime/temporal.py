"""The temporal stage: a recurrent head (GRU or LSTM, one or two layers) stepped with carried
state per stream, and per-window decisions.

Row i of every state is stream i. A batch may hold any subset of the streams (the
ones whose frames were ready); the common case, every stream in order, steps the
engine-resident state directly. A subset is moved to the front rows, stepped and moved
back, which costs a few small host copies only on that path.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from runtime.backends.engine import Engine
from runtime.errors import EngineError
from runtime.ring import RingBuffer


class StepRunner:
    """Per-step output: one recurrent step per frame with every state pair carried between frames."""

    def __init__(self, engine: Engine, num_streams: int) -> None:
        # open_engines has checked the engines against the manifest (exit 3 with the rebuild
        # command); these only guard EngineSets assembled by hand through the Python API.
        if not engine.recurrences:
            raise EngineError("the step engine must be recurrent (declare its state pairs, e.g. h -> h_next)")
        if engine.max_batch < num_streams:
            raise EngineError(f"GRU engine takes at most {engine.max_batch} rows, {num_streams} streams asked for")
        self.engine = engine
        self.num_streams = num_streams
        self.x = engine.input("x")
        self.logits = engine.output("logits")
        self._identity = tuple(range(engine.max_batch))
        # Subset stepping: per subset, the row permutation that brings its streams to the front
        # and its inverse, computed once (at most 2**N subsets); a scratch per state to permute through.
        self._permutations: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._scratch = {name: np.zeros(shape, engine.input_specs[name].dtype) for name, shape in engine.state_shapes().items()}

    def step(self, streams: Sequence[int]) -> np.ndarray:
        """Step the streams whose features are in `self.x[:len(streams)]`; returns logits [n, C]."""
        n = len(streams)
        key = tuple(streams)
        if key == self._identity[:n]:
            self.engine.step(n)
        else:
            self._step_subset(key)
        return self.logits[:n]

    def _step_subset(self, streams: tuple[int, ...]) -> None:
        forward, inverse = self._permutation(streams)
        self._permute(forward)
        self.engine.step(len(streams))
        self._permute(inverse)

    def _permute(self, order: np.ndarray) -> None:
        for name, value in self.engine.state().items():
            np.take(value, order, axis=0, out=self._scratch[name])
        self.engine.load_state(self._scratch)

    def _permutation(self, streams: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        found = self._permutations.get(streams)
        if found is None:
            chosen = set(streams)
            forward = np.array(list(streams) + [row for row in range(self.engine.max_batch) if row not in chosen])
            found = (forward, np.argsort(forward))
            self._permutations[streams] = found
        return found

    def reset(self, stream: Optional[int] = None) -> None:
        self.engine.reset_state(None if stream is None else [stream])

    def state(self) -> dict[str, np.ndarray]:
        """Every state by input name, the rows of this run's streams [N, ...] (copies)."""
        return {name: np.array(value[: self.num_streams], copy=True) for name, value in self.engine.state().items()}

    def load(self, states: Mapping[str, np.ndarray]) -> None:
        """Set the rows of this run's streams from `states` (each [N, ...], by input name)."""
        full = {name: np.array(value, copy=True) for name, value in self.engine.state().items()}
        if set(states) != set(full):
            raise EngineError(f"state names {', '.join(sorted(states))} do not match the engine's {', '.join(sorted(full))}")
        for name, value in full.items():
            value[: len(states[name])] = states[name]
        self.engine.load_state(full)


class WindowRunner:
    """Per-window output: the recurrent head over W buffered features from a zero state.

    With a sequence engine (x [N,W,F] -> logits) the whole window is one call; otherwise
    the step engine runs W times, feeding each pair's output back into its input on the host.
    """

    def __init__(self, engine: Engine, window: int, sequence: bool) -> None:
        self.engine = engine
        self.window = window
        self.sequence = sequence
        self.logits = engine.output("logits")
        self.x = engine.input("x")
        if sequence:
            if self.x.shape[1] != window:
                raise EngineError(f"sequence engine is built for windows of {self.x.shape[1]}, not {window}")
            self.pairs: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
        else:
            if not engine.recurrences:
                raise EngineError("a step engine running windows must declare its state pairs")
            self.pairs = tuple((engine.input(p.state_input), engine.output(p.state_output)) for p in engine.recurrences)

    @property
    def max_batch(self) -> int:
        return self.engine.max_batch

    def run(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """`windows`: n arrays [W, F], oldest first. Returns logits [n, C]."""
        n = len(windows)
        if self.sequence:
            for row, window in enumerate(windows):
                self.x[row] = window
            self.engine.run(n)
            return self.logits[:n]
        for state_in, _ in self.pairs:
            state_in[:n] = 0.0
        for t in range(self.window):
            for row, window in enumerate(windows):
                self.x[row] = window[t]
            self.engine.run(n)
            for state_in, state_out in self.pairs:
                state_in[:n] = state_out[:n]
        return self.logits[:n]


class StreamWindows:
    """One ring buffer per stream and the stride schedule deciding when a window is due."""

    def __init__(self, num_streams: int, window: int, stride: int, feature_size: int) -> None:
        if stride < 1:
            raise ValueError("stride must be at least 1")
        self.window = window
        self.stride = stride
        self.rings = [RingBuffer(window, feature_size) for _ in range(num_streams)]

    def push(self, stream: int, feature: np.ndarray) -> bool:
        """Push a feature; True when this push completes a window that is due."""
        ring = self.rings[stream]
        ring.push(feature)
        return ring.pushed >= self.window and (ring.pushed - self.window) % self.stride == 0

    def reset(self, stream: int) -> None:
        self.rings[stream].reset()
