"""The native TensorRT engine's own logic, against the ONNX Runtime engine's results, without a GPU.

TEST DOUBLE: `DeviceDouble` stands in for pycuda's device-memory layer (allocations, page-locked
host arrays, async copies and memsets, streams, events, the context) and `PlanDouble` for a
deserialized TensorRT plan, which it executes with onnxruntime on the bytes at the addresses
the engine bound. The double checks every copy against the bounds of its allocations, that a
context is current, and that nothing is used after it was freed; it counts the transfers to
and from the host per allocation. Only the names the real bindings have are used (the
conformance tests check the engine against the real ones; `test_the_doubles_only_offer_what_
the_real_bindings_have` holds the doubles to them). What the doubles cannot show: TensorRT's
numerics, timings and the real driver (docs/runtime-measurements.md: on-box acceptance).
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.graphs.graph import GraphBuilder
from export.graphs.gru import build_gru_step, init_gru_weights
from export.graphs.head import build_head_step, init_head_weights
from runtime.backends.engine import EngineError, Recurrence
from runtime.backends.onnxrt import OrtEngine
from runtime.backends.tensorrt import TrtEngine, plan_key
from runtime.manifest import state_pairs

F, H, C = 8, 16, 3
GRU = (Recurrence("h", "h_next"),)


# -- TEST DOUBLE of the device-memory layer (pycuda.driver) -----------------------------------------------------


class DoubleError(AssertionError):
    """A misuse of the device a real GPU would punish with corruption or a crash."""


class DeviceAllocation:
    def __init__(self, device: "DeviceDouble", nbytes: int) -> None:
        self.device, self.size = device, nbytes
        self.address = device.next_address
        device.next_address += nbytes + 4096  # a gap: an overrun lands in no allocation
        self.memory = np.zeros(nbytes, np.uint8)
        self.freed = False

    def __int__(self) -> int:
        return self.address

    __index__ = __int__

    def free(self) -> None:
        self.freed = True
        self.device.frees += 1


class HostAllocation(bytearray):
    """What pagelocked_empty's array has as `.base`; `free()` releases the page-locked memory."""

    def free(self) -> None:
        self.freed = True
        DeviceDouble.current.host_frees += 1


