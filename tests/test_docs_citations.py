"""Files and modules the documentation cites exist in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(ROOT.glob("docs/*.md")) + [ROOT / "README.md"]
TOP_FOLDERS = ("benchmark", "algorithms", "datasets", "sweeps", "results", "bench", "tests", "docs",
               "examples", ".ci")
# A repository path: a top folder, then a name with an extension or a trailing slash, or any name
# inside backticks (so that "examples/s", a rate, is not taken for a path).
PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(map(re.escape, TOP_FOLDERS))})/[\w./*<>-]*[\w*/])")
MODULE = re.compile(r"(?<![\w.])shiftbench(?:\.\w+)+")
PACKAGES = {"shiftbench": "benchmark", "shiftbench.algorithms": "algorithms",
            "shiftbench.datasets": "datasets", "shiftbench.sweeps": "sweeps",
            "shiftbench.results": "results"}


def cited_paths(text: str) -> set[str]:
    """The repository paths a Markdown text cites (see `PATH`)."""
    out = set()
    for match in PATH.finditer(text):
        path = match.group(1)
        quoted = text[match.start() - 1:match.start()] == "`"
        if quoted or path.endswith("/") or re.search(r"\.\w+$", path):
            out.add(path)
    return out


def exists(path: str) -> bool:
    if "<" in path:  # a pattern such as bench/results/<date>.txt: its folder must exist
        path = path[:path.index("<")].rsplit("/", 1)[0]
    return bool(list(ROOT.glob(path))) if "*" in path else (ROOT / path).exists()


def module_file(name: str) -> Path | None:
    """The source file of a dotted `shiftbench` module name, if it is one."""
    package = max((p for p in PACKAGES if name == p or name.startswith(p + ".")), key=len)
    rest = name[len(package):].lstrip(".")
    base = ROOT / PACKAGES[package] / Path(*rest.split(".")) if rest else ROOT / PACKAGES[package]
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def entry_point_groups() -> set[str]:
    """The entry-point groups the registries read (they look like module names)."""
    groups: set[str] = set()
    for folder in PACKAGES.values():
        for source in ROOT.glob(f"{folder}/*.py"):
            groups.update(re.findall(r"= Registry\(\"[^\"]+\", \"([\w.]+)\"", source.read_text()))
    return groups


def test_path_pattern():
    text = ("see `benchmark/setting.py`, tests/fixtures/sweep-r1/ and bench/bench_cli.py; 510 "
            "examples/s; `tests/fixtures/sweep-r1`; results/*.py; bench/results/<date>.txt")
    assert cited_paths(text) == {"benchmark/setting.py", "tests/fixtures/sweep-r1/",
                                 "bench/bench_cli.py", "tests/fixtures/sweep-r1", "results/*.py",
                                 "bench/results/<date>.txt"}
    assert not exists("benchmark/no_such_module.py") and exists("results/*.py")
    assert module_file("shiftbench.trial_record") == ROOT / "benchmark" / "trial_record.py"
    assert module_file("shiftbench.datasets") == ROOT / "datasets" / "__init__.py"
    assert module_file("shiftbench.datasets.nothing") is None
    assert "shiftbench.launchers" in entry_point_groups()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_cited_files_exist(document: Path):
    missing = sorted(p for p in cited_paths(document.read_text(encoding="utf-8")) if not exists(p))
    assert not missing, f"{document.name} cites files that do not exist: {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_cited_modules_exist(document: Path):
    """`shiftbench.x.y` is a module, or a name defined in module `shiftbench.x`, or an
    entry-point group."""
    groups = entry_point_groups()
    missing = []
    for name in sorted(set(MODULE.findall(document.read_text(encoding="utf-8")))):
        if name in groups or module_file(name) is not None:
            continue
        parent, attribute = name.rsplit(".", 1)
        source = module_file(parent)
        if source is None or not re.search(rf"\b{attribute}\b", source.read_text()):
            missing.append(name)
    assert not missing, f"{document.name} cites modules or names that do not exist: {missing}"
