"""The data model of result tables: a `Cell`, a `Table` of cells, and a `Collection` of tables.

A cell holds numbers in display units (accuracy %, rank, points) plus how to show them; tables are
built by `results.builders`, rendered by `results.renderers`, and collected by `results.tables`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from shiftbench.results.selection import Selected

MISSING = "X"  # no value


@dataclass
class Cell:
    """One table entry; `mean`/`err` in display units (accuracy %, rank, points)."""

    mean: float | None = None
    err: float | None = None
    n: int = 0
    values: list[float] | None = None
    p_value: float | None = None
    text: str | None = None  # replaces the numeric display (e.g. "-", "18-20")
    flag: str = ""
    signed: bool = False  # a difference: the mean printed with its sign
    suffix: str = ""  # e.g. " (p=0.03, n=3)"
    health: tuple[str, ...] = ()  # health flags of the trials behind it (`results.health`)

    def display(self, style: str = "text", digits: int = 1) -> str:
        """The cell as printed: mean ± standard error; `(n=1)` for a single trial (whose error
        is undefined), then the suffix, the flag and the health marks."""
        if self.text is not None:
            out = self.text
        elif self.mean is None:
            out = MISSING
        else:
            out = f"{self.mean:{'+' if self.signed else ''}.{digits}f}"
            if self.err is not None:
                pm = {"latex": r"$\pm$", "text": "+/-"}.get(style, "±")
                out += f" {pm} {self.err:.{digits}f}"
            elif self.n == 1 and not self.suffix:
                out += " (n=1)"
            out += self.suffix
        return out + self.flag + self.marks()

    def marks(self) -> str:
        if not self.health:
            return ""
        from shiftbench.health import marks

        return " " + marks(self.health)

    def to_dict(self, digits: int = 1) -> dict[str, Any]:
        return {"mean": clean(self.mean), "err": clean(self.err), "n": self.n,
                "values": self.values, "p_value": clean(self.p_value),
                "health": list(self.health), "display": self.display("json", digits)}


def clean(x: float | None) -> float | None:
    """None for None and NaN, else x (JSON has no NaN)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


@dataclass
class Table:
    """Rows (algorithms) x columns of cells, with a title, notes and what the table is about."""

    kind: str  # dataset | averages | ranks | baseline | budget (extensions add their own)
    title: str
    rule: str | None
    task: str
    dataset: str | None
    columns: list[str]
    rows: list[str]
    cells: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    digits: int = 1
    row_label: str = "Algorithm"

    def row(self, name: str) -> dict[str, Cell]:
        """Column name -> cell of the row `name`."""
        return dict(zip(self.columns, self.cells[self.rows.index(name)]))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "rule": self.rule, "task": self.task,
                "dataset": self.dataset, "columns": self.columns, "notes": self.notes,
                "rows": [{"row": r, "cells": {c: cell.to_dict(self.digits)
                                              for c, cell in zip(self.columns, cells)}}
                         for r, cells in zip(self.rows, self.cells)]}

    def to_frame(self, what: str = "mean") -> pd.DataFrame:
        """A pandas DataFrame indexed by row name: `what` = "mean", "err", "n", "p_value" (numbers,
        NaN where missing), "display" (the strings a renderer prints) or "health" (each cell's
        health flags, comma-separated; "" for none)."""
        import pandas as pd

        def value(c: Cell) -> Any:
            if what == "display":
                return c.display("text", self.digits)
            if what == "health":
                return ", ".join(c.health)
            v = getattr(c, what)
            return float("nan") if v is None else v

        frame = pd.DataFrame([[value(c) for c in cells] for cells in self.cells],
                             index=pd.Index(self.rows, name=self.row_label), columns=self.columns)
        return frame


@dataclass
class Collection:
    """Everything `shiftbench collect` prints: tables per rule plus what was read."""

    summary: dict[str, Any]
    rules: list[str]
    titles: dict[str, str]
    selected: dict[str, list[Selected]]
    tables: list[Table]
    notes: list[str]
    records: list[dict[str, Any]]
    baseline: str | None
    health: Any = None  # results.health.HealthReport
