"""Renderings of a `Collection`: text, Markdown, LaTeX, CSV (one line per cell) and JSON.

`results.formats.render` picks one of these, the HTML report or DomainBed's layout by name.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from shiftbench.results.table_model import Collection, Table


def grid(table: Table, style: str) -> list[list[str]]:
    """The table's rows as strings: row name, then each cell's display."""
    return [[name] + [c.display(style, table.digits) for c in cells]
            for name, cells in zip(table.rows, table.cells)]


def summary_lines(collection: Collection) -> list[str]:
    """What was read and which rules selected, one line each."""
    s = collection.summary
    lines = [f"Total records: {s.get('records', 0)}"]
    if "jobs" in s:
        lines.append(
            f"Trials: {s['jobs']} ({s['done']} done, {s['incomplete']} incomplete, {s['failed']} "
            f"failed); duplicate records dropped: {s['duplicates_dropped']}; bad lines skipped: "
            f"{s['bad_lines']}; truncated files: {s['truncated_files']}; unreadable files: "
            f"{s['unreadable_files']}")
    lines.append("Selection rules: " + ", ".join(f"{r} ({collection.titles[r]})"
                                                 for r in collection.rules))
    if collection.health is not None:
        lines.append(collection.health.summary_line())
    lines.extend(collection.notes)
    return lines


def text_table(t: Table) -> list[str]:
    """One table as plain-text lines: a `--------` title line, the grid, the notes."""
    from tabulate import tabulate

    out = ["", f"-------- {t.title}"]
    if t.rows:
        out.append(tabulate(grid(t, "text"), headers=[t.row_label, *t.columns],
                            tablefmt="simple", disable_numparse=True))
    out += [f"  {n}" for n in t.notes]
    return out


def render_text(collection: Collection) -> str:
    out = summary_lines(collection)
    for t in collection.tables:
        out += text_table(t)
    return "\n".join(out) + "\n"


def render_markdown(collection: Collection) -> str:
    from tabulate import tabulate

    out = ["# Results", ""] + [f"- {line}" for line in summary_lines(collection)]
    current_rule: object = object()
    for t in collection.tables:
        if t.rule != current_rule or t.kind == "health":
            current_rule = t.rule
            heading = (f"Model selection: {collection.titles[t.rule]}" if t.rule
                       else "Run health" if t.kind == "health" else "Search budgets")
            out += ["", f"## {heading}"]
        out += ["", f"### {t.title}", ""]
        if t.rows:
            out.append(tabulate(grid(t, "markdown"), headers=[t.row_label, *t.columns],
                                tablefmt="pipe", disable_numparse=True))
        if t.notes:
            out.append("")
            out += [f"> {n}  " for n in t.notes]
    return "\n".join(out) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def render_latex(collection: Collection) -> str:
    out = [r"\documentclass{article}", r"\usepackage{booktabs}", r"\usepackage{adjustbox}",
           r"\begin{document}", r"\section*{Results}"]
    out += [f"% {line}" for line in summary_lines(collection)]
    for t in collection.tables:
        out += ["", r"\begin{table}[ht]", r"\centering", rf"\caption{{{latex_escape(t.title)}}}"]
        if t.rows:
            out += [r"\adjustbox{max width=\textwidth}{%",
                    r"\begin{tabular}{l" + "c" * len(t.columns) + "}", r"\toprule",
                    " & ".join(latex_escape(c) for c in [t.row_label, *t.columns]) + r" \\",
                    r"\midrule"]
            for name, cells in zip(t.rows, t.cells):
                shown = []
                for c in cells:
                    text = c.display("latex", t.digits)
                    shown.append(text if c.text is None and c.mean is not None and c.err is not None
                                 else latex_escape(text))
                out.append(" & ".join([latex_escape(name), *shown]) + r" \\")
            out += [r"\bottomrule", r"\end{tabular}}"]
        for n in t.notes:
            out.append(r"\par\footnotesize " + latex_escape(n))
        out.append(r"\end{table}")
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"


CSV_FIELDS = ("kind", "rule", "task", "dataset", "table", "row", "column", "mean", "err", "n",
              "p_value", "display", "health")


def render_csv(collection: Collection) -> str:
    """One line per cell (tidy format); empty fields for missing numbers."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for t in collection.tables:
        for name, cells in zip(t.rows, t.cells):
            for col, c in zip(t.columns, cells):
                w.writerow({"kind": t.kind, "rule": t.rule or "", "task": t.task,
                            "dataset": t.dataset or "", "table": t.title, "row": name,
                            "column": col, "mean": "" if c.mean is None else repr(c.mean),
                            "err": "" if c.err is None else repr(c.err), "n": c.n,
                            "p_value": "" if c.p_value is None else repr(c.p_value),
                            "display": c.display("csv", t.digits),
                            "health": ";".join(c.health)})
    return buf.getvalue()


def collection_to_dict(collection: Collection) -> dict[str, Any]:
    return {
        "summary": collection.summary, "rules": collection.rules, "titles": collection.titles,
        "baseline": collection.baseline, "notes": collection.notes,
        "tables": [t.to_dict() for t in collection.tables],
        "selected": {r: [s.to_dict() for s in sel] for r, sel in collection.selected.items()},
        "health": None if collection.health is None else collection.health.to_dict(),
    }


def render_json(collection: Collection) -> str:
    return json.dumps(collection_to_dict(collection), indent=1, default=str) + "\n"
