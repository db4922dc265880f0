"""What is registered, known without importing torch: an index read from the source with `ast`.

The algorithm and dataset modules import torch (about 5 s of CPU), yet `--help`, `list` and
name errors need only names, settings, papers, environments and declared defaults. This module
parses the modules of `shiftbench.algorithms` and `shiftbench.datasets` (plus the demo's
`shiftbench.demo_data`) without executing them, and evaluates the class attributes the registry
reads (`SETTINGS`, `PAPER`, `HPARAMS`, `ENVIRONMENTS`, ...) from their literal expressions. The
index is cached in the user's cache directory, keyed by the path, size and modification time of
every file read (a changed file rebuilds it: about 0.15 s), so it cannot go stale; a test checks it
against the imported registries. Values that are not literal (e.g. hparams whose default depends
on the dataset) are `UNKNOWN`; callers that need them import the real classes.

Plug-ins (entry points, `--import`) are not in the index: `needs_import` says when a name must be
looked up in the real registry instead.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import operator
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class _Unknown:
    """A value the index could not read from the source."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()
ALGORITHM_PACKAGE = "shiftbench.algorithms"
DATASET_PACKAGES = ("shiftbench.datasets",)
EXTRA_DATASET_MODULES = ("shiftbench.demo_data",)  # registered on import by the demo


@dataclass(frozen=True)
class AlgorithmEntry:
    name: str
    module: str
    settings: tuple[str, ...]
    paper: str
    summary: str
    hparams: dict[str, Any]  # every declared hparam (bases included) -> default, or UNKNOWN


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    module: str
    environments: tuple[str, ...]
    input_shape: tuple[int, ...]
    num_classes: int
    n_steps: int
    source: str
    summary: str


class _Unresolved(Exception):
    pass


@dataclass
class _HParamStub:
    default: Any


@dataclass
class _Class:
    name: str
    module: str
    node: ast.ClassDef
    bases: list[ast.expr]
    registered_as: str | None  # the registry name, if decorated


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}

_BUILTINS = {"len": len, "tuple": tuple, "list": list, "str": str, "int": int, "float": float}


