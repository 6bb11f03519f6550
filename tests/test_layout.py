"""The architecture holds: every module imports, the import graph has no cycle, and dependencies point one way.

The graph is read from the source (ast), every import statement counted, the lazy ones
inside functions included: a cycle hidden in a function is still a cycle.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from helpers import REPO

PACKAGES = ("runtime", "export")
# Concerns that the loop depends on, never the reverse (DESIGN.md: contracts, not the loop).
LOOP = ("runtime.pipeline", "runtime.capture", "runtime.service", "runtime.cli", "runtime.bench")
LEAVES = ("runtime.sources", "runtime.backends", "runtime.sinks")


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = module_files()


def imported_modules(name: str, path: Path) -> set[str]:
    """Project modules that `name` imports (`from pkg import submodule` counts as the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.add(child if child in MODULES else base)
    return {target for target in targets if target in MODULES and target != name}


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(name for name in MODULES if not name.endswith("__main__")))  # those run a CLI
def test_every_module_imports_without_the_optional_packages(name):
    importlib.import_module(name)


def test_the_import_graph_has_no_cycle():
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(GRAPH[node]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_runtime_never_imports_the_export_stage():
    offenders = {name: sorted(t for t in targets if t.startswith("export"))
                 for name, targets in GRAPH.items() if name.startswith("runtime")}
    assert not {name: targets for name, targets in offenders.items() if targets}


def test_sources_backends_and_sinks_never_depend_on_the_loop():
    offenders = {}
    for name, targets in GRAPH.items():
        if name.startswith(LEAVES):
            bad = sorted(t for t in targets if t.startswith(LOOP))
            if bad:
                offenders[name] = bad
    assert not offenders


def test_nothing_outside_the_loop_reaches_into_its_streams_or_rings():
    # Observers read `export_state()` and `stats`; `_Stream` and the ring buffers are the loop's own.
    offenders = []
    for name, path in MODULES.items():
        if name == "runtime.pipeline":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("streams", "rings"):
                owner = node.value
                owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
                if owner_name == "pipeline":
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders
