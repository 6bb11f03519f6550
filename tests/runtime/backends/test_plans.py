"""TensorRT plans as a cache: a plan from another JetPack is rebuilt from its ONNX, or refused with the command."""
from __future__ import annotations

import dataclasses
import logging

import pytest

from runtime.backends.engine import EngineError
from runtime.backends.tensorrt import PlanBuildError, ensure_plans, plan_key
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
