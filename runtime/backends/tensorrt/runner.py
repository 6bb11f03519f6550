"""Native TensorRT backend: a deserialized plan, pycuda buffers, one CUDA stream.

Per call: copy the batch's input rows host->device (page-locked host buffers, async),
`execute_async_v3` on the stream, copy the output rows device->host, synchronize. Every
buffer is allocated once, for `max_batch` rows, in the constructor; addresses are bound
to the execution context once, and only the input shape is set again when the batch
size changes.

Recurrent engines keep each state of their named pairs (one per GRU layer, h and c per
LSTM layer) in two device buffers: step k reads buffer A and writes buffer B, step k+1
reads B and writes A, so the state never crosses to the host. One parity serves every
pair; each is found by its name, never by its position.
`state()` / `load_state()` / `reset_state()` copy or clear it explicitly (checkpoints,
operator resets, tests). Rows at or beyond the stepped batch keep their values, as on
the onnxruntime backend.

`tensorrt` and `pycuda` are imported when an engine is built, never at module import
(see `imports`), so the runtime imports on machines without them and says which extra
to install. Whether a plan fits this box is decided by `keys` before TensorRT sees it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from runtime.backends.engine import Engine, EngineError, Recurrence, TensorSpec
from runtime.backends.tensorrt.imports import import_pycuda, import_tensorrt
from runtime.backends.tensorrt.keys import REBUILD_COMMAND, gpu_name, plan_matches


class _Context:
    """The device's primary CUDA context (the one TensorRT's runtime API uses), pushed per call.

    Pushing around every call makes the engine usable from whichever thread the loop runs
    on; a push/pop pair costs about a microsecond.
    """

    def __init__(self, cuda, device: int) -> None:
        cuda.init()
        self._cuda = cuda
        self.context = cuda.Device(device).retain_primary_context()

    def __enter__(self):
        self.context.push()
        return self

    def __exit__(self, *exc) -> None:
        self._cuda.Context.pop()

    def release(self) -> None:
        if self.context is not None:
            self.context.detach()
            self.context = None


class TrtEngine(Engine):
    backend = "tensorrt"

    def __init__(
        self,
        plan_path: str,
        name: str,
        max_batch: int,
        precision: str,
        recurrences: tuple[Recurrence, ...] = (),
        device: int = 0,
        build_key: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Load `plan_path`; with `build_key` (the manifest entry's `extra`), first check
        that the plan was built by this TensorRT for this GPU, and say so if not."""
        trt, cuda = import_tensorrt(), import_pycuda()
        self._trt, self._cuda = trt, cuda
        plan_path = Path(plan_path)
        rebuild = REBUILD_COMMAND.format(out=plan_path.parent)
        if not plan_path.is_file():
            raise EngineError(f"TensorRT plan {plan_path} does not exist; build it with: {rebuild}")
        if build_key is not None:
            ok, reason = plan_matches(build_key, {"tensorrt": str(trt.__version__), "gpu": gpu_name(device)})
            if not ok:
                raise EngineError(f"cannot use {plan_path}: {reason}: {rebuild}")
        self._ctx = _Context(cuda, device)
        self._allocations: list = []
        self._closed = False
        try:
            with self._ctx:
                self._load(plan_path, name, max_batch, precision, recurrences)
        except BaseException:
            self._release()
            raise

    # Construction ----------------------------------------------------------------------------
    def _load(self, plan_path: Path, name: str, max_batch: int, precision: str, recurrences: tuple[Recurrence, ...]) -> None:
        trt, cuda = self._trt, self._cuda
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise EngineError(
                f"TensorRT {trt.__version__} cannot load {plan_path}: the plan was built by another TensorRT "
                f"version or for another GPU (plans only run where they were built). Rebuild it on this device: "
                + REBUILD_COMMAND.format(out=plan_path.parent)
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"TensorRT could not create an execution context for {plan_path} (out of GPU memory?)")

        inputs, outputs = [], []
        self._full_shape: dict[str, tuple[int, ...]] = {}
        fixed_batch = None
        for index in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in engine.get_tensor_shape(tensor))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tensor)))
            if not shape or any(d < 0 for d in shape[1:]):
                raise EngineError(f"{plan_path}: tensor {tensor} has shape {shape}; only the batch dimension may vary")
            if is_input:
                batch_max = self._profile_max(tensor, shape, plan_path, max_batch)
                if shape[0] >= 0 or self._profile_min(tensor) == batch_max:
                    fixed_batch = batch_max  # static batch (or a DLA plan pinned to one)
            spec = TensorSpec(tensor, shape[1:], dtype)
            (inputs if is_input else outputs).append(spec)
        super().__init__(name, inputs, outputs, max_batch, precision, recurrences)
        # A plan with a static batch runs every call at that batch; rows past `batch` are padding.
        self._fixed_batch = fixed_batch
        rows = fixed_batch or self.max_batch

        self._stream = cuda.Stream()
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, object] = {}
        self._row_bytes: dict[str, int] = {}
        for spec in (*inputs, *outputs):
            host = cuda.pagelocked_empty((rows, *spec.shape), spec.dtype)
            host[...] = 0
            self._host[spec.name] = host
            self._device[spec.name] = self._alloc(host.nbytes)
            self._row_bytes[spec.name] = host.nbytes // rows
            self._context.set_tensor_address(spec.name, int(self._device[spec.name]))
        self._bound_batch = 0
        self._bound_mode = "run"
        # One ping-pong pair of device buffers and one page-locked host copy per state (the base
        # class has checked that each pair's input and output agree in shape and type).
        self._state: dict[str, list] = {}
        self._state_host: dict[str, np.ndarray] = {}
        self._parity = 0
        for state in self.state_names:
            nbytes = self._host[state].nbytes
            self._state[state] = [self._alloc(nbytes), self._alloc(nbytes)]
            for buffer in self._state[state]:
                cuda.memset_d8_async(buffer, 0, nbytes, self._stream)
            self._state_host[state] = cuda.pagelocked_empty(self._host[state].shape, self.input_specs[state].dtype)
        self._stream.synchronize()

    def _profile_max(self, tensor: str, shape: tuple[int, ...], plan_path: Path, max_batch: int) -> int:
        if shape[0] >= 0:
            batch_max = shape[0]
        else:
            batch_max = int(self._engine.get_tensor_profile_shape(tensor, 0)[2][0])
        if max_batch > batch_max:
            raise EngineError(
                f"{plan_path} was built for batches up to {batch_max}, asked for {max_batch}; rebuild it with a larger "
                f"max batch or run fewer streams"
            )
        return batch_max

    def _profile_min(self, tensor: str) -> int:
        return int(self._engine.get_tensor_profile_shape(tensor, 0)[0][0])

    def _alloc(self, nbytes: int):
        allocation = self._cuda.mem_alloc(max(int(nbytes), 1))
        self._allocations.append(allocation)
        return allocation

    # Buffers ------------------------------------------------------------------------------------
    def input(self, name: str) -> np.ndarray:
        return self._host[name]

    def output(self, name: str) -> np.ndarray:
        return self._host[name]

    # Running ------------------------------------------------------------------------------------
    def run(self, batch: int) -> None:
        """Inputs (the state input included) from the host buffers, every output back to the host."""
        self._check_open()
        self._check_batch(batch)
        with self._ctx:
            if self._bound_mode != "run" and self.recurrences:
                self._bind_state(None)
            rows = self._set_batch(batch)
            for name in self.input_specs:
                self._upload(name, rows)
            self._execute()
            for name in self.output_specs:
                self._download(name, batch)
            self._stream.synchronize()

    def step(self, batch: int) -> None:
        """One recurrent step on rows [0, batch): state read from one device buffer, written to the other."""
        self._require_recurrent()
        self._check_batch(batch)
        produced = {pair.state_output for pair in self.recurrences}
        read, write = self._parity, 1 - self._parity
        with self._ctx:
            self._bind_state(read)
            rows = self._set_batch(batch)
            for name in self.input_specs:
                if name not in self._state:
                    self._upload(name, rows)
            self._execute()
            if batch < self.max_batch:
                # Streams outside the batch keep their state: carry their rows over, pair by pair.
                for state, buffers in self._state.items():
                    row = self._row_bytes[state]
                    offset = batch * row
                    self._cuda.memcpy_dtod_async(int(buffers[write]) + offset, int(buffers[read]) + offset,
                                                 (self.max_batch - batch) * row, self._stream)
            for name in self.output_specs:
                if name not in produced:
                    self._download(name, batch)
            self._stream.synchronize()
        self._parity = write

    def _set_batch(self, batch: int) -> int:
        rows = self._fixed_batch or batch
        if rows != self._bound_batch:
            for name, spec in self.input_specs.items():
                if not self._context.set_input_shape(name, (rows, *spec.shape)):
                    raise EngineError(f"{self.name}: TensorRT rejected input shape {(rows, *spec.shape)} for {name}")
            self._bound_batch = rows
        return rows

    def _bind_state(self, read: Optional[int]) -> None:
        """Point every pair's tensors at its ping-pong buffers (read = parity) or back at the plain ones (None)."""
        for pair in self.recurrences:
            state_in, state_out = pair.state_input, pair.state_output
            if read is None:
                self._context.set_tensor_address(state_in, int(self._device[state_in]))
                self._context.set_tensor_address(state_out, int(self._device[state_out]))
            else:
                buffers = self._state[state_in]
                self._context.set_tensor_address(state_in, int(buffers[read]))
                self._context.set_tensor_address(state_out, int(buffers[1 - read]))
        self._bound_mode = "run" if read is None else "step"

    def _upload(self, name: str, rows: int) -> None:
        self._cuda.memcpy_htod_async(self._device[name], self._host[name][:rows], self._stream)

    def _download(self, name: str, batch: int) -> None:
        self._cuda.memcpy_dtoh_async(self._host[name][:batch], self._device[name], self._stream)

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.handle):
            raise EngineError(f"{self.name}: TensorRT execution failed (see TensorRT's log)")

    # Recurrent state ----------------------------------------------------------------------------
    def _require_recurrent(self) -> None:
        super()._require_recurrent()
        self._check_open()

    def state(self) -> dict[str, np.ndarray]:
        """Host copies of the current states by input name, each [max_batch, *row_shape]."""
        self._require_recurrent()
        with self._ctx:
            for state, buffers in self._state.items():
                self._cuda.memcpy_dtoh_async(self._state_host[state], buffers[self._parity], self._stream)
            self._stream.synchronize()
        return {state: np.array(host[: self.max_batch], copy=True) for state, host in self._state_host.items()}

    def load_state(self, states: Mapping[str, np.ndarray]) -> None:
        arrays = self._checked_states(states)
        self._check_open()
        with self._ctx:
            for state, value in arrays.items():
                host = self._state_host[state]
                host[: self.max_batch] = value
                self._cuda.memcpy_htod_async(self._state[state][self._parity], host[: self.max_batch], self._stream)
            self._stream.synchronize()

    def reset_state(self, rows: Optional[list[int]] = None) -> None:
        """Zero every state of `rows` (all when None) on the device; all-zero bytes are 0.0 in IEEE floats."""
        self._require_recurrent()
        for index in rows or ():
            if not 0 <= int(index) < self.max_batch:
                raise EngineError(f"{self.name}: state row {index} outside 0..{self.max_batch - 1}")
        with self._ctx:
            for state, buffers in self._state.items():
                row, current = self._row_bytes[state], buffers[self._parity]
                if rows is None:
                    self._cuda.memset_d8_async(current, 0, row * self.max_batch, self._stream)
                else:
                    for index in rows:
                        self._cuda.memset_d8_async(int(current) + int(index) * row, 0, row, self._stream)
            self._stream.synchronize()

    # Lifecycle ----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"{self.name} is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is None or ctx.context is None:
            return
        with ctx:
            stream = getattr(self, "_stream", None)
            if stream is not None:
                stream.synchronize()
            # TensorRT objects before the memory they point into, then the buffers.
            for attr in ("_context", "_engine", "_runtime"):
                if hasattr(self, attr):
                    setattr(self, attr, None)
            for allocation in self._allocations:
                allocation.free()
            self._allocations.clear()
            self._stream = None
        ctx.release()