class DeviceDouble:
    """TEST DOUBLE of pycuda.driver: bounds-checked device memory and counted host<->device transfers."""

    current: "DeviceDouble"

    def __init__(self) -> None:
        DeviceDouble.current = self
        self.next_address = 1 << 20
        self.allocations: list[DeviceAllocation] = []
        self.transfers: Counter = Counter()  # ("htod" | "dtoh", allocation address) -> count
        self.frees = self.host_frees = 0
        self.pushed = 0
        self.pinned: list[np.ndarray] = []
        double = self

        class Device:
            def __init__(self, index: int) -> None:
                self.index = index

            @staticmethod
            def count() -> int:
                return 1

            def name(self) -> str:
                return "Orin"

            def compute_capability(self) -> tuple[int, int]:
                return (8, 7)

            def retain_primary_context(self):
                return Context()

        class Context:
            def push(self) -> None:
                double.pushed += 1

            @staticmethod
            def pop() -> None:
                double.pushed -= 1

            def detach(self) -> None:
                pass

        class Stream:
            handle = 7

            def synchronize(self) -> None:
                double.require_context()

        class Event:
            def record(self, stream) -> None:
                double.require_context()

            def synchronize(self) -> None:
                double.require_context()

        self.Device, self.Context, self.Stream, self.Event = Device, Context, Stream, Event

    # pycuda.driver's functions -------------------------------------------------------------------
    def init(self) -> None:
        pass

    def mem_alloc(self, nbytes: int) -> DeviceAllocation:
        allocation = DeviceAllocation(self, int(nbytes))
        self.allocations.append(allocation)
        return allocation

    def pagelocked_empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        backing = HostAllocation(int(np.prod(shape)) * dtype.itemsize)
        array = np.ndarray(shape, dtype, buffer=backing)
        self.pinned.append(array)
        return array

    def memcpy_htod_async(self, dest, src: np.ndarray, stream) -> None:
        view = self.view(dest, src.nbytes)
        self._check_host(src)
        view[:] = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        self.transfers["htod", self.owner(dest).address] += 1

    def memcpy_dtoh_async(self, dest: np.ndarray, src, stream) -> None:
        self._check_host(dest)
        flat = dest.reshape(-1).view(np.uint8)
        flat[:] = self.view(src, dest.nbytes)
        self.transfers["dtoh", self.owner(src).address] += 1

    def memcpy_dtod_async(self, dest, src, size: int, stream) -> None:
        self.view(dest, size)[:] = self.view(src, size).copy()
        self.transfers["dtod", self.owner(dest).address] += 1

    def memset_d8_async(self, dest, value: int, size: int, stream) -> None:
        self.view(dest, size)[:] = value

    # checks ------------------------------------------------------------------------------------------
    def require_context(self) -> None:
        if self.pushed <= 0:
            raise DoubleError("a CUDA call with no context current")

    def owner(self, address) -> DeviceAllocation:
        address = int(address)
        for allocation in self.allocations:
            if allocation.address <= address < allocation.address + allocation.size:
                return allocation
        raise DoubleError(f"address {address:#x} is in no allocation")

    def view(self, address, nbytes: int) -> np.ndarray:
        self.require_context()
        allocation = self.owner(address)
        if allocation.freed:
            raise DoubleError(f"allocation at {allocation.address:#x} used after free")
        offset = int(address) - allocation.address
        if offset + int(nbytes) > allocation.size:
            raise DoubleError(f"{nbytes} bytes at offset {offset} overrun an allocation of {allocation.size}")
        return allocation.memory[offset: offset + int(nbytes)]

    @staticmethod
    def _check_host(array: np.ndarray) -> None:
        base = array.base
        while base is not None and not isinstance(base, HostAllocation):
            base = getattr(base, "base", None)
        if base is None:
            raise DoubleError("an async copy from pageable memory (TensorRT's copies need page-locked host buffers)")
        if getattr(base, "freed", False):
            raise DoubleError("a page-locked host buffer used after free")

    def host_to_device_of(self, allocation_address: int) -> int:
        return self.transfers["htod", allocation_address] + self.transfers["dtoh", allocation_address]


# -- TEST DOUBLE of a deserialized plan: runs the ONNX model with onnxruntime at the bound addresses ---------------


