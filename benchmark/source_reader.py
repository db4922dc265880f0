"""Read class constants of registered classes from Python source with `ast`, without importing it.

`SourceReader` parses a few modules, follows their `from ... import` names between them, finds the
classes decorated with a registry decorator (in registration order) and evaluates the literal
expressions of their class attributes (`SETTINGS`, `HPARAMS`, `ENVIRONMENTS`, ...), following base
classes. Anything it cannot evaluate is `UNKNOWN`. Used by `shiftbench.catalog`.
"""

from __future__ import annotations

import ast
import functools
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class _Unknown:
    """A value the index could not read from the source."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


class _Unresolved(Exception):
    pass


@dataclass
class _HParamStub:
    default: Any


@dataclass
class ReaderClass:
    name: str
    module: str
    node: ast.ClassDef
    bases: list[ast.expr]
    registered_as: str | None  # the registry name, if decorated


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}

_BUILTINS = {"len": len, "tuple": tuple, "list": list, "str": str, "int": int, "float": float}


class SourceReader:
    """The parsed modules of a few packages, with enough name resolution to read class constants."""

    def __init__(self, modules: dict[str, Path], decorator: str):
        self.modules: dict[str, ast.Module] = {}
        self.imports: dict[str, dict[str, tuple[str, str]]] = {}  # module -> local -> (module, name)
        self.classes: dict[tuple[str, str], ReaderClass] = {}
        self.order: list[ReaderClass] = []  # registration order (import order, then file order)
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
            cls = ReaderClass(node.name, module, node, list(node.bases), registered)
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

    def resolve_class(self, module: str, expr: ast.expr) -> ReaderClass | None:
        if isinstance(expr, ast.Name):
            if (module, expr.id) in self.classes:
                return self.classes[(module, expr.id)]
            source = self.imports.get(module, {}).get(expr.id)
            if source and source in self.classes:
                return self.classes[source]
        return None

    def mro(self, cls: ReaderClass) -> list[ReaderClass]:
        """Depth-first, left-to-right, duplicates kept last (C3 for the hierarchies used here)."""
        out: list[ReaderClass] = []
        for base in cls.bases:
            parent = self.resolve_class(cls.module, base)
            if parent is None:
                continue
            for c in self.mro(parent):
                if c in out:
                    out.remove(c)
                out.append(c)
        return [cls, *out]

    def class_attribute(self, cls: ReaderClass, name: str) -> tuple[ReaderClass, ast.expr] | None:
        """The class (in the MRO) that assigns `name` in its body, and the expression."""
        for klass in self.mro(cls):
            expr = body_assignment(klass.node, name)
            if expr is not None:
                return klass, expr
        return None

    def value(self, module: str, expr: ast.expr, cls: ReaderClass | None = None, depth: int = 0) -> Any:
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
                local = body_assignment(cls.node, expr.id)
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

    def _spec(self, module: str, expr: ast.expr, cls: ReaderClass | None, depth: int) -> Any:
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

    def attribute(self, cls: ReaderClass, name: str, default: Any = UNKNOWN) -> Any:
        found = self.class_attribute(cls, name)
        if found is None:
            return default
        try:
            return self.value(found[0].module, found[1], found[0])
        except _Unresolved:
            return UNKNOWN

    def merged_dict(self, cls: ReaderClass, name: str) -> dict[str, Any]:
        """`name` (a dict) merged over the MRO, subclasses last (as `Algorithm.hparam_space`)."""
        merged: dict[str, Any] = {}
        for klass in reversed(self.mro(cls)):
            expr = body_assignment(klass.node, name)
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


def body_assignment(node: ast.ClassDef, name: str) -> ast.expr | None:
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                for t in stmt.targets):
            return stmt.value
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                and stmt.target.id == name and stmt.value is not None:
            return stmt.value
    return None


def summary(node: ast.ClassDef) -> str:
    doc = ast.get_docstring(node) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")
