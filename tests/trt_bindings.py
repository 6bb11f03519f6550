"""The real TensorRT Python bindings (and pycuda's source) as test references, without a GPU.

TensorRT's bindings ship as a ~1 MB wheel (`tensorrt-cu12-bindings`). Its extension links
libnvinfer, libnvonnxparser and libnvinfer_plugin, but calls only a few C entry points from
them (`nm -D --undefined-only`), and none while importing. A stub library defining those
symbols, built here with gcc and placed beside the extension (its RPATH is `$ORIGIN`),
lets the real module import on a machine without TensorRT or a GPU. Its classes, methods,
properties, enums and pybind11 signatures are then the reference the project's TensorRT
code is checked against; creating a Builder or Runtime fails ("factory function returned
nullptr"), which is where a GPU is needed.

pycuda publishes no wheels for Linux (`pip download --only-binary=:all: pycuda` finds none)
and its sdist compiles `_driver` against CUDA's `cuda.h`, so it cannot be imported here. Its
Boost.Python wrapper source (`src/wrapper/wrap_cudadrv.cpp`) and `pycuda/driver.py` name
every class, method and argument the module has: that is the pycuda reference.

    python tests/trt_bindings.py download     # what .ci/run does: fills the cache (a few MB, once)

The cache is `.cache/bindings` in the repository (git-ignored), or $EDGE_RUN_BINDINGS_CACHE.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
# JetPack 6's TensorRT, and the newest release (11.x removed the weak-typing precision flags).
TENSORRT_VERSIONS = ("10.3.0", "11.4.0.106")
PYCUDA_VERSION = "2025.1.2"
CACHE = Path(os.environ.get("EDGE_RUN_BINDINGS_CACHE", REPO / ".cache" / "bindings"))
DOWNLOAD_COMMAND = "python tests/trt_bindings.py download"
# The project's code that uses TensorRT or pycuda (everything else never imports them).
SOURCES = ("runtime", "export")


def wheel_name_pattern(version: str) -> str:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"tensorrt_cu12_bindings-{version}-{tag}-*.whl"


def cached_wheel(version: str) -> Optional[Path]:
    return next(iter(sorted(CACHE.glob(wheel_name_pattern(version)))), None)


def cached_pycuda() -> Optional[Path]:
    path = CACHE / f"pycuda-{PYCUDA_VERSION}.tar.gz"
    return path if path.is_file() else None


def download() -> None:
    """Fetch what is missing from the cache with pip (the bindings wheels for this Python, pycuda's sdist)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE)]
    for version in TENSORRT_VERSIONS:
        if cached_wheel(version) is None:
            subprocess.run([*pip, "--only-binary=:all:", f"tensorrt-cu12-bindings=={version}"], check=True)
    if cached_pycuda() is None:
        # pip prepares an sdist's metadata (setuptools and numpy wheels in an isolated environment, not CUDA);
        # --no-binary names pycuda only, so those build requirements still come as wheels.
        subprocess.run([*pip, "--no-binary=pycuda", f"pycuda=={PYCUDA_VERSION}"], check=True)


# -- TensorRT: the stubbed bindings and their surface ------------------------------------------------

_C_LIBRARIES = ("libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0")


def nvinfer_entry_points(extension: Path) -> list[str]:
    """The C symbols the extension needs from TensorRT's libraries: its undefined dynamic symbols
    that are neither C++ (mangled), Python's, weak, versioned (glibc's) nor found in the C library."""
    import ctypes

    listing = subprocess.run(["nm", "-D", "--undefined-only", str(extension)], capture_output=True, text=True, check=True).stdout
    libraries = []
    for name in _C_LIBRARIES:
        try:
            libraries.append(ctypes.CDLL(name))
        except OSError:
            pass
    symbols = []
    for line in listing.splitlines():
        kind, _, symbol = line.strip().partition(" ")
        if kind != "U" or "@" in symbol or symbol.startswith(("_", "Py")):
            continue
        if any(hasattr(library, symbol) for library in libraries):
            continue
        symbols.append(symbol)
    return sorted(symbols)


def needed_libraries(extension: Path) -> list[str]:
    listing = subprocess.run(["readelf", "-d", str(extension)], capture_output=True, text=True, check=True).stdout
    return [name for name in re.findall(r"Shared library: \[([^\]]+)\]", listing) if name.startswith("libnv")]


def install_stubbed(version: str, into: Path) -> Path:
    """Unpack the bindings wheel of `version` into `into` with stub TensorRT libraries beside the extension.

    Returns the folder to put on sys.path (it holds `tensorrt_bindings`).
    """
    wheel = cached_wheel(version)
    if wheel is None:
        raise FileNotFoundError(f"no tensorrt-cu12-bindings {version} wheel in {CACHE}; run: {DOWNLOAD_COMMAND}")
    target = into / f"tensorrt-{version}"
    package = target / "tensorrt_bindings"
    if (package / ".stubbed").is_file():
        return target
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    extension = next(package.glob("tensorrt*.so"))
    source = target / "stub.c"
    source.write_text("".join(f"void *{symbol}(void) {{ return 0; }}\n" for symbol in nvinfer_entry_points(extension)))
    for library in needed_libraries(extension):
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(package / library), f"-Wl,-soname,{library}", str(source)], check=True)
    (package / ".stubbed").write_text("")
    return target