class PlanDouble:
    """The `tensorrt` names TrtEngine uses, with a "plan" that is JSON naming an ONNX file and its batch profile."""

    def __init__(self, device: DeviceDouble) -> None:
        self.device = device
        self.runtimes: list = []
        double = self

        class Logger:
            ERROR = 1

            def __init__(self, severity) -> None:
                pass

        class Runtime:
            def __init__(self, logger) -> None:
                self.DLA_core = -1
                double.runtimes.append(self)

            def deserialize_cuda_engine(self, data: bytes):
                return Engine(json.loads(data))

        class Engine:
            def __init__(self, plan: dict) -> None:
                self.session = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
                self.fixed = plan.get("fixed_batch")
                self.profile = (plan.get("min_batch", 1), plan["max_batch"])
                self.io = [(a, True) for a in self.session.get_inputs()] + [(a, False) for a in self.session.get_outputs()]
                self.num_io_tensors = len(self.io)

            def get_tensor_name(self, index: int) -> str:
                return self.io[index][0].name

            def _arg(self, name: str):
                return next((arg, is_input) for arg, is_input in self.io if arg.name == name)

            def get_tensor_mode(self, name: str):
                return TensorIOMode.INPUT if self._arg(name)[1] else TensorIOMode.OUTPUT

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return (self.fixed or -1, *self._arg(name)[0].shape[1:])

            def get_tensor_dtype(self, name: str):
                return "float32"

            def get_tensor_profile_shape(self, name: str, profile: int):
                rest = tuple(self._arg(name)[0].shape[1:])
                low, high = self.profile
                return ((low, *rest), (high, *rest), (high, *rest))

            def create_execution_context(self):
                return ExecutionContext(self)

        class ExecutionContext:
            def __init__(self, engine) -> None:
                self.engine, self.addresses, self.shapes = engine, {}, {}

            def set_tensor_address(self, name: str, address: int) -> None:
                self.addresses[name] = int(address)

            def set_input_shape(self, name: str, shape) -> bool:
                low, high = self.engine.profile
                if self.engine.fixed and shape[0] != self.engine.fixed or not low <= shape[0] <= high:
                    return False
                self.shapes[name] = tuple(shape)
                return True

            def execute_async_v3(self, stream_handle: int) -> bool:
                rows = {shape[0] for shape in self.shapes.values()}
                assert len(rows) == 1, f"inputs bound with different batches {self.shapes}"
                batch = rows.pop()
                feeds = {}
                for arg, is_input in self.engine.io:
                    if is_input:
                        shape = self.shapes[arg.name]
                        feeds[arg.name] = double.device.view(self.addresses[arg.name], 4 * int(np.prod(shape))).view(np.float32).reshape(shape)
                outputs = self.engine.session.run(None, {k: v.copy() for k, v in feeds.items()})
                for (arg, _), value in zip((io for io in self.engine.io if not io[1]), outputs):
                    assert value.shape[0] == batch
                    double.device.view(self.addresses[arg.name], value.nbytes)[:] = np.ascontiguousarray(value, np.float32).view(np.uint8).reshape(-1)
                return True

        TensorIOMode = SimpleNamespace(INPUT="input", OUTPUT="output")
        self.__version__ = "10.3.0.30"
        self.Logger, self.Runtime, self.TensorIOMode = Logger, Runtime, TensorIOMode

    @staticmethod
    def nptype(dtype) -> type:
        return np.float32


@pytest.fixture()
def doubles(monkeypatch):
    """TEST DOUBLES installed as `tensorrt` and `pycuda.driver` for this test only."""
    device = DeviceDouble()
    plans = PlanDouble(device)
    monkeypatch.setitem(sys.modules, "tensorrt", plans)
    monkeypatch.setitem(sys.modules, "pycuda", SimpleNamespace(driver=device))
    monkeypatch.setitem(sys.modules, "pycuda.driver", device)
    return SimpleNamespace(device=device, plans=plans)


def write_plan(folder: Path, onnx_model: onnx.ModelProto, name: str, max_batch: int, fixed_batch=None) -> Path:
    onnx_path = folder / f"{name}.onnx"
    onnx.save(onnx_model, onnx_path)
    plan = folder / f"{name}.plan"
    plan.write_text(json.dumps({"onnx": str(onnx_path), "max_batch": max_batch, "fixed_batch": fixed_batch,
                                "min_batch": fixed_batch or 1}))
    return plan


@pytest.fixture()
def gru(tmp_path):
    model = build_gru_step(init_gru_weights(F, H, C, seed=0))
    return model, tmp_path


def _steps(engine, xs, batches):
    logits = []
    for x, batch in zip(xs, batches):
        engine.input("x")[:batch] = x[:batch]
        engine.step(batch)
        logits.append(engine.output("logits")[:batch].copy())
    return logits


# -- the tests ------------------------------------------------------------------------------------------------------


def test_recurrent_steps_match_onnxruntime_and_the_state_never_crosses_to_the_host(doubles, gru):
    model, folder = gru
    plan = write_plan(folder, model, "gru_step", max_batch=3)
    xs = np.random.default_rng(0).standard_normal((7, 3, F)).astype(np.float32)
    batches = [3, 3, 2, 1, 3, 2, 3]  # streams sit out and come back: their rows must keep their state
    with OrtEngine(str(folder / "gru_step.onnx"), "gru", 3, "fp32", recurrences=GRU) as reference, \
            TrtEngine(str(plan), "gru", max_batch=3, precision="fp32", recurrences=GRU) as engine:
        before = Counter(doubles.device.transfers)
        got, expected = _steps(engine, xs, batches), _steps(reference, xs, batches)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        # during the seven steps only x went up and logits came down: the state stayed on the device, carried over
        # for the streams outside the batch by device-to-device copies
        steps = doubles.device.transfers - before
        host = Counter(kind for (kind, _address) in steps.elements() if kind != "dtod")
        assert host == {"htod": 7, "dtoh": 7} and len({address for (kind, address) in steps if kind != "dtod"}) == 2
        assert sum(count for (kind, _address), count in steps.items() if kind == "dtod") == batches.count(2) + batches.count(1)
        np.testing.assert_allclose(engine.state()["h"], reference.state()["h"], rtol=1e-5, atol=1e-6)


