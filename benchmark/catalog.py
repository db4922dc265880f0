"""What is registered, known without importing torch: an index read from the source with `ast`.

The algorithm and dataset modules import torch (seconds of CPU: docs/benchmarks.md), yet
`--help`, `list` and name errors need only names, settings, papers, environments and declared
defaults. This module
parses the modules of `shiftbench.algorithms` and `shiftbench.datasets` (plus the demo's
`shiftbench.demo_data`) without executing them, and evaluates the class attributes the registry
reads (`SETTINGS`, `PAPER`, `HPARAMS`, `ENVIRONMENTS`, ...) from their literal expressions. The
index is cached in the user's cache directory, keyed by the path, size and modification time of
every file read (a changed file rebuilds it), so it cannot go stale; a test checks it
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
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shiftbench import source_reader
from shiftbench.source_reader import UNKNOWN, ReaderClass, SourceReader, summary

ALGORITHM_PACKAGE = "shiftbench.algorithms"
DATASET_PACKAGES = ("shiftbench.datasets",)
EXTRA_DATASET_MODULES = ("shiftbench.demo_data",)  # registered on import by the demo
# modules outside the algorithm package whose dicts algorithm classes splat into their HPARAMS
EXTRA_ALGORITHM_MODULES = ("shiftbench.datasets.road_protocol",)
# Where a dataset's files are and where they come from (read by `shiftbench data list`).
FILE_ATTRIBUTES = ("DATA_SUBDIR", "DOMAIN_FOLDERS", "DOMAIN_SUBPATH", "URL", "LICENSE", "FOLDER")


@dataclass(frozen=True)
class AlgorithmEntry:
    name: str
    module: str
    settings: tuple[str, ...]
    paper: str
    summary: str
    hparams: dict[str, Any]  # every declared hparam (bases included) -> default, or UNKNOWN
    task_types: tuple[str, ...]  # the dataset task types it trains on
    # `PHASES = PhaseSchedule(source_fraction, rounds, by_progress=...)` as (source_fraction,
    # rounds, by_progress), None for algorithms without phases (read by shiftbench.phases)
    phases: Any = None


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
    bases: tuple[str, ...]  # the class names of its MRO, itself first
    files: dict[str, Any]  # the `FILE_ATTRIBUTES` its class (or a base) sets, by name
    task_type: str  # "classification" unless the class declares `TASK_TYPE`
    image_cache: bool  # whether it reads a preprocessed image cache (`IMAGE_CACHE`)


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
        # a new reader rebuilds, too
        files = {**modules, "(index code)": Path(__file__), "(reader code)": Path(source_reader.__file__)}
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
    src = SourceReader(modules, "register_algorithm")
    out = {}
    for cls in src.order:
        settings, task_types = src.attribute(cls, "SETTINGS"), src.attribute(cls, "TASK_TYPES")
        out[cls.registered_as] = AlgorithmEntry(
            cls.registered_as, cls.module, tuple(settings) if settings is not UNKNOWN else UNKNOWN,
            src.attribute(cls, "PAPER", ""), summary(cls.node), src.merged_dict(cls, "HPARAMS"),
            tuple(task_types) if task_types is not UNKNOWN else UNKNOWN, _phases(src, cls))
    return out


def _phases(src: SourceReader, cls: ReaderClass) -> Any:
    """The `PhaseSchedule(...)` arguments of the class's `PHASES` (see `AlgorithmEntry.phases`)."""
    found = src.class_attribute(cls, "PHASES")
    if found is None:
        return None
    owner, expr = found
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)
            and expr.func.id == "PhaseSchedule"):
        return UNKNOWN
    try:
        args = [src.value(owner.module, a, owner) for a in expr.args]
        keywords = {k.arg: src.value(owner.module, k.value, owner) for k in expr.keywords}
    except Exception:  # noqa: BLE001 - not literal
        return UNKNOWN
    names = ("source_fraction", "rounds", "by_progress")
    values = {**dict(zip(names, args)), **keywords}
    return (values.get("source_fraction", UNKNOWN), values.get("rounds"),
            bool(values.get("by_progress", False)))


def _build_datasets(modules: dict[str, Path]) -> dict[str, DatasetEntry]:
    src = SourceReader(modules, "register_dataset")
    out = {}
    for cls in src.order:
        def get(attr: str, default: Any = UNKNOWN, cls: ReaderClass = cls) -> Any:
            return src.attribute(cls, attr, default)

        envs, shape = get("ENVIRONMENTS"), get("INPUT_SHAPE")
        out[cls.registered_as] = DatasetEntry(
            cls.registered_as, cls.module,
            tuple(str(e) for e in envs) if envs is not UNKNOWN else UNKNOWN,
            tuple(shape) if shape is not UNKNOWN else UNKNOWN, get("NUM_CLASSES"),
            get("N_STEPS", UNKNOWN), get("SOURCE", ""), summary(cls.node),
            tuple(c.name for c in src.mro(cls)),
            {a: get(a) for a in FILE_ATTRIBUTES if src.class_attribute(cls, a) is not None},
            get("TASK_TYPE", "classification"), get("IMAGE_CACHE", False))
    return out


@functools.lru_cache(maxsize=1)
def algorithm_index() -> dict[str, AlgorithmEntry]:
    """Every built-in algorithm, in registration order (ERM first, as the package imports them)."""
    modules = _package_modules(ALGORITHM_PACKAGE)
    ordered = dict(sorted(modules.items(), key=lambda kv: (not kv[0].endswith(".erm"), kv[0])))
    for module in EXTRA_ALGORITHM_MODULES:  # found without importing their package
        package = module.rpartition(".")[0]
        ordered.update({m: f for m, f in _package_modules(package).items() if m == module})
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

    # the modules that define the registries (the datasets package imports its modules lazily)
    module = sys.modules.get(f"shiftbench.{kind}.base")
    registry = getattr(module, "DATASETS" if kind == "datasets" else "ALGORITHM_REGISTRY", None)
    return registry is not None and name in registry


def iter_complete(kind: str) -> Iterator[str]:
    """Names whose entries were fully read (no UNKNOWN field)."""
    index = algorithm_index() if kind == "algorithms" else dataset_index()
    for name, entry in index.items():
        fields = [v for k, v in vars(entry).items() if k != "hparams"]
        if all(v is not UNKNOWN for v in fields):
            yield name