# Run in a fresh interpreter per version (two versions of one extension cannot share a process).
_DUMP = r'''
import inspect, json, sys
import tensorrt_bindings as trt

def describe(owner, name):
    try:
        value = inspect.getattr_static(owner, name)
    except AttributeError:
        value = getattr(owner, name)
    if isinstance(value, property):
        return {"kind": "property", "doc": (value.fget.__doc__ or "") if value.fget else "", "settable": value.fset is not None}
    if isinstance(value, staticmethod):
        value = value.__func__
    if inspect.isclass(value):
        return {"kind": "class"}
    if callable(value):
        return {"kind": "method", "doc": getattr(value, "__doc__", "") or ""}
    return {"kind": "value", "type": type(value).__qualname__}

classes, queue = {}, [(name, getattr(trt, name)) for name in dir(trt) if inspect.isclass(getattr(trt, name))]
while queue:
    qualname, cls = queue.pop()
    if qualname in classes:
        continue
    members = {name: describe(cls, name) for name in dir(cls) if not name.startswith("__") or name == "__init__"}
    classes[qualname] = members
    queue.extend((f"{qualname}.{name}", getattr(cls, name)) for name, info in members.items() if info["kind"] == "class")
module = {name: describe(trt, name) for name in dir(trt) if not name.startswith("_") or name == "__version__"}
json.dump({"version": trt.__version__, "module": module, "classes": classes}, sys.stdout)
'''


def tensorrt_surface(folder: Path) -> dict:
    """Every public name of the real bindings installed by `install_stubbed` in `folder`, with its docstrings."""
    env = dict(os.environ, PYTHONPATH=str(folder))
    done = subprocess.run([sys.executable, "-c", _DUMP], env=env, capture_output=True, text=True, cwd=folder)
    if done.returncode != 0:
        raise RuntimeError(f"the tensorrt bindings in {folder} did not import with the stub libraries:\n{done.stderr}")
    return json.loads(done.stdout)


# -- pycuda: the surface its wrapper source declares ---------------------------------------------------

# Boost.Python as pycuda writes it: each class in its own { } block, declared as `py::class_<...>("Name")`
# or `wrapper_class wrp("Name")`, members added with .def("name", ..., py::args(...)) or its DEF_SIMPLE_* macros.
_CLASS = re.compile(r'(?:py::class_\s*<[^;{]*?>|\bwrapper_class)\s*(?:\w+)?\s*\(\s*"(\w+)"')
_MEMBER = re.compile(r'\.\s*(?:(?:def|add_property|def_readonly|def_readwrite|staticmethod|add_static_property)\s*\(\s*"(\w+)"'
                     r'|DEF_SIMPLE_(?:METHOD|RO_MEMBER|RW_MEMBER)(?:_WITH_ARGS)?\s*\(\s*(\w+))')
