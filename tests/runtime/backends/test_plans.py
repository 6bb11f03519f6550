"""TensorRT plans as a cache: a plan from another JetPack is rebuilt from its ONNX, or refused with the command."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.backends import _plan_from_onnx, default_precision
from runtime.backends.engine import EngineError
from runtime.backends.tensorrt import PlanBuildError, ensure_plans, plan_key, plan_matches, soc_model
from runtime.backends.tensorrt.build import _configure_dla, _load_timing_cache, _save_timing_cache
from runtime.files import sha256_file
from runtime.manifest import EngineFile, load_manifest, save_manifest

HERE = {"tensorrt": "10.3.0", "gpu": "Orin (sm_87)"}  # what this "Jetson" runs after the upgrade


@pytest.fixture()
def trt_engines(engines_copy):
    """The test engines plus a backbone plan that JetPack 5 (TensorRT 8.6) built."""
    manifest = load_manifest(engines_copy)
    onnx = manifest.find("backbone", "onnx", "fp32")
    plan = engines_copy / "backbone_fp16.plan"
    plan.write_bytes(b"plan built by TensorRT 8.6")
    entry = EngineFile(role="backbone", format="tensorrt", precision="fp16", file=plan.name, sha256=sha256_file(plan),
                       max_batch=4, extra={**plan_key(onnx.sha256, "fp16", "8.6.2", "Orin (sm_87)"), "onnx_file": onnx.file})
    save_manifest(dataclasses.replace(manifest, engines=manifest.engines + (entry,)), engines_copy)
    return engines_copy


class FakeBuilder:
    """Stands in for runtime.backends.tensorrt.build.build_plan (no TensorRT on CI): writes a plan, returns its key."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls = []
        self.fail = fail

    def __call__(self, onnx_path, plan_path, **options):
        self.calls.append((onnx_path, plan_path, options))
        if self.fail is not None:
            raise self.fail
        plan_path.write_bytes(b"plan built by TensorRT 10.3")
        return {"key": plan_key(sha256_file(onnx_path), options["precision"], HERE["tensorrt"], HERE["gpu"]), "seconds": 42.0}


def plan_entry(manifest):
    return manifest.find("backbone", "tensorrt", "fp16")


def test_a_plan_from_another_tensorrt_is_rebuilt_from_its_onnx_with_the_timing_cache(trt_engines, caplog):
    manifest = load_manifest(trt_engines)
    builder, statuses = FakeBuilder(), []
    caplog.set_level(logging.WARNING, logger="edge_run.plans")
    # when the runtime checks the plan it is about to load
    updated = ensure_plans(manifest, [plan_entry(manifest)], key=HERE, builder=builder, on_rebuild=statuses.append)
    # then it was rebuilt once from the ONNX the manifest names, for the same precision and batch, reusing timing.cache
    (onnx_path, plan_path, options), = builder.calls
    assert onnx_path.name == "backbone_fp32.onnx" and plan_path.name == "backbone_fp16.plan"
    assert options["precision"] == "fp16" and options["max_batch"] == 4 and options["timing_cache_path"] == trt_engines / "timing.cache"
    # and one log line says why
    why = [r.message for r in caplog.records if "rebuilding TensorRT plan" in r.message]
    assert len(why) == 1 and "TensorRT version '8.6.2', this is '10.3.0'" in why[0]
    assert statuses == ["rebuilding TensorRT plan backbone_fp16.plan"]
    # and the manifest on disk now describes the new plan (hash verified on load), so the next start uses it as is
    entry = plan_entry(load_manifest(trt_engines))
    assert entry.extra["tensorrt"] == "10.3.0" and entry.sha256 == sha256_file(trt_engines / "backbone_fp16.plan")
    assert plan_entry(updated) == entry
    again = FakeBuilder()
    assert ensure_plans(updated, [entry], key=HERE, builder=again) is updated and again.calls == []


def test_a_missing_plan_is_built_and_a_changed_onnx_is_a_reason_too(trt_engines):
    (trt_engines / "backbone_fp16.plan").unlink()
    manifest = load_manifest(trt_engines, verify_hashes=False)
    builder = FakeBuilder()
    ensure_plans(manifest, [plan_entry(manifest)], key=HERE, builder=builder)
    assert len(builder.calls) == 1
    stale = dataclasses.replace(plan_entry(manifest), extra={**plan_key("0" * 64, "fp16", "10.3.0", HERE["gpu"]),
                                                             "onnx_file": "backbone_fp32.onnx"})
    with pytest.raises(EngineError, match="another ONNX file"):
        ensure_plans(manifest, [stale], key=HERE, rebuild=False)


def test_a_stale_plan_that_must_not_be_rebuilt_is_refused_with_the_command(trt_engines):
    manifest = load_manifest(trt_engines)
    with pytest.raises(EngineError) as excinfo:
        ensure_plans(manifest, [plan_entry(manifest)], key=HERE, rebuild=False)
    assert "TensorRT version '8.6.2'" in str(excinfo.value) and f"edge-export --trt --out {trt_engines}" in str(excinfo.value)