class _Source:
    """The parsed modules of a few packages, with enough name resolution to read class constants."""

    def __init__(self, modules: dict[str, Path], decorator: str):
        self.modules: dict[str, ast.Module] = {}
        self.imports: dict[str, dict[str, tuple[str, str]]] = {}  # module -> local -> (module, name)
        self.classes: dict[tuple[str, str], _Class] = {}
        self.order: list[_Class] = []  # registration order (import order, then file order)
        for name, path in modules.items():
            self.modules[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
        done: set[str] = set()
        for name in self._import_order(modules):
            self._read_module(name, decorator, done)

    def _import_order(self, modules: dict[str, Path]) -> list[str]:
        return list(modules)

    def _read_module(self, module: str, decorator: str, done: set[str]) -> None:
        if module in done or module not in self.modules:
            return
        done.add(module)
        tree = self.modules[module]
        imports: dict[str, tuple[str, str]] = {}
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    imports[alias.asname or alias.name] = (node.module, alias.name)
                self._read_module(node.module, decorator, done)  # registers first, as on import
        self.imports[module] = imports
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            registered = None
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Name) and target.id == decorator:
                    registered = node.name
                    if isinstance(dec, ast.Call):
                        for kw in dec.keywords:
                            if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                                registered = kw.value.value
            cls = _Class(node.name, module, node, list(node.bases), registered)
            self.classes[(module, node.name)] = cls
            if registered:
                self.order.append(cls)

    # ---- name resolution --------------------------------------------------------------------
    def _module_assignment(self, module: str, name: str) -> ast.expr | None:
        """The last module-level expression assigned to `name` (tuple unpacking included)."""
        found = None
        for node in self.modules[module].body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else [])
            for target in targets:
                if isinstance(target, ast.Name) and target.id == name:
                    found = node.value
                elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple) \
                        and len(target.elts) == len(node.value.elts):
                    for t, v in zip(target.elts, node.value.elts):
                        if isinstance(t, ast.Name) and t.id == name:
                            found = v
        return found

    def resolve_class(self, module: str, expr: ast.expr) -> _Class | None:
        if isinstance(expr, ast.Name):
            if (module, expr.id) in self.classes:
                return self.classes[(module, expr.id)]
            source = self.imports.get(module, {}).get(expr.id)
            if source and source in self.classes:
                return self.classes[source]
        return None

    def mro(self, cls: _Class) -> list[_Class]:
        """Depth-first, left-to-right, duplicates kept last (C3 for the hierarchies used here)."""
        out: list[_Class] = []
        for base in cls.bases:
            parent = self.resolve_class(cls.module, base)
            if parent is None:
                continue
            for c in self.mro(parent):
                if c in out:
                    out.remove(c)
                out.append(c)
        return [cls, *out]

    def class_attribute(self, cls: _Class, name: str) -> tuple[_Class, ast.expr] | None:
        """The class (in the MRO) that assigns `name` in its body, and the expression."""
        for klass in self.mro(cls):
            expr = _body_assignment(klass.node, name)
            if expr is not None:
                return klass, expr
        return None

    def value(self, module: str, expr: ast.expr, cls: _Class | None = None, depth: int = 0) -> Any:
        """Evaluate a literal-ish expression; raise _Unresolved otherwise."""
        if depth > 20:
            raise _Unresolved
        ev = functools.partial(self.value, module, cls=cls, depth=depth + 1)
        if isinstance(expr, ast.Constant):
            return expr.value
        if isinstance(expr, (ast.Tuple, ast.List, ast.Set)):
            items = []
            for e in expr.elts:
                if isinstance(e, ast.Starred):
                    items.extend(ev(e.value))
                else:
                    items.append(ev(e))
            return tuple(items) if isinstance(expr, ast.Tuple) else items
        if isinstance(expr, ast.Dict):
            out: dict[Any, Any] = {}
            for k, v in zip(expr.keys, expr.values):
                if k is None:
                    out.update(ev(v))
                else:
                    out[ev(k)] = self._spec(module, v, cls, depth)
            return out
        if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub):
            return -ev(expr.operand)
        if isinstance(expr, ast.BinOp) and type(expr.op) in _BINOPS:
            return _BINOPS[type(expr.op)](ev(expr.left), ev(expr.right))
        if isinstance(expr, ast.JoinedStr):
            parts = []
            for v in expr.values:
                if isinstance(v, ast.FormattedValue):
                    spec = "" if v.format_spec is None else ev(v.format_spec)
                    parts.append(format(ev(v.value), spec))
                else:
                    parts.append(ev(v))
            return "".join(parts)
        if isinstance(expr, ast.Name):
            if cls is not None:
                local = _body_assignment(cls.node, expr.id)
                if local is not None and not (isinstance(local, ast.Name) and local.id == expr.id):
                    return self.value(module, local, cls, depth + 1)
            assigned = self._module_assignment(module, expr.id)
            if assigned is not None:
                return self.value(module, assigned, None, depth + 1)
            source = self.imports.get(module, {}).get(expr.id)
            if source and source[0] in self.modules:
                assigned = self._module_assignment(*source)
                if assigned is not None:
                    return self.value(source[0], assigned, None, depth + 1)
            raise _Unresolved
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and not expr.keywords \
                and expr.func.id in _BUILTINS and len(expr.args) == 1:
            return _BUILTINS[expr.func.id](ev(expr.args[0]))
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            owner = self.resolve_class(module, expr.value)
            if owner is not None:
                found = self.class_attribute(owner, expr.attr)
                if found is not None:
                    return self.value(found[0].module, found[1], found[0], depth + 1)
        raise _Unresolved

    def _spec(self, module: str, expr: ast.expr, cls: _Class | None, depth: int) -> Any:
        """A dict value: `HParam(default, ...)` -> its default; anything else evaluated or UNKNOWN."""
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "HParam":
            try:
                return _HParamStub(self.value(module, expr.args[0], cls, depth + 1))
            except (_Unresolved, IndexError):
                return _HParamStub(UNKNOWN)
        try:
            return self.value(module, expr, cls, depth + 1)
        except _Unresolved:
            return UNKNOWN

    def attribute(self, cls: _Class, name: str, default: Any = UNKNOWN) -> Any:
        found = self.class_attribute(cls, name)
        if found is None:
            return default
        try:
            return self.value(found[0].module, found[1], found[0])
        except _Unresolved:
            return UNKNOWN

    def merged_dict(self, cls: _Class, name: str) -> dict[str, Any]:
        """`name` (a dict) merged over the MRO, subclasses last (as `Algorithm.hparam_space`)."""
        merged: dict[str, Any] = {}
        for klass in reversed(self.mro(cls)):
            expr = _body_assignment(klass.node, name)
            if expr is None:
                continue
            try:
                spec = self.value(klass.module, expr, klass)
            except _Unresolved:
                spec = UNKNOWN
            if not isinstance(spec, dict):
                continue
            for k, v in spec.items():
                merged[k] = v.default if isinstance(v, _HParamStub) else UNKNOWN
        return merged