_FUNCTION = re.compile(r'(?:\bpy::def\s*\(\s*"(\w+)"|\bDEF_SIMPLE_FUNCTION(?:_WITH_ARGS)?\s*\(\s*(\w+))')


def pycuda_surface(sdist: Path) -> dict:
    """{"module": {name: [argument names] or None}, "classes": {Class: {member: [argument names] or None}}}
    from pycuda's Boost.Python wrapper and `pycuda/driver.py`. None: the source names no
    arguments (a property, or a function bound without `py::args`)."""
    with tarfile.open(sdist) as archive:
        root = archive.getnames()[0].split("/")[0]
        wrapper = archive.extractfile(f"{root}/src/wrapper/wrap_cudadrv.cpp").read().decode()
        driver = archive.extractfile(f"{root}/pycuda/driver.py").read().decode()
    module: dict[str, Optional[list[str]]] = {}
    classes: dict[str, dict[str, Optional[list[str]]]] = {}
    spans = []
    for match in _CLASS.finditer(wrapper):
        name = match.group(1)
        spans.append((match.start(), _closing(wrapper, match.start(), "{", "}"), name))
        classes.setdefault(name, {})
        module[name] = None
    for match in _MEMBER.finditer(wrapper):
        owner = next((name for start, end, name in reversed(spans) if start < match.start() < end), None)
        if owner is not None:
            args = _bpl_args(wrapper[match.end(): _closing(wrapper, match.end(), "(", ")")])
            classes[owner].setdefault(match.group(1) or match.group(2), args)
    for match in _FUNCTION.finditer(wrapper):
        module.setdefault(match.group(1) or match.group(2), _bpl_args(wrapper[match.end(): _closing(wrapper, match.end(), "(", ")")]))
    for alias in re.findall(r'py::scope\(\)\.attr\("(\w+)"\)\s*=', wrapper):
        module.setdefault(alias, None)  # e.g. HostAllocation = the PagelockedHostAllocation class
    for node in ast.parse(driver).body:  # Python-level additions: functions, classes, assigned names
        if isinstance(node, ast.FunctionDef):
            module.setdefault(node.name, [a.arg for a in node.args.args])
        elif isinstance(node, ast.ClassDef):
            module.setdefault(node.name, None)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    module.setdefault(target.id, None)
                elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id in classes:
                    classes[target.value.id].setdefault(target.attr, None)  # methods attached to the C++ classes
    return {"module": module, "classes": classes}


def _closing(text: str, start: int, opener: str, closer: str) -> int:
    """The index of the `closer` that ends the bracket already open at `start` (inside it)."""
    depth = 1
    for index in range(start, len(text)):
        if text[index] == opener:
            depth += 1
        elif text[index] == closer:
            depth -= 1
            if depth == 0:
                return index
    return len(text)


def _bpl_args(text: str) -> Optional[list[str]]:
    groups = re.findall(r'py::args?\s*\(([^)]*)\)', text)
    found = [name for group in groups for name in re.findall(r'"(\w+)"', group)]
    return found or None


# -- the project's uses, harvested from its source --------------------------------------------------

@dataclass(frozen=True)
class Use:
    """One name the project takes from tensorrt or pycuda: `owner` is "" for the module, else a class."""

    library: str  # "tensorrt" or "pycuda"
    owner: str  # "" (module), a class's qualified name, or "?" (a pycuda value whose class the source does not say)
    name: str
    where: str  # file:line
    guarded: bool = False  # behind hasattr(owner, name), getattr(owner, name, default) or an early exit on its absence
    call: Optional[tuple[int, tuple[str, ...]]] = None  # (positional count, keyword names) when called
    store: bool = False  # assigned to (a property that must be settable)

    def label(self) -> str:
        return f"{self.library}.{self.owner + '.' if self.owner else ''}{self.name}"