def test_a_stale_plan_without_its_onnx_says_it_cannot_be_rebuilt_and_gives_the_command(trt_engines):
    manifest = load_manifest(trt_engines)
    (trt_engines / "backbone_fp32.onnx").unlink()
    with pytest.raises(EngineError) as excinfo:
        ensure_plans(manifest, [plan_entry(manifest)], key=HERE, builder=FakeBuilder())
    message = str(excinfo.value)
    assert "cannot be rebuilt" in message and "backbone_fp32.onnx" in message and "edge-export" in message


def test_a_failed_rebuild_says_so_and_gives_the_command(trt_engines):
    manifest = load_manifest(trt_engines)
    builder = FakeBuilder(fail=RuntimeError("TensorRT is not available (No module named 'tensorrt')"))
    with pytest.raises(EngineError) as excinfo:
        ensure_plans(manifest, [plan_entry(manifest)], key=HERE, builder=builder)
    assert "No module named 'tensorrt'" in str(excinfo.value) and "edge-export --trt --out" in str(excinfo.value)
    assert (trt_engines / "backbone_fp16.plan").read_bytes() == b"plan built by TensorRT 8.6"  # the old plan is untouched


def test_a_plan_build_error_is_an_engine_error_that_names_the_plan_and_the_command(trt_engines):
    # PlanBuildError is itself an EngineError; the plan cache must still say which plan and what to run
    manifest = load_manifest(trt_engines)
    builder = FakeBuilder(fail=PlanBuildError("TensorRT 10.3.0 failed to build a fp16 plan"))
    with pytest.raises(EngineError) as excinfo:
        ensure_plans(manifest, [plan_entry(manifest)], key=HERE, builder=builder)
    message = str(excinfo.value)
    assert "backbone_fp16.plan failed: TensorRT 10.3.0" in message and f"edge-export --trt --out {trt_engines}" in message


def test_onnx_backends_never_look_at_plans(trt_engines):
    manifest = load_manifest(trt_engines)
    assert ensure_plans(manifest, [manifest.find("backbone", "onnx", "fp32")], key=HERE, builder=FakeBuilder(fail=AssertionError())) is manifest


# -- the key: the Jetson module and the DLA core, and everything a rebuild needs -------------------------------

NANO = ("NVIDIA Jetson Orin Nano Developer Kit", "nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0", 7_622_000)
AGX64 = ("NVIDIA Jetson AGX Orin Developer Kit", "nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234\0", 64_335_836)


def device_tree(root: Path, board) -> Path:
    model, compatible, mem_kb = board
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\0")
    (root / "proc" / "device-tree" / "compatible").write_bytes(compatible.encode())
    (root / "proc" / "meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:        1000 kB\n")
    return root


def test_the_module_comes_from_the_device_tree_with_its_part_number_and_memory(tmp_path):
    assert soc_model(device_tree(tmp_path / "nano", NANO)) == "NVIDIA Jetson Orin Nano Developer Kit (p3767-0005, 8 GB)"
    assert soc_model(device_tree(tmp_path / "agx", AGX64)) == "NVIDIA Jetson AGX Orin Developer Kit (p3701-0005, 64 GB)"
    assert soc_model(tmp_path / "a-pc-without-device-tree") == ""


def test_a_dla_plan_copied_from_an_agx_orin_to_an_orin_nano_does_not_match(tmp_path):
    # every Orin reports the same GPU: only the module tells them apart
    agx, nano = soc_model(device_tree(tmp_path / "agx", AGX64)), soc_model(device_tree(tmp_path / "nano", NANO))
    built = plan_key("ab" * 32, "int8", "10.3.0.30", "Orin (sm_87)", agx, dla_core=0)
    ok, reason = plan_matches(built, {"tensorrt": "10.3.0.30", "gpu": "Orin (sm_87)", "soc": nano, "dla_core": 0})
    assert not ok and "Jetson module 'NVIDIA Jetson AGX Orin" in reason and "Orin Nano" in reason
    # and a GPU plan is not a DLA plan
    ok, reason = plan_matches(built, {"tensorrt": "10.3.0.30", "gpu": "Orin (sm_87)", "soc": agx, "dla_core": None})
    assert not ok and "DLA core 0, this is none (GPU)" in reason


def test_a_rebuild_builds_the_plan_as_it_was_built_dla_batch_range_and_workspace(trt_engines):
    manifest = load_manifest(trt_engines)
    entry = plan_entry(manifest)
    record = {"min_batch": 4, "opt_batch": 4, "max_batch": 4, "workspace_mb": 512, "dla_core": 1, "typing": "weak"}
    dla = dataclasses.replace(entry, extra={**entry.extra, "build": record})
    manifest = dataclasses.replace(manifest, engines=tuple(dla if e is entry else e for e in manifest.engines))
    builder = FakeBuilder()
    ensure_plans(manifest, [dla], key=HERE, builder=builder)
    (_, _, options), = builder.calls
    assert {k: options[k] for k in ("min_batch", "opt_batch", "max_batch", "workspace_mb", "dla_core")} == {
        "min_batch": 4, "opt_batch": 4, "max_batch": 4, "workspace_mb": 512, "dla_core": 1}