def test_reset_and_load_of_the_state_match_onnxruntime(doubles, gru):
    model, folder = gru
    plan = write_plan(folder, model, "gru_step", max_batch=3)
    xs = np.random.default_rng(1).standard_normal((3, 3, F)).astype(np.float32)
    with OrtEngine(str(folder / "gru_step.onnx"), "gru", 3, "fp32", recurrences=GRU) as reference, \
            TrtEngine(str(plan), "gru", max_batch=3, precision="fp32", recurrences=GRU) as engine:
        _steps(engine, xs[:2], [3, 3]), _steps(reference, xs[:2], [3, 3])
        engine.reset_state([1])
        reference.reset_state([1])
        np.testing.assert_allclose(engine.state()["h"], reference.state()["h"], rtol=1e-5, atol=1e-6)
        assert not engine.state()["h"][1].any() and engine.state()["h"][0].any()
        loaded = {"h": np.random.default_rng(2).standard_normal((3, H)).astype(np.float32)}
        engine.load_state(loaded)
        reference.load_state(loaded)
        for a, b in zip(_steps(engine, xs[2:], [3]), _steps(reference, xs[2:], [3])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        with pytest.raises(EngineError, match="state names do not match"):
            engine.load_state({"c": loaded["h"]})


def test_a_two_layer_lstm_keeps_one_ping_pong_pair_per_state_by_name_in_any_declared_order(doubles, tmp_path):
    pairs = tuple(Recurrence(i, o) for i, o in state_pairs("lstm", 2).items())  # h, c, h_l1, c_l1
    scrambled = (pairs[3], pairs[0], pairs[2], pairs[1])
    plan = write_plan(tmp_path, build_head_step(init_head_weights("lstm", 2, F, H, C, seed=3)), "lstm2_step", max_batch=3)
    xs = np.random.default_rng(4).standard_normal((6, 3, F)).astype(np.float32)
    batches = [3, 2, 3, 1, 3, 3]
    with OrtEngine(str(tmp_path / "lstm2_step.onnx"), "lstm2", 3, "fp32", recurrences=pairs) as reference, \
            TrtEngine(str(plan), "lstm2", max_batch=3, precision="fp32", recurrences=scrambled) as engine:
        before = Counter(doubles.device.transfers)
        for a, b in zip(_steps(engine, xs, batches), _steps(reference, xs, batches)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        # four states, each carried on the device: only x went up and logits came down per step
        steps = doubles.device.transfers - before
        assert Counter(kind for (kind, _address) in steps.elements() if kind != "dtod") == {"htod": 6, "dtoh": 6}
        got, want = engine.state(), reference.state()
        assert set(got) == {"h", "c", "h_l1", "c_l1"}
        for name in want:  # by name: a state fed back into another's input would differ here
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
        assert not np.allclose(got["h"], got["c"]) and not np.allclose(got["h"], got["h_l1"])


def _tiny_backbone(size: int = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    g = GraphBuilder("tiny")
    x = g.input("image", ["batch", 3, size, size])
    w = g.initializer("w", rng.standard_normal((F, 3, 3, 3)) * 0.3)
    y = g.node("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.node("Flatten", [g.node("GlobalAveragePool", [g.node("HardSwish", [y])])], axis=1)
    g.output(y, "features", ["batch", F])
    return g.model()


def test_a_fixed_batch_dla_plan_runs_smaller_batches_padded_and_is_pinned_to_its_core(doubles, tmp_path):
    # given a DLA plan: static batch 4 (DLA has no dynamic shapes), built for DLA core 1 on this module
    plan = write_plan(tmp_path, _tiny_backbone(), "backbone", max_batch=4, fixed_batch=4)
    key = plan_key("ab" * 32, "int8", "10.3.0.30", "Orin (sm_87)", "", dla_core=1)
    images = np.random.default_rng(3).standard_normal((4, 3, 8, 8)).astype(np.float32)
    reference = ort.InferenceSession(str(tmp_path / "backbone.onnx"), providers=["CPUExecutionProvider"])
    with TrtEngine(str(plan), "backbone", max_batch=2, precision="int8", build_key=key) as engine:
        # then the runtime loads it on core 1
        assert [r.DLA_core for r in doubles.plans.runtimes] == [1]
        for batch in (1, 2):
            engine.input("image")[:batch] = images[:batch]
            engine.run(batch)
            np.testing.assert_allclose(engine.output("features")[:batch], reference.run(None, {"image": images[:batch]})[0],
                                       rtol=1e-5, atol=1e-6)
    # and a GPU plan gets no DLA core
    with TrtEngine(str(plan), "backbone", max_batch=2, precision="int8"):
        assert doubles.plans.runtimes[-1].DLA_core == -1


def test_submitted_batches_use_alternate_input_buffers_and_give_onnxruntimes_features(doubles, tmp_path):
    plan = write_plan(tmp_path, _tiny_backbone(), "backbone", max_batch=2)
    images = np.random.default_rng(4).standard_normal((3, 2, 3, 8, 8)).astype(np.float32)
    reference = ort.InferenceSession(str(tmp_path / "backbone.onnx"), providers=["CPUExecutionProvider"])
    with TrtEngine(str(plan), "backbone", max_batch=2, precision="fp16") as engine:
        seen = []
        for batch_images in images:
            buffer = engine.input("image")
            seen.append(buffer.ctypes.data)
            buffer[:2] = batch_images
            engine.submit(2)
            # while it runs, the next batch is written into the other buffer, never the one being copied
            assert engine.input("image").ctypes.data != buffer.ctypes.data
            engine.collect()
            np.testing.assert_allclose(engine.output("features")[:2], reference.run(None, {"image": batch_images})[0],
                                       rtol=1e-5, atol=1e-6)
        assert len(set(seen)) == 2 and seen[0] == seen[2]


def test_close_frees_every_device_and_page_locked_buffer_and_the_engine_refuses_to_run(doubles, gru):
    model, folder = gru
    plan = write_plan(folder, model, "gru_step", max_batch=2)
    engine = TrtEngine(str(plan), "gru", max_batch=2, precision="fp32", recurrences=GRU)
    allocated, pinned = len(doubles.device.allocations), len(doubles.device.pinned)
    engine.close()
    assert doubles.device.frees == allocated and doubles.device.host_frees == pinned
    with pytest.raises(EngineError, match="closed"):
        engine.step(1)
    engine.close()  # twice is harmless
    assert doubles.device.frees == allocated


def test_the_doubles_only_offer_what_the_real_bindings_have(doubles):
    # the double is held to the real names (when the conformance references are here): a double that grew
    # a method TensorRT lacks would let the engine use it unnoticed
    tb = pytest.importorskip("trt_bindings")
    if tb.cached_pycuda() is None:
        pytest.skip(f"pycuda's source is not cached; {tb.DOWNLOAD_COMMAND}")
    pycuda = tb.pycuda_surface(tb.cached_pycuda())
    offered = [name for name in dir(doubles.device) if not name.startswith("_") and callable(getattr(doubles.device, name))
               and name[0].islower() and name not in ("require_context", "owner", "view", "host_to_device_of")]
    assert [name for name in offered if name not in pycuda["module"]] == []
    for cls in ("Device", "Context", "Stream", "Event"):
        members = [m for m in vars(getattr(doubles.device, cls)) if not m.startswith("_")]
        assert [m for m in members if m not in pycuda["classes"][cls]] == [], cls