@dataclass
class Surface:
    """What a library offers: the module's names and each class's members, with their signatures."""

    library: str
    module: dict = field(default_factory=dict)
    classes: dict = field(default_factory=dict)

    @classmethod
    def of_tensorrt(cls, dump: dict) -> "Surface":
        return cls("tensorrt", dump["module"], dump["classes"])

    @classmethod
    def of_pycuda(cls, dump: dict) -> "Surface":
        return cls("pycuda", {k: {"kind": "class" if k in dump["classes"] else "method", "args": v} for k, v in dump["module"].items()},
                   {c: {m: {"kind": "method", "args": a} for m, a in members.items()} for c, members in dump["classes"].items()})

    def without(self, use: Use) -> "Surface":
        """This surface minus the name `use` takes (how the tests show a removed name is caught)."""
        module = dict(self.module)
        classes = {name: dict(members) for name, members in self.classes.items()}
        if use.owner == "":
            module.pop(use.name, None)
            classes.pop(use.name, None)
        elif use.owner == "?":
            for members in classes.values():
                members.pop(use.name, None)
        else:
            classes.get(use.owner, {}).pop(use.name, None)
            classes.pop(f"{use.owner}.{use.name}", None)
        return Surface(self.library, module, classes)

    def member(self, owner: str, name: str) -> Optional[dict]:
        if owner == "":
            return self.module.get(name)
        if owner == "?":  # a pycuda value whose class the source does not say: any class's member
            return next((members[name] for members in self.classes.values() if name in members), None)
        return self.classes.get(owner, {}).get(name)

    def is_class(self, owner: str, name: str) -> Optional[str]:
        qualname = name if owner in ("", "?") else f"{owner}.{name}"
        return qualname if qualname in self.classes else None

    def returns(self, owner: str, name: str) -> Optional[str]:
        """The class a method returns or a property holds, from the pybind11 signature (TensorRT only)."""
        info = self.member(owner, name)
        if not info or self.library != "tensorrt":
            return None
        for _, result in signatures(name if info["kind"] != "property" else "", info.get("doc", "")):
            result = re.sub(r"^Optional\[(.*)\]$", r"\1", result.strip())
            result = result.replace("tensorrt_bindings.tensorrt.", "").replace("tensorrt.tensorrt.", "").replace("tensorrt.", "")
            if result in self.classes:
                return result
        return None


def signatures(name: str, doc: str) -> list[tuple[list[tuple[str, bool]], str]]:
    """pybind11's signature lines for `name` in `doc`: ([(parameter, has default)], return type) per overload."""
    found = []
    for match in re.finditer(rf"^\s*(?:\d+\.\s*)?{re.escape(name)}\((.*)\)\s*->\s*(.+?)\s*$", doc, re.MULTILINE):
        params = []
        for piece in _split_top(match.group(1)):
            pname = piece.split(":", 1)[0].split("=", 1)[0].strip()
            if pname and not pname.startswith("*"):
                params.append((pname, "=" in piece))
        found.append((params, match.group(2)))
    return found


def _split_top(text: str) -> list[str]:
    pieces, depth, current = [], 0, ""
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            pieces.append(current)
            current = ""
        else:
            current += char
    return [p for p in (*pieces, current) if p.strip()]


def call_fits(surface: Surface, use: Use) -> Optional[str]:
    """None when `use`'s call fits one of the member's signatures, else why not."""
    info = surface.member(use.owner, use.name)
    if info is None or use.call is None:
        return None
    positional, keywords = use.call
    if surface.library == "pycuda":
        args = [a for a in (info.get("args") or []) if a != "self"]
        if info.get("args") is None:
            return None
        unknown = [k for k in keywords if k not in args]
        if unknown or positional > len(args):
            return f"takes ({', '.join(args)}), called with {positional} positional and {', '.join(keywords) or 'no'} keyword arguments"
        return None
    if info["kind"] == "class":
        name, doc = "__init__", surface.classes.get(surface.is_class(use.owner, use.name) or "", {}).get("__init__", {}).get("doc", "")
    else:
        name, doc = use.name, info.get("doc", "")
    overloads = signatures(name, doc)
    if not overloads:
        return None
    for params, _ in overloads:
        if params and params[0][0] == "self" and (info["kind"] == "class" or use.owner not in ("",)):
            params = params[1:]
        names = [p for p, _ in params]
        if positional > len(params) or any(k not in names[positional:] for k in keywords):
            continue
        if all(has_default or i < positional or p in keywords for i, (p, has_default) in enumerate(params)):
            return None
    shown = "; ".join(f"({', '.join(p for p, _ in params)})" for params, _ in overloads)
    return f"no signature fits {positional} positional and keywords {list(keywords)}: {shown}"