def test_a_plan_that_records_no_module_is_rebuilt_once_and_then_kept(trt_engines):
    # a plan exported before the key named the module: rebuilt at the next start, its new key recorded
    manifest = load_manifest(trt_engines)
    old = plan_entry(manifest)
    extra = {k: v for k, v in old.extra.items() if k not in ("soc", "dla_core")}
    extra.update(tensorrt=HERE["tensorrt"])
    manifest = dataclasses.replace(manifest, engines=tuple(dataclasses.replace(e, extra=extra) if e is old else e
                                                           for e in manifest.engines))
    here = {**HERE, "soc": "NVIDIA Jetson Orin Nano Developer Kit (p3767-0005, 8 GB)"}

    def builder(onnx_path, plan_path, **options):
        plan_path.write_bytes(b"new plan")
        return {"key": plan_key(sha256_file(onnx_path), options["precision"], here["tensorrt"], here["gpu"], here["soc"],
                                options["dla_core"]), "build": {"max_batch": options["max_batch"], "dla_core": options["dla_core"]}}

    updated = ensure_plans(manifest, [plan_entry(manifest)], key=here, builder=builder)
    assert plan_entry(updated).extra["soc"] == here["soc"] and plan_entry(updated).extra["build"]["max_batch"] == 4
    again = FakeBuilder()
    assert ensure_plans(updated, [plan_entry(updated)], key=here, builder=again) is updated and again.calls == []


def test_dla_on_a_module_without_dla_cores_is_a_clear_error():
    trt = SimpleNamespace(__version__="10.3.0.30", DeviceType=SimpleNamespace(DLA=1), BuilderFlag=SimpleNamespace(GPU_FALLBACK=1))
    nano_builder = SimpleNamespace(num_DLA_cores=0)
    with pytest.raises(PlanBuildError, match="this device has no DLA cores .*Orin Nano does not.*build without --dla-core"):
        _configure_dla(trt, nano_builder, SimpleNamespace(), 0, "int8", False, 1, 1, 8, [])
    with pytest.raises(PlanBuildError, match="DLA core 1 does not exist; this device has 1"):
        _configure_dla(trt, SimpleNamespace(num_DLA_cores=1), SimpleNamespace(), 1, "int8", False, 1, 1, 8, [])


# -- the timing cache: a refused one is replaced, not kept forever ---------------------------------------------------


class TimingCacheConfig:
    """Test double of IBuilderConfig's timing-cache calls: like TensorRT, `set_timing_cache` returns False for a cache
    made on another device (here: any non-empty one), and the cache it holds is what gets saved."""

    def __init__(self) -> None:
        self.attached = None

    def create_timing_cache(self, blob: bytes):
        return SimpleNamespace(blob=bytes(blob), serialize=lambda: b"tactics timed on this device")

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False  # a foreign cache must never be used
        if cache.blob:
            return False
        self.attached = cache
        return True

    def get_timing_cache(self):
        return self.attached


def test_a_timing_cache_from_another_device_is_replaced_by_a_fresh_one(tmp_path, caplog):
    stale = tmp_path / "timing.cache"
    stale.write_bytes(b"another board's tactics")
    config = TimingCacheConfig()
    caplog.set_level(logging.WARNING)
    # when the build loads it and TensorRT refuses it
    cache = _load_timing_cache(config, stale)
    # then the build times into a fresh cache, says so once, and saving it replaces the stale file
    assert config.attached is cache and cache.blob == b""
    assert ["another device" in r.getMessage() for r in caplog.records] == [True]
    _save_timing_cache(config, stale)
    assert stale.read_bytes() == b"tactics timed on this device"


# -- engines exported without --trt: the plans are built at start ------------------------------------------------------


def test_an_onnx_only_manifest_gets_its_plans_built_at_start_and_kept(engines_copy):
    manifest = load_manifest(engines_copy)
    assert default_precision(manifest, "tensorrt") == "int8"  # the plan TensorRT builds from the Q/DQ graph
    planned = _plan_from_onnx(manifest, "int8", manifest.window, "auto", 2)
    new = [e for e in planned.engines if e.format == "tensorrt"]
    assert [(e.role, e.precision, e.extra["onnx_file"]) for e in new] == [
        ("backbone", "int8", "backbone_int8.onnx"), ("gru_step", "fp32", "gru_step.onnx"),
        ("gru_sequence", "fp32", next(e.file for e in manifest.engines if e.role == "gru_sequence"))]
    builder = FakeBuilder()
    built = ensure_plans(planned, new, key=HERE, builder=builder)
    assert [call[2]["dla_core"] for call in builder.calls] == [None, None, None]  # on the GPU: DLA is edge-export's choice
    reloaded = load_manifest(engines_copy)  # recorded on disk (hashes verified): the next start loads them as they are
    assert {e.file for e in reloaded.engines if e.format == "tensorrt"} == {e.file for e in new}
    assert _plan_from_onnx(built, "int8", manifest.window, "auto", 2) == built
