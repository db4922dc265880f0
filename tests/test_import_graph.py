"""The package's import graph (every import statement, module level or inside a function, except
`if TYPE_CHECKING:` blocks) has no cycles but the known ones listed here, which are to go."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"benchmark": "shiftbench", "algorithms": "shiftbench.algorithms",
           "datasets": "shiftbench.datasets", "sweeps": "shiftbench.sweeps",
           "results": "shiftbench.results"}
# Cycles allowed to remain: none. (The last ones, through the table builders that `collect`
# registered and the HTML report that `render` dispatched to, were broken by moving the builder
# registry to results/builders.py and `render` to results/formats.py.)
KNOWN: set[frozenset[str]] = set()


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).glob("*.py"):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.dump(node.test) for n in ast.walk(node)}
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = package + (f".{base}" if base else "")
            for alias in node.names:  # `from package import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    out = set()
    for module in found:
        while module not in known and "." in module:
            module = module.rpartition(".")[0]
        if module in known and module != name:
            out.add(module)
    return out


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    found = cycles(graph)
    new = [sorted(c) for c in found - KNOWN]
    assert not new, f"import cycles: {new}"
    gone = [sorted(c) for c in KNOWN - found]
    assert not gone, f"cycles broken (remove them from KNOWN): {gone}"


def test_the_graph_walk_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}


def test_every_module_is_in_the_architecture_map():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    sections = doc.split("### `")[1:]
    listed = {section.split("/`")[0]: section for section in sections}
    missing = [f"{path.parent.name}/{path.name}" for path in modules().values()
               if f"| `{path.name}` |" not in listed.get(path.parent.name, "")]
    assert not missing, f"modules missing from docs/architecture.md: {missing}"


# Training's own modules: none imports the collector (shiftbench.results).
TRAINING = ("shiftbench.loop", "shiftbench.trial", "shiftbench.evaluation",
            "shiftbench.seg_evaluation", "shiftbench.dev_validation", "shiftbench.scores",
            "shiftbench.checkpoints", "shiftbench.data", "shiftbench.splits", "shiftbench.health",
            "shiftbench.trial_record")


def test_training_does_not_import_the_collector():
    known = modules()
    found = {(name, target) for name in TRAINING
             for target in imports_of(name, known[name], known)
             if target.startswith("shiftbench.results")}
    assert not found, found