def harvest(surfaces: dict[str, Surface], roots: tuple[str, ...] = SOURCES) -> list[Use]:
    """Every tensorrt and pycuda name the project's source uses, with the class each is looked up on.

    Types flow from `import_tensorrt()` / `import_pycuda()` (and `import tensorrt`) through
    assignments, `self.` attributes, calls between the project's own functions, and the
    bindings' own signatures (what `Builder.create_builder_config` returns, ...).
    """
    uses: set[Use] = set()
    for path, tree in _parsed(roots):
        _ModuleTypes(path, tree, surfaces, uses).run()
    return sorted(uses, key=lambda u: (u.library, u.owner, u.name, u.where))


_PARSED: dict[tuple, list] = {}


def _parsed(roots: tuple[str, ...]) -> list[tuple[Path, ast.Module]]:
    """The project's modules that import tensorrt or pycuda, parsed once per process."""
    if roots not in _PARSED:
        found = []
        for root in roots:
            for path in sorted((REPO / root).rglob("*.py")):
                text = path.read_text()
                if re.search(r"import_tensorrt\(|import_pycuda\(|^\s*import (tensorrt|pycuda)", text, re.MULTILINE):
                    found.append((path, ast.parse(text)))
        _PARSED[roots] = found
    return _PARSED[roots]


