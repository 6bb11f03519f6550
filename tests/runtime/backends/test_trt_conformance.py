"""The TensorRT code against the real bindings of TensorRT 10.3 (JetPack 6) and the newest 11.x, and pycuda's source.

No GPU: the real `tensorrt` extension imports against a stub libnvinfer (tests/trt_bindings.py).
Every tensorrt and pycuda name the project's source uses (harvested with ast, with the class
each is looked up on) must exist in each release, be called with arguments one of its
signatures takes, and be settable where it is assigned; a name a release removed may only
be reached behind a hasattr guard. The harvest and the check are shown to catch a removed
name, one by one. The real bindings then run the project's plan builds up to the point
that needs a GPU (creating a Builder).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import trt_bindings as tb
from helpers import REPO

VERSIONS = tb.TENSORRT_VERSIONS
JETPACK6 = VERSIONS[0]


def _missing_reference(what: str) -> None:
    message = f"{what}; get it with: {tb.DOWNLOAD_COMMAND}"
    if os.environ.get("CI"):
        pytest.fail(f"CI must test against the real bindings: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def stubbed(tmp_path_factory) -> dict[str, object]:
    """{version: folder holding the real bindings with stub TensorRT libraries}, built once per session."""
    for tool in ("gcc", "nm", "readelf"):
        if shutil.which(tool) is None:
            _missing_reference(f"{tool} is not installed (the stub libnvinfer is built with gcc, from nm's listing)")
    folders = {}
    root = tmp_path_factory.mktemp("trt-bindings")
    for version in VERSIONS:
        if tb.cached_wheel(version) is None:
            _missing_reference(f"no tensorrt-cu12-bindings {version} wheel for this Python in {tb.CACHE}")
        folders[version] = tb.install_stubbed(version, root)
    return folders


@pytest.fixture(scope="session")
def surfaces(stubbed) -> dict[str, tb.Surface]:
    return {version: tb.Surface.of_tensorrt(tb.tensorrt_surface(folder)) for version, folder in stubbed.items()}


@pytest.fixture(scope="session")
def pycuda() -> tb.Surface:
    sdist = tb.cached_pycuda()
    if sdist is None:
        _missing_reference(f"no pycuda {tb.PYCUDA_VERSION} sdist in {tb.CACHE}")
    return tb.Surface.of_pycuda(tb.pycuda_surface(sdist))


@pytest.fixture(scope="session")
def uses(surfaces, pycuda) -> dict[str, list[tb.Use]]:
    return {version: tb.harvest({"tensorrt": surface, "pycuda": pycuda}) for version, surface in surfaces.items()}


def _distinct(uses: list[tb.Use]) -> dict[tuple, tb.Use]:
    return {(u.library, u.owner, u.name): u for u in uses}


# -- the references are the real ones ------------------------------------------------------------------


def test_the_real_bindings_import_without_tensorrt_or_a_gpu(surfaces):
    assert [surfaces[v].module["__version__"]["kind"] for v in VERSIONS] == ["value", "value"]
    # the two releases differ where the project must care: 11 removed the weak-typing precision flags
    assert "FP16" in surfaces[JETPACK6].classes["BuilderFlag"] and "INT8" in surfaces[JETPACK6].classes["BuilderFlag"]
    assert "FP16" not in surfaces[VERSIONS[-1]].classes["BuilderFlag"] and "INT8" not in surfaces[VERSIONS[-1]].classes["BuilderFlag"]


def test_the_harvest_finds_the_tensorrt_and_pycuda_code_in_every_module_that_has_some(uses):
    # a harvest that lost track of a type would silently check nothing: each module's calls are found
    found = {u.where.split(":")[0] for u in uses[JETPACK6]}
    for module in ("runtime/backends/tensorrt/build.py", "runtime/backends/tensorrt/runner.py", "runtime/backends/tensorrt/keys.py",
                   "runtime/backends/resolve.py"):
        assert module in found
    labels = {u.label() for u in uses[JETPACK6]}
    for name in ("tensorrt.IExecutionContext.execute_async_v3", "tensorrt.IBuilderConfig.set_timing_cache", "tensorrt.Runtime.DLA_core",
                 "tensorrt.IBuilderConfig.DLA_core", "pycuda.memcpy_dtod_async", "pycuda.Device.retain_primary_context"):
        assert name in labels


# -- every used name exists, fits its signature, and what 11 removed is guarded ----------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_tensorrt_name_the_project_uses_exists_with_a_fitting_signature(version, uses, surfaces):
    assert tb.problems(uses[version], surfaces[version]) == []


def test_every_pycuda_name_the_project_uses_exists_in_pycudas_wrapper_source(uses, pycuda):
    assert tb.problems(uses[JETPACK6], pycuda) == []


def test_names_that_tensorrt_11_removed_are_only_reached_behind_a_guard(uses, surfaces):
    newest = surfaces[VERSIONS[-1]]
    removed = [u for u in uses[JETPACK6] if u.library == "tensorrt" and newest.member(u.owner, u.name) is None
               and newest.is_class(u.owner, u.name) is None]
    assert {u.label() for u in removed} >= {"tensorrt.BuilderFlag.FP16", "tensorrt.BuilderFlag.INT8"}
    assert [u.label() + " at " + u.where for u in removed if not u.guarded] == []


def test_a_guarded_name_still_exists_in_one_of_the_releases(uses, surfaces):
    # a hasattr guard around a misspelt name would hide it in every release
    for use in uses[JETPACK6]:
        if use.library == "tensorrt" and use.guarded:
            assert any(s.member(use.owner, use.name) is not None or s.is_class(use.owner, use.name) for s in surfaces.values()), use


# -- and the check catches it when one is taken away -------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_removing_any_used_tensorrt_name_from_the_bindings_is_caught(version, uses, surfaces, pycuda):
    surface = surfaces[version]
    distinct = _distinct(u for u in uses[version] if u.library == "tensorrt")
    assert len(distinct) > 50
    for key, use in distinct.items():
        if surface.member(use.owner, use.name) is None and surface.is_class(use.owner, use.name) is None:
            continue  # already absent here (guarded: checked above)
        found = tb.problems(uses[version], surface.without(use))
        if use.guarded and all(u.guarded for u in uses[version] if (u.library, u.owner, u.name) == key):
            assert not any(use.label() + " " in line for line in found)  # allowed missing: that is what the guard is for
        else:
            assert any(line.startswith(use.label() + " ") for line in found), f"removing {use.label()} went unnoticed"


def test_removing_any_used_pycuda_name_from_its_source_is_caught(uses, pycuda, surfaces):
    distinct = _distinct(u for u in uses[JETPACK6] if u.library == "pycuda")
    assert len(distinct) > 15
    for use in distinct.values():
        found = tb.problems(uses[JETPACK6], pycuda.without(use))
        assert any(line.startswith(use.label() + " ") for line in found), f"removing {use.label()} went unnoticed"


def test_a_name_whose_result_types_later_calls_is_caught_when_harvested_against_the_reduced_bindings(surfaces, pycuda):
    # the harvest follows types through the bindings' signatures; without Builder.create_builder_config it
    # no longer knows `config`, but still reports the missing method itself
    use = tb.Use("tensorrt", "Builder", "create_builder_config", "")
    reduced = surfaces[JETPACK6].without(use)
    found = tb.problems(tb.harvest({"tensorrt": reduced, "pycuda": pycuda}), reduced)
    assert [line for line in found if line.startswith("tensorrt.Builder.create_builder_config ")]


def test_a_call_that_fits_no_signature_is_caught(uses, surfaces, pycuda):
    use = next(u for u in uses[JETPACK6] if u.label() == "tensorrt.IBuilderConfig.set_timing_cache")
    assert tb.call_fits(surfaces[JETPACK6], use) is None
    assert "no signature fits" in tb.call_fits(surfaces[JETPACK6], replace(use, call=(1, ("ignore_mismatches",))))
    assert "no signature fits" in tb.call_fits(surfaces[JETPACK6], replace(use, call=(3, ())))
    copy = next(u for u in uses[JETPACK6] if u.label() == "pycuda.memcpy_dtod_async")
    assert tb.call_fits(pycuda, copy) is None and tb.call_fits(pycuda, replace(copy, call=(5, ()))) is not None


def test_an_assignment_to_a_read_only_property_is_caught(uses, surfaces):
    use = next(u for u in uses[JETPACK6] if u.label() == "tensorrt.Runtime.DLA_core")
    assert use.store and surfaces[JETPACK6].member("Runtime", "DLA_core")["settable"]
    read_only = next(u for u in uses[JETPACK6] if u.label() == "tensorrt.ICudaEngine.num_io_tensors")
    assert tb.problems([replace(read_only, store=True)], surfaces[JETPACK6]) != []


# -- the project's plan builds run on the real bindings up to the GPU ----------------------------------------

_BUILD_EACH_PLAN = r'''
import json, sys, tensorrt_bindings
sys.modules["tensorrt"] = tensorrt_bindings  # what `import tensorrt` finds on a Jetson
from pathlib import Path
import numpy as np, onnx
from export.build import BuildOptions, plan_set
from export.graphs.graph import GraphBuilder
from export.graphs.gru import build_gru_step, init_gru_weights
from runtime.backends.tensorrt import PlanBuildError, build_plan
from runtime.manifest import EngineFile
out = Path(sys.argv[1])
onnx.save(build_gru_step(init_gru_weights(8, 16, 3, seed=0)), out / "gru_step.onnx")
g = GraphBuilder("qdq")  # the smallest Q/DQ graph: what an int8 plan is built from
x = g.input("x", ["batch", 8])
scale, zero = g.initializer("s", np.float32(0.1)), g.initializer("z", np.int8(0), dtype=np.int8)
g.output(g.node("DequantizeLinear", [g.node("QuantizeLinear", [x, scale, zero]), scale, zero]), "y", ["batch", 8])
onnx.save(g.model(), out / "qdq.onnx")
entries = [EngineFile("backbone", "onnx", "fp32", "gru_step.onnx", ""), EngineFile("backbone", "onnx", "int8", "qdq.onnx", ""),
           EngineFile("gru_step", "onnx", "fp32", "gru_step.onnx", "")]
results = []
for planned in plan_set(BuildOptions(out=out, trt=True, dla_core=0), entries):
    try:
        build_plan(out / planned.source.file, out / planned.file, precision=planned.precision, dla_core=planned.dla_core)
        outcome = "built"
    except PlanBuildError as exc:
        outcome = str(exc)
    results.append({"role": planned.source.role, "precision": planned.precision, "dla_core": planned.dla_core, "outcome": outcome})
print(json.dumps(results))
'''


@pytest.mark.parametrize("version", VERSIONS)
def test_edge_export_trt_dla_builds_its_plan_set_up_to_the_builder_on_the_real_bindings(version, stubbed, tmp_path):
    # given `edge-export --trt --dla-core 0`'s plan set, each built by build_plan on the real bindings
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stubbed[version]), str(REPO)]))
    done = subprocess.run([sys.executable, "-c", _BUILD_EACH_PLAN, str(tmp_path)], env=env, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    # then DLA goes to the backbone plans only (DLA runs FP16/INT8; the FP32 GRU stays on the GPU)
    assert [(r["role"], r["precision"], r["dla_core"]) for r in results] == [
        ("backbone", "fp16", 0), ("backbone", "int8", 0), ("gru_step", "fp32", None)]
    # and every plan gets through the project's checks to the builder, which needs a GPU
    for result in results:
        assert result["outcome"].startswith(f"TensorRT {version} cannot create a builder on this machine"), result


def test_the_edge_export_command_with_dla_gets_to_the_builder_and_publishes_nothing(stubbed, tmp_path):
    # given the real 10.3 bindings where `import tensorrt` finds them, as on a Jetson, and a small export
    # (seeded 64x64 backbone, no INT8 step: the quantizer is not what this checks)
    alias = tmp_path / "alias" / "tensorrt"
    alias.mkdir(parents=True)
    (alias / "__init__.py").write_text('import sys, tensorrt_bindings\nsys.modules["tensorrt"] = tensorrt_bindings\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stubbed[JETPACK6]), str(alias.parent), str(REPO)]))
    out = tmp_path / "engines"
    done = subprocess.run([sys.executable, "-m", "export.cli", "--out", str(out), "--trt", "--dla-core", "0", "--trt-precision", "fp16",
                           "--no-int8", "--input-size", "64", "64", "--calib-frames", "4", "--holdout-frames", "2",
                           "--weights", "seeded", "--gru-weights", "seeded", "--hidden", "16"],
                          env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    # then every step before the plans ran, the plan build stopped where a GPU is needed, exit 1 (a failed build),
    # and nothing was published
    assert "building TensorRT plans" in done.stderr, done.stderr
    assert f"TensorRT {JETPACK6} cannot create a builder on this machine" in done.stderr
    assert done.returncode == 1
    assert not (out / "manifest.json").exists()
