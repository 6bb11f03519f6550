"""The backend-neutral engine: named inputs and outputs, preallocated buffers, one call to run.

Lifecycle (borrowed from Polygraphy's runners): construct once (load the model, allocate
every buffer), `run` many times, `close` to release; usable as a context manager.

Callers write into the host input buffers (`engine.input(name)[:batch] = ...`), call
`run(batch)`, and read `engine.output(name)[:batch]`. Buffers are sized for `max_batch`
rows and never reallocated, so the per-frame call allocates nothing in Python.

Recurrent engines (the GRU/LSTM step) additionally own their state, declared as named
pairs (`Recurrence`: state input -> state output), any number of them: one per GRU layer,
h and c per LSTM layer. `step(batch)` feeds every state in, runs, and makes each produced
state the next input by swapping the two buffers of its pair, so the state never leaves
the device on GPU backends. `state()` and `load_state()` move it to and from the host as a
mapping keyed by the state input's name, for checkpoints, resets and tests. Nothing
depends on the order the pairs were declared in: every part looks a state up by name.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from runtime.errors import EngineError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # per-row shape, without the batch dimension
    dtype: np.dtype = np.dtype(np.float32)


@dataclass(frozen=True)
class Recurrence:
    """Which input is fed by which output from one step to the next (h <- h_next, c <- c_next)."""

    state_input: str
    state_output: str


class Engine(ABC):
    backend: str = "?"

    def __init__(
        self,
        name: str,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        max_batch: int,
        precision: str,
        recurrences: tuple[Recurrence, ...] = (),
    ) -> None:
        self.name = name
        self.input_specs = {spec.name: spec for spec in inputs}
        self.output_specs = {spec.name: spec for spec in outputs}
        self.max_batch = int(max_batch)
        self.precision = precision
        self.recurrences = tuple(recurrences)
        self._check_recurrences()

    def _check_recurrences(self) -> None:
        """Each pair names an existing input and output of one shape and type, each name in one pair only."""
        for names in ([r.state_input for r in self.recurrences], [r.state_output for r in self.recurrences]):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise EngineError(f"{self.name}: state {repeated[0]} is declared in more than one pair")
        for pair in self.recurrences:
            if pair.state_input not in self.input_specs or pair.state_output not in self.output_specs:
                raise EngineError(f"{self.name} has no state pair {pair.state_input} -> {pair.state_output} "
                                  f"(inputs: {', '.join(self.input_specs)}; outputs: {', '.join(self.output_specs)})")
            fed, produced = self.input_specs[pair.state_input], self.output_specs[pair.state_output]
            if fed.shape != produced.shape or fed.dtype != produced.dtype:
                raise EngineError(f"{self.name}: state {pair.state_input} {fed.shape} {fed.dtype} and "
                                  f"{pair.state_output} {produced.shape} {produced.dtype} differ in shape or type")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.input_specs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.output_specs)

    @abstractmethod
    def input(self, name: str) -> np.ndarray:
        """The preallocated host buffer [max_batch, ...] for input `name`."""

    @abstractmethod
    def output(self, name: str) -> np.ndarray:
        """The preallocated host buffer [max_batch, ...] that `run` fills for output `name`."""

    @abstractmethod
    def run(self, batch: int) -> None:
        """Run on the first `batch` rows of the input buffers; results land in the output buffers."""

    # Recurrent engines only -------------------------------------------------------------
    @property
    def state_names(self) -> tuple[str, ...]:
        """The state input names, the keys of `state()`."""
        return tuple(pair.state_input for pair in self.recurrences)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """State input name -> [max_batch, *row_shape], what `load_state` takes."""
        return {name: (self.max_batch, *self.input_specs[name].shape) for name in self.state_names}

    def step(self, batch: int) -> None:
        """Run one recurrent step on rows [0, batch): every state in, every state out, then swap."""
        raise EngineError(f"{self.name} is not a recurrent engine")

    def state(self) -> dict[str, np.ndarray]:
        """The current state by input name, each [max_batch, *row_shape] on the host
        (views on CPU backends, copies on GPU)."""
        raise EngineError(f"{self.name} is not a recurrent engine")

    def load_state(self, states: Mapping[str, np.ndarray]) -> None:
        """Replace every state: `states` holds each state input name, [max_batch, *row_shape]."""
        raise EngineError(f"{self.name} is not a recurrent engine")

    def reset_state(self, rows: Optional[list[int]] = None) -> None:
        """Zero every state of `rows` (all rows when None)."""
        current = {name: np.array(value, copy=True) for name, value in self.state().items()}
        for value in current.values():
            if rows is None:
                value[:] = 0.0
            else:
                value[rows] = 0.0
        self.load_state(current)

    def _require_recurrent(self) -> None:
        if not self.recurrences:
            raise EngineError(f"{self.name} is not a recurrent engine")

    def _checked_states(self, states: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`states` as arrays, refused unless it holds exactly this engine's state names in their shapes."""
        self._require_recurrent()
        expected = self.state_shapes()
        missing = sorted(set(expected) - set(states))
        extra = sorted(set(states) - set(expected))
        if missing or extra:
            said = "; ".join(part for part in (missing and f"missing {', '.join(missing)}",
                                                extra and f"unknown {', '.join(extra)}") if part)
            raise EngineError(f"{self.name}: state names do not match ({said}); it carries {', '.join(expected)}")
        arrays = {name: np.asarray(states[name]) for name in expected}
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise EngineError(f"{self.name}: state {name} must have shape {shape}, got {arrays[name].shape}")
        return arrays

    # Lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:  # noqa: B027 - optional: a backend with nothing to release keeps this one
        """Release the backend's resources; the engine cannot run afterwards."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_batch(self, batch: int) -> None:
        if not 1 <= batch <= self.max_batch:
            raise EngineError(f"{self.name}: batch {batch} outside 1..{self.max_batch}")
