"""The backend-neutral engine: named inputs and outputs, preallocated buffers, one call to run.

Lifecycle (borrowed from Polygraphy's runners): construct once (load the model, allocate
every buffer), `run` many times, `close` to release; usable as a context manager.

Callers write into the host input buffers (`engine.input(name)[:batch] = ...`), call
`run(batch)`, and read `engine.output(name)[:batch]`. Buffers are sized for `max_batch`
rows and never reallocated, so the per-frame call allocates nothing in Python.

Recurrent engines (the GRU step) additionally own their hidden state: `step(batch)`
feeds the state in, runs, and makes the produced state the next input by swapping two
buffers, so the state never leaves the device on GPU backends. `state()` and
`load_state()` move it to and from the host for checkpoints, resets and tests.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import numpy as np

from runtime.errors import EngineError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # per-row shape, without the batch dimension
    dtype: np.dtype = np.dtype(np.float32)


@dataclass(frozen=True)
class Recurrence:
    """Which input is fed by which output from one step to the next (h <- h_next)."""

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
        recurrence: Optional[Recurrence] = None,
    ) -> None:
        self.name = name
        self.input_specs = {spec.name: spec for spec in inputs}
        self.output_specs = {spec.name: spec for spec in outputs}
        self.max_batch = int(max_batch)
        self.precision = precision
        self.recurrence = recurrence
        if recurrence is not None:
            if recurrence.state_input not in self.input_specs or recurrence.state_output not in self.output_specs:
                raise EngineError(f"{name} has no state pair {recurrence.state_input} -> {recurrence.state_output} "
                                  f"(inputs: {', '.join(self.input_specs)}; outputs: {', '.join(self.output_specs)})")

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
    def step(self, batch: int) -> None:
        """Run one recurrent step on rows [0, batch): state in, state out, then swap."""
        raise EngineError(f"{self.name} is not a recurrent engine")

    def state(self) -> np.ndarray:
        """The current state [max_batch, H] on the host (a view on CPU backends, a copy on GPU)."""
        raise EngineError(f"{self.name} is not a recurrent engine")

    def load_state(self, state: np.ndarray) -> None:
        """Replace the state with `state` [max_batch, H]."""
        raise EngineError(f"{self.name} is not a recurrent engine")

    def reset_state(self, rows: Optional[list[int]] = None) -> None:
        """Zero the state of `rows` (all rows when None)."""
        current = np.array(self.state(), copy=True)
        if rows is None:
            current[:] = 0.0
        else:
            current[rows] = 0.0
        self.load_state(current)

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
