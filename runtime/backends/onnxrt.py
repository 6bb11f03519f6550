"""ONNX Runtime backend: one InferenceSession per engine, I/O bound to preallocated buffers.

The per-call path is `session.run_with_iobinding(binding)` on a binding prepared once per
batch size, so a frame costs no Python-side allocation. On the CPU provider inputs and
outputs are numpy buffers that onnxruntime reads and writes in place. On GPU providers
(CUDA, TensorRT EP) each recurrent state lives in a pair of device OrtValues swapped
between steps, so it never crosses to the host unless asked for.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import numpy as np
import onnxruntime

from runtime.backends.engine import Engine, EngineError, Recurrence, TensorSpec

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "trt-ep": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def available_providers() -> list[str]:
    return list(onnxruntime.get_available_providers())


def auto_backend() -> str:
    """TensorRT EP, then CUDA EP, then CPU: the first that this onnxruntime build offers."""
    have = set(available_providers())
    if "TensorrtExecutionProvider" in have:
        return "trt-ep"
    if "CUDAExecutionProvider" in have:
        return "cuda"
    return "cpu"


def default_threads(max_batch: int = 1) -> int:
    """Intra-op threads for an engine that runs batches of up to `max_batch` rows (streams).

    One stream: half the cores (at most 4), the other half decode and preprocess: for one
    small frame, waking another thread for each of ~100 small operators costs more than it
    saves. Several streams: every core (at most 4), where batches make the split pay
    (docs/runtime-measurements.md). Pass `threads` (`edge-run --threads`) to choose otherwise.
    """
    cores = os.cpu_count() or 1
    return max(1, min(4, cores if max_batch > 1 else cores // 2))


def session_options(threads: Optional[int] = None, max_batch: int = 1):
    """Options for a streaming loop: one frame at a time, latency over throughput."""
    ort = onnxruntime
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or default_threads(max_batch)
    options.inter_op_num_threads = 1
    # Spinning worker threads steal the cores that capture and decode need between frames.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OrtEngine(Engine):
    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str,
        name: str,
        max_batch: int,
        precision: str,
        backend: str = "cpu",
        recurrences: tuple[Recurrence, ...] = (),
        threads: Optional[int] = None,
        hint: str = "",
        resident_state: Optional[bool] = None,
    ) -> None:
        """`hint` ends the message of an error that a rebuilt model file would cure (the rebuild command).

        `resident_state`: keep the recurrent states in ping-pong OrtValues on the provider's
        device (default: on GPU providers) rather than in bound host buffers. On the CPU it
        runs the same path with CPU OrtValues, which is how it is tested where there is no GPU.
        """
        ort = onnxruntime
        suffix = f"; {hint}" if hint else ""
        if backend not in PROVIDERS:
            raise EngineError(f"unknown onnxruntime backend {backend!r}; choose from {sorted(PROVIDERS)}")
        wanted = PROVIDERS[backend][0]
        have = available_providers()
        if wanted not in have:
            raise EngineError(
                f"backend {backend!r} needs onnxruntime's {wanted}, which this install does not have "
                f"(available: {', '.join(have)}). Use --backend cpu, or install onnxruntime-gpu "
                f"(pip install 'edge-run[gpu]') on a machine with CUDA."
            )
        providers = [p for p in PROVIDERS[backend] if p in have]
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=session_options(threads, max_batch), providers=providers)
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"cannot load {model_path} with onnxruntime: {first_line}{suffix}") from exc
        self.device = "cpu" if backend == "cpu" else "cuda"
        self.resident_state = self.device != "cpu" if resident_state is None else bool(resident_state)
        inputs = [_spec(arg, suffix) for arg in self.session.get_inputs()]
        outputs = [_spec(arg, suffix) for arg in self.session.get_outputs()]
        try:
            super().__init__(name, inputs, outputs, max_batch, precision, recurrences)
        except EngineError as exc:
            raise EngineError(f"{model_path}: {exc}{suffix}") from None
        self._inputs = {s.name: np.zeros((max_batch, *s.shape), s.dtype) for s in inputs}
        self._outputs = {s.name: np.zeros((max_batch, *s.shape), s.dtype) for s in outputs}
        self._bindings: dict[tuple[int, int], object] = {}
        self._parity = 0
        if self.recurrences:
            self._init_state()

    # Buffers ------------------------------------------------------------------------------
    def input(self, name: str) -> np.ndarray:
        return self._inputs[name]

    def output(self, name: str) -> np.ndarray:
        return self._outputs[name]

    def run(self, batch: int) -> None:
        self._check_batch(batch)
        self.session.run_with_iobinding(self._binding(batch, 0))

    # Recurrent state ----------------------------------------------------------------------
    # Rows at or beyond the stepped batch keep their values: only the streams in the batch advance.
    # Every pair has its own two buffers; one parity, shared by all pairs, says which is read.
    def _init_state(self) -> None:
        shapes = self.state_shapes()
        dtypes = {name: self.input_specs[name].dtype for name in shapes}
        # CPU: two host buffers per state bound in place; step k reads one and writes the other.
        self._state_host = {name: [np.zeros(shape, dtypes[name]) for _ in range(2)] for name, shape in shapes.items()}
        # GPU: device OrtValues per state and batch size, swapped the same way; the host mirror is
        # refreshed only when the state is read (checkpoint, reset) or the batch size changes.
        self._mirror = {name: np.zeros(shape, dtypes[name]) for name, shape in shapes.items()}
        self._state_device: dict[tuple[str, int, int], object] = {}
        self._device_rows = 0  # rows valid on the device; 0 = the mirror is authoritative

    def step(self, batch: int) -> None:
        self._require_recurrent()
        self._check_batch(batch)
        read = self._parity
        if self.resident_state and self._device_rows != batch:
            self._upload_state(batch)
        self.session.run_with_iobinding(self._binding(batch, 1 + read))
        if not self.resident_state and batch < self.max_batch:
            for buffers in self._state_host.values():
                buffers[1 - read][batch:] = buffers[read][batch:]
        self._parity = 1 - read

    def state(self) -> dict[str, np.ndarray]:
        self._require_recurrent()
        if not self.resident_state:
            return {name: buffers[self._parity] for name, buffers in self._state_host.items()}
        if self._device_rows:
            rows = self._device_rows
            for name, mirror in self._mirror.items():
                mirror[:rows] = self._state_device[(name, rows, self._parity)].numpy()
        return dict(self._mirror)

    def load_state(self, states: Mapping[str, np.ndarray]) -> None:
        arrays = self._checked_states(states)
        if not self.resident_state:
            for name, value in arrays.items():
                self._state_host[name][self._parity][...] = value
        else:
            for name, value in arrays.items():
                self._mirror[name][...] = value
            self._device_rows = 0

    def _upload_state(self, batch: int) -> None:
        mirrors = self.state()
        ort = onnxruntime
        for name, mirror in mirrors.items():
            for parity in (0, 1):
                if (name, batch, parity) not in self._state_device:
                    shape = [batch, *mirror.shape[1:]]
                    self._state_device[(name, batch, parity)] = ort.OrtValue.ortvalue_from_shape_and_type(shape, mirror.dtype, self.device, 0)
            self._state_device[(name, batch, self._parity)].update_inplace(np.ascontiguousarray(mirror[:batch]))
        self._device_rows = batch

    # Bindings -----------------------------------------------------------------------------
    def _binding(self, batch: int, kind: int):
        """kind 0: plain run (states from the host buffers); 1/2: recurrent step reading parity kind-1."""
        key = (batch, kind)
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._make_binding(batch, kind)
            self._bindings[key] = binding
        return binding

    def _make_binding(self, batch: int, kind: int):
        binding = self.session.io_binding()
        # state output -> the state input it feeds; none on a plain run, where states are host inputs
        fed = {pair.state_output: pair.state_input for pair in self.recurrences} if kind else {}
        read = max(kind - 1, 0)
        states = set(fed.values())
        for name, buffer in self._inputs.items():
            if name in states:
                self._bind_state(binding, name, name, read, batch, is_input=True)
            else:
                _bind_host(binding, name, buffer[:batch], is_input=True)
        for name, buffer in self._outputs.items():
            if name in fed:
                self._bind_state(binding, name, fed[name], 1 - read, batch, is_input=False)
            else:
                _bind_host(binding, name, buffer[:batch], is_input=False)
        return binding

    def _bind_state(self, binding, tensor: str, state: str, parity: int, batch: int, is_input: bool) -> None:
        """Bind `tensor` to buffer `parity` of the pair whose state input is `state`."""
        if not self.resident_state:
            _bind_host(binding, tensor, self._state_host[state][parity][:batch], is_input)
            return
        value = self._state_device[(state, batch, parity)]
        (binding.bind_ortvalue_input if is_input else binding.bind_ortvalue_output)(tensor, value)

    def close(self) -> None:
        self._bindings.clear()
        self.session = None


def _bind_host(binding, name: str, view: np.ndarray, is_input: bool) -> None:
    assert view.flags.c_contiguous
    bind = binding.bind_input if is_input else binding.bind_output
    bind(name, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def _spec(arg, suffix: str = "") -> TensorSpec:
    if arg.type not in _ORT_TYPES:
        raise EngineError(f"tensor {arg.name} has unsupported type {arg.type}{suffix}")
    dims = arg.shape[1:]
    if not arg.shape or any(not isinstance(d, int) or d <= 0 for d in dims):
        raise EngineError(f"tensor {arg.name} has a non-fixed shape {arg.shape}; only the batch dimension may vary{suffix}")
    return TensorSpec(arg.name, tuple(dims), np.dtype(_ORT_TYPES[arg.type]))