class _ModuleTypes:
    """A small flow-insensitive type inference over one module, repeated until the types settle."""

    def __init__(self, path: Path, tree: ast.Module, surfaces: dict[str, Surface], uses: set) -> None:
        self.where = str(path.relative_to(REPO))
        self.tree, self.surfaces, self.uses = tree, surfaces, uses
        self.params: dict[str, dict[str, tuple]] = {}  # function key -> parameter -> type
        self.attrs: dict[str, dict[str, tuple]] = {}  # class name -> self attribute -> type
        self.results: dict[str, tuple] = {}  # function key -> type it returns
        self.functions: dict[str, ast.AST] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.functions[f"{node.name}.{item.name}"] = item
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.setdefault(node.name, node)

    def run(self) -> None:
        for final in (False, False, True):  # two passes let types settle across functions, the third records
            self.record = final
            for key, function in self.functions.items():
                owner = key.split(".")[0] if "." in key else None
                env = dict(self.params.get(key, {}))
                self.current = key
                self.block(function.body, env, owner, frozenset())
            for cls in self.classes.values():
                for base in cls.bases:
                    kind = self.expr(base, {}, None, frozenset())
                    if kind and kind[0] == "class":
                        for item in cls.body:
                            if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                                self.add(kind[1], kind[2], item.name, item, frozenset())  # an override: the base must have it

    # statements -------------------------------------------------------------------------------
    def block(self, body: list, env: dict, owner: Optional[str], facts: frozenset) -> None:
        for statement in body:
            self.statement(statement, env, owner, facts)
            if isinstance(statement, ast.If) and statement.body and isinstance(statement.body[-1], (ast.Raise, ast.Return)):
                facts = facts | self.absent_facts(statement.test, env, owner)

    def statement(self, node: ast.AST, env: dict, owner: Optional[str], facts: frozenset) -> None:
        if isinstance(node, ast.If):
            self.expr(node.test, env, owner, facts)
            self.block(node.body, env, owner, facts | self.present_facts(node.test, env, owner))
            self.block(node.orelse, env, owner, facts)
        elif isinstance(node, ast.Assign):
            if isinstance(node.value, ast.Tuple) and all(isinstance(t, ast.Tuple) and len(t.elts) == len(node.value.elts)
                                                          for t in node.targets):
                kinds = [self.expr(value, env, owner, facts) for value in node.value.elts]
                for target in node.targets:
                    for element, kind in zip(target.elts, kinds):
                        self.bind(element, kind, env, owner, facts)
                return
            kind = self.expr(node.value, env, owner, facts)
            for target in node.targets:
                self.bind(target, kind, env, owner, facts)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            kind = self.expr(node.value, env, owner, facts)
            if isinstance(node, ast.AnnAssign):
                self.bind(node.target, kind, env, owner, facts)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in getattr(node, "names", []) if isinstance(node, ast.Import) else []:
                if alias.name == "tensorrt":
                    env[alias.asname or "tensorrt"] = ("module", "tensorrt")
                elif alias.name == "pycuda.driver":
                    env[alias.asname or "pycuda"] = ("module", "pycuda") if alias.asname else ("package", "pycuda")
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.expr(node.iter, env, owner, facts)
            iterated = node.iter.func.value if (isinstance(node.iter, ast.Call) and isinstance(node.iter.func, ast.Attribute)
                                                 and node.iter.func.attr == "values") else node.iter
            self.bind(node.target, self.element(iterated, env, owner), env, owner, facts)
            self.block(node.body + node.orelse, env, owner, facts)
        elif isinstance(node, (ast.While,)):
            self.expr(node.test, env, owner, facts)
            self.block(node.body + node.orelse, env, owner, facts)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                kind = self.expr(item.context_expr, env, owner, facts)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, kind, env, owner, facts)
            self.block(node.body, env, owner, facts)
        elif isinstance(node, ast.Try):
            self.block(node.body, env, owner, facts)
            for handler in node.handlers:
                self.block(handler.body, env, owner, facts)
            self.block(node.orelse + node.finalbody, env, owner, facts)
        elif isinstance(node, ast.Return) and node.value is not None:
            kind = self.expr(node.value, env, owner, facts)
            if kind:
                self.results[self.current] = kind
        elif isinstance(node, ast.ClassDef):
            self.nested_class(node, env, facts)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return  # visited as functions of their own
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, env, owner, facts)

    def nested_class(self, node: ast.ClassDef, env: dict, facts: frozenset) -> None:
        """A class defined inside a function (a TensorRT logger subclass): bases and methods see the function's names."""
        for base in node.bases:
            kind = self.expr(base, env, None, facts)
            if kind and kind[0] == "class":
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                        self.add(kind[1], kind[2], item.name, item, facts)  # an override: the base must have it
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.block(item.body, dict(env), node.name, facts)

    def element(self, container: ast.AST, env: dict, owner: Optional[str]) -> Optional[tuple]:
        """The type of what a list or dict holds (its elements' type is recorded where they are put in)."""
        kind = self.expr(container, env, owner, frozenset()) if not isinstance(container, ast.Attribute) else None
        if isinstance(container, ast.Attribute) and isinstance(container.value, ast.Name) and container.value.id == "self" and owner:
            kind = self.attrs.get(owner, {}).get(container.attr)
        return kind[1] if kind and kind[0] == "container" else None

    def put(self, container: ast.AST, kind: Optional[tuple], env: dict, owner: Optional[str]) -> None:
        if not kind:
            return
        if isinstance(container, ast.Name):
            env[container.id] = ("container", kind)
        elif isinstance(container, ast.Attribute) and isinstance(container.value, ast.Name) and container.value.id == "self" and owner:
            self.attrs.setdefault(owner, {})[container.attr] = ("container", kind)

    def bind(self, target: ast.AST, kind: Optional[tuple], env: dict, owner: Optional[str], facts: frozenset) -> None:
        if isinstance(target, ast.Subscript):
            self.expr(target.slice, env, owner, facts)
            self.put(target.value, kind, env, owner)
            return
        if isinstance(target, ast.Name):
            if kind:
                env[target.id] = kind
        elif isinstance(target, ast.Attribute):
            if isinstance(target.value, ast.Name) and target.value.id == "self" and owner:
                if kind:
                    self.attrs.setdefault(owner, {})[target.attr] = kind
                return
            base = self.expr(target.value, env, owner, facts)
            if base and base[0] in ("instance", "class"):
                self.add(base[1], base[2], target.attr, target, facts, store=True)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.bind(element, None, env, owner, facts)

    # expressions ----------------------------------------------------------------------------------
    def expr(self, node: ast.AST, env: dict, owner: Optional[str], facts: frozenset) -> Optional[tuple]:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Subscript):
            self.expr(node.slice, env, owner, facts)
            self.expr(node.value, env, owner, facts)
            return self.element(node.value, env, owner)
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            kinds = [self.expr(element, env, owner, facts) for element in node.elts]
            return ("container", kinds[0]) if kinds[0] else None
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and owner:
                return self.attrs.get(owner, {}).get(node.attr)
            base = self.expr(node.value, env, owner, facts)
            if base == ("package", "pycuda") and node.attr == "driver":
                return ("module", "pycuda")
            return self.attribute(base, node.attr, node, facts)
        if isinstance(node, ast.Call):
            return self.call(node, env, owner, facts)
        if isinstance(node, (ast.Lambda, ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)):
            inner = dict(env)
            for child in ast.walk(node):
                if child is not node and isinstance(child, ast.expr) and not isinstance(child, ast.Name):
                    pass
            for generator in getattr(node, "generators", []):
                self.expr(generator.iter, inner, owner, facts)
            for part in (getattr(node, "elt", None), getattr(node, "key", None), getattr(node, "value", None), getattr(node, "body", None)):
                if part is not None:
                    self.expr(part, inner, owner, facts)
            return None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expr(child, env, owner, facts)
            elif isinstance(child, ast.keyword):
                self.expr(child.value, env, owner, facts)
        return None

    def attribute(self, base: Optional[tuple], name: str, node: ast.AST, facts: frozenset, **flags) -> Optional[tuple]:
        if not base:
            return None
        if base[0] == "module":
            library, owner = base[1], ""
        elif base[0] in ("class", "instance"):
            library, owner = base[1], base[2]
        else:
            return None
        if owner == "?" and library == "pycuda" and _numpy_attribute(name):
            return ("instance", library, "?")  # pagelocked_empty's numpy array: numpy's name, not pycuda's
        self.add(library, owner, name, node, facts, **flags)
        surface = self.surfaces.get(library)
        if surface is None:
            return None
        nested = surface.is_class(owner, name)
        if nested:
            return ("class", library, nested)
        info = surface.member(owner, name)
        if info is None:
            return None
        if info["kind"] == "method":
            return ("callable", library, owner, name)
        if info["kind"] == "property":
            returned = surface.returns(owner, name)
            return ("instance", library, returned) if returned else None
        if library == "pycuda":
            return ("instance", library, "?")
        return None

    def call(self, node: ast.Call, env: dict, owner: Optional[str], facts: frozenset) -> Optional[tuple]:
        args = [self.expr(arg, env, owner, facts) for arg in node.args]
        keywords = {kw.arg: self.expr(kw.value, env, owner, facts) for kw in node.keywords}
        func = node.func
        if isinstance(func, ast.Name):
            if func.id in ("import_tensorrt", "import_pycuda"):
                return ("module", "tensorrt" if func.id == "import_tensorrt" else "pycuda")
            if func.id in ("hasattr", "getattr") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                base = args[0]
                guarded = func.id == "hasattr" or len(node.args) == 3
                return self.attribute(base, node.args[1].value, node, facts | ({_fact(base, node.args[1].value)} if guarded else set()))
            target = self.functions.get(func.id) or (self.functions.get(f"{func.id}.__init__") if func.id in self.classes else None)
            if target is not None:
                self.bind_params(f"{func.id}.__init__" if func.id in self.classes else func.id, target, args, keywords,
                                 skip_self=func.id in self.classes)
                if func.id in self.classes:
                    return ("local", func.id)
                return self.results.get(func.id)
            return None
        if isinstance(func, ast.Attribute) and func.attr == "append" and args:
            self.put(func.value, args[0], env, owner)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self" and owner:
            key = f"{owner}.{func.attr}"
            if key in self.functions:
                self.bind_params(key, self.functions[key], args, keywords, skip_self=True)
                return self.results.get(key)
        has_star = any(isinstance(a, ast.Starred) for a in node.args) or any(kw.arg is None for kw in node.keywords)
        shape = None if has_star else (len(node.args), tuple(k for k in keywords))
        if isinstance(func, ast.Attribute):  # the looked-up name is recorded once, with how it is called
            base = self.expr(func.value, env, owner, facts)
            if shape and base and base[0] == "class" and func.attr == "__init__":
                shape = (shape[0] - 1, shape[1])  # Base.__init__(self, ...): self is passed explicitly
            kind = self.attribute(base, func.attr, func, facts, call=shape)
        else:
            kind = self.expr(func, env, owner, facts)
        if not kind:
            return None
        if kind[0] == "class":
            return ("instance", kind[1], kind[2])
        if kind[0] == "callable":
            library, cls, name = kind[1], kind[2], kind[3]
            returned = self.surfaces[library].returns(cls, name) if library in self.surfaces else None
            if returned:
                return ("instance", library, returned)
            return ("instance", library, "?") if library == "pycuda" else None
        return None

    def bind_params(self, key: str, function: ast.AST, args: list, keywords: dict, skip_self: bool) -> None:
        names = [a.arg for a in function.args.args][1 if skip_self else 0:]
        known = self.params.setdefault(key, {})
        for name, kind in zip(names, args):
            if kind:
                known[name] = kind
        for name, kind in keywords.items():
            if kind and name in names:
                known[name] = kind

    # hasattr guards ---------------------------------------------------------------------------------
    def present_facts(self, test: ast.AST, env: dict, owner: Optional[str]) -> frozenset:
        """(type, name) pairs that `test` being true proves present: hasattr calls not under `not`/`or`."""
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            return frozenset().union(*(self.present_facts(value, env, owner) for value in test.values))
        fact = self.hasattr_fact(test, env, owner)
        return frozenset({fact}) if fact else frozenset()

    def absent_facts(self, test: ast.AST, env: dict, owner: Optional[str]) -> frozenset:
        """What an `if <test>: raise/return` proves present afterwards: each `not hasattr(...)` in an `or`."""
        values = test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or) else [test]
        found = set()
        for value in values:
            if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.Not):
                fact = self.hasattr_fact(value.operand, env, owner)
                if fact:
                    found.add(fact)
        return frozenset(found)

    def hasattr_fact(self, node: ast.AST, env: dict, owner: Optional[str]):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr" and len(node.args) == 2
                and isinstance(node.args[1], ast.Constant)):
            previous, self.record = self.record, False
            try:
                base = self.expr(node.args[0], env, owner, frozenset())
            finally:
                self.record = previous
            return _fact(base, node.args[1].value) if base else None
        return None

    def add(self, library: str, owner: str, name: str, node: ast.AST, facts: frozenset, call=None, store: bool = False) -> None:
        if not self.record:
            return
        guarded = (library, owner, name) in {(f[0], f[1], f[2]) for f in facts}
        self.uses.add(Use(library, owner, name, f"{self.where}:{node.lineno}", guarded, call, store))


