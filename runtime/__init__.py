"""edge-run's online stage: sources, preprocessing, engines, temporal stepping, the loop, sinks.

The Python API in one breath:

    from runtime import Pipeline, PipelineConfig, load_manifest, open_engines, open_source
    manifest = load_manifest("engines")
    engines = open_engines(manifest, backend="cpu")
    for result in Pipeline(engines, [open_source("demo")], PipelineConfig(max_frames=100)):
        print(result.frame_index, result.label, result.score)
"""
from runtime.backends import open_engines
from runtime.manifest import load_manifest
from runtime.pipeline import Pipeline, PipelineConfig
from runtime.result import EmitMode, Result
from runtime.sources import open_source

__all__ = ["Pipeline", "PipelineConfig", "EmitMode", "Result", "load_manifest", "open_engines", "open_source"]