def _body_assignment(node: ast.ClassDef, name: str) -> ast.expr | None:
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                for t in stmt.targets):
            return stmt.value
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                and stmt.target.id == name and stmt.value is not None:
            return stmt.value
    return None


def _summary(node: ast.ClassDef) -> str:
    doc = ast.get_docstring(node) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def _package_modules(package: str) -> dict[str, Path]:
    """Module name -> source file of a package's modules, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return {}
    out = {}
    for location in spec.submodule_search_locations:
        for path in sorted(Path(location).glob("*.py")):
            if not path.stem.startswith("_"):
                out[f"{package}.{path.stem}"] = path
    return out


def _module_file(module: str) -> dict[str, Path]:
    spec = importlib.util.find_spec(module)
    return {module: Path(spec.origin)} if spec and spec.origin else {}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "shiftbench"


def _encode(x: Any) -> Any:
    """JSON-ready form of an index (no pickle: the cache directory is not trusted with code)."""
    if x is UNKNOWN:
        return {"$": "unknown"}
    if isinstance(x, (AlgorithmEntry, DatasetEntry)):
        return {"$": type(x).__name__, "fields": {k: _encode(v) for k, v in vars(x).items()}}
    if isinstance(x, tuple):
        return {"$": "tuple", "items": [_encode(v) for v in x]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if isinstance(x, dict):
        return {"$": "dict", "items": [[_encode(k), _encode(v)] for k, v in x.items()]}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot cache {type(x).__name__}")


_ENTRIES = {"AlgorithmEntry": AlgorithmEntry, "DatasetEntry": DatasetEntry}


def _decode(x: Any) -> Any:
    if isinstance(x, list):
        return [_decode(v) for v in x]
    if not isinstance(x, dict):
        return x
    kind = x["$"]
    if kind == "unknown":
        return UNKNOWN
    if kind == "tuple":
        return tuple(_decode(v) for v in x["items"])
    if kind == "dict":
        return {_decode(k): _decode(v) for k, v in x["items"]}
    return _ENTRIES[kind](**{k: _decode(v) for k, v in x["fields"].items()})


def _cached(kind: str, modules: dict[str, Path], build: Any) -> Any:
    """`build(modules)`, or its earlier result if no file in `modules` changed since."""
    try:
        files = {**modules, "(index code)": Path(__file__)}  # a new reader rebuilds, too
        stamp = [(m, str(p), p.stat().st_size, p.stat().st_mtime_ns) for m, p in files.items()]
    except OSError:
        return build(modules)
    where = hashlib.sha256(repr(sorted(str(p) for p in modules.values())).encode()).hexdigest()[:8]
    key = hashlib.sha256(repr((kind, stamp)).encode()).hexdigest()[:16]
    path = _cache_dir() / f"catalog-{kind}-{where}-{key}.json"
    try:
        return _decode(json.loads(path.read_text(encoding="utf-8")))
    except Exception:  # noqa: BLE001 - missing, unreadable or from another version: rebuild
        pass
    result = build(modules)
    try:
        text = json.dumps(_encode(result))
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"catalog-{kind}-{where}-*.json"):  # this checkout's
            old.unlink(missing_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except (OSError, TypeError):
        pass  # a read-only home, or a value JSON cannot hold: the index is rebuilt each time
    return result


def _build_algorithms(modules: dict[str, Path]) -> dict[str, AlgorithmEntry]:
    src = _Source(modules, "register_algorithm")
    out = {}
    for cls in src.order:
        settings = src.attribute(cls, "SETTINGS")
        out[cls.registered_as] = AlgorithmEntry(
            cls.registered_as, cls.module, tuple(settings) if settings is not UNKNOWN else UNKNOWN,
            src.attribute(cls, "PAPER", ""), _summary(cls.node), src.merged_dict(cls, "HPARAMS"))
    return out


def _build_datasets(modules: dict[str, Path]) -> dict[str, DatasetEntry]:
    src = _Source(modules, "register_dataset")
    out = {}
    for cls in src.order:
        def get(attr: str, default: Any = UNKNOWN, cls: _Class = cls) -> Any:
            return src.attribute(cls, attr, default)

        envs, shape = get("ENVIRONMENTS"), get("INPUT_SHAPE")
        out[cls.registered_as] = DatasetEntry(
            cls.registered_as, cls.module,
            tuple(str(e) for e in envs) if envs is not UNKNOWN else UNKNOWN,
            tuple(shape) if shape is not UNKNOWN else UNKNOWN, get("NUM_CLASSES"),
            get("N_STEPS", UNKNOWN), get("SOURCE", ""), _summary(cls.node))
    return out


@functools.lru_cache(maxsize=1)
def algorithm_index() -> dict[str, AlgorithmEntry]:
    """Every built-in algorithm, in registration order (ERM first, as the package imports them)."""
    modules = _package_modules(ALGORITHM_PACKAGE)
    ordered = dict(sorted(modules.items(), key=lambda kv: (not kv[0].endswith(".erm"), kv[0])))
    return _cached("algorithms", ordered, _build_algorithms)


@functools.lru_cache(maxsize=1)
def dataset_index() -> dict[str, DatasetEntry]:
    """Every built-in dataset (and the demo's), in registration order."""
    modules: dict[str, Path] = {}
    for package in DATASET_PACKAGES:
        modules.update(_package_modules(package))
    for module in EXTRA_DATASET_MODULES:
        modules.update(_module_file(module))
    return _cached("datasets", modules, _build_datasets)


def plugin_entry_points(kind: str) -> list[importlib.metadata.EntryPoint]:
    """Installed entry points of the `shiftbench.algorithms` / `shiftbench.datasets` groups."""
    return list(importlib.metadata.entry_points(group=f"shiftbench.{kind}"))


def needs_import(kind: str, name: str, imports: tuple[str, ...] | list[str] = ()) -> bool:
    """True when `name` may come from code the index cannot see (plug-ins, --import modules)."""
    index = algorithm_index() if kind == "algorithms" else dataset_index()
    return name not in index and bool(imports or plugin_entry_points(kind)
                                      or _registered_in_process(kind, name))


def _registered_in_process(kind: str, name: str) -> bool:
    """True for a name this process registered at run time (`register_arrays`,
    `register_image_folder`, a notebook's own class) when its registry is already imported."""
    import sys

    module = sys.modules.get(f"shiftbench.{kind}")
    registry = getattr(module, "DATASETS" if kind == "datasets" else "ALGORITHM_REGISTRY", None)
    return registry is not None and name in registry


def iter_complete(kind: str) -> Iterator[str]:
    """Names whose entries were fully read (no UNKNOWN field)."""
    index = algorithm_index() if kind == "algorithms" else dataset_index()
    for name, entry in index.items():
        fields = [v for k, v in vars(entry).items() if k != "hparams"]
        if all(v is not UNKNOWN for v in fields):
            yield name