def _numpy_attribute(name: str) -> bool:
    import numpy

    return hasattr(numpy.ndarray, name)


def _fact(base: Optional[tuple], name: str) -> tuple:
    if not base:
        return ("", "", name)
    if base[0] == "module":
        return (base[1], "", name)
    return (base[1], base[2], name)


def problems(uses: list[Use], surface: Surface) -> list[str]:
    """What in `uses` this surface does not have (or cannot be called or set that way): one line each.

    A name behind a hasattr guard may be missing (that is what the guard is for)."""
    found = []
    for use in uses:
        if use.library != surface.library:
            continue
        info = surface.member(use.owner, use.name)
        if info is None and surface.is_class(use.owner, use.name) is None:
            if not use.guarded:
                found.append(f"{use.label()} ({use.where}): missing")
            continue
        if use.store and info is not None and info.get("kind") == "property" and not info.get("settable", True):
            found.append(f"{use.label()} ({use.where}): read-only, assigned to")
        why = call_fits(surface, use)
        if why:
            found.append(f"{use.label()} ({use.where}): {why}")
    return found


if __name__ == "__main__":
    if sys.argv[1:] != ["download"]:
        sys.exit(f"usage: {DOWNLOAD_COMMAND}")
    download()
    print(f"cached in {CACHE}:", ", ".join(sorted(p.name for p in CACHE.iterdir() if p.is_file())))
