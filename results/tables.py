"""Result tables from selected runs, and their text, Markdown, LaTeX, CSV and JSON renderings.

Tables per selection rule and task:
* per dataset: algorithms x held-out environments + `Avg`. A cell is the mean +/- standard error,
  over trial seeds, of the selected run's test accuracy (in %); `X` when no trial has a value.
  `Avg` is the mean of the row's cells, `X` if any cell is `X` (DomainBed's definition).
* averages: algorithms x datasets + `Avg`. For each trial, the mean over the dataset's held-out
  environments, then mean +/- error over trials. A trial missing an environment is left out, and
  the cell says so (`*` and a note); if no trial is complete the cell is `X` (unlike DomainBed,
  which averages whatever environments a trial has).
* average rank: per dataset, algorithms ranked by their `Avg` (1 = best, ties share the mean
  rank); `Avg rank` over datasets, `X` if an algorithm is unranked on one of them.
* against a baseline (default ERM): per dataset and overall, the mean per-trial difference of
  the averages (in points) and the two-sided paired t-test p-value over the shared trial seeds.
Once per task: the number of hyperparameter configurations each algorithm had (flagged `!`
where it differs from the baseline's).

`--format domainbed` (see `domainbed_format`) prints DomainBed's collect_results layout, numbers
included, for users who diff against old outputs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.results.reading import Sweep, as_records
from shiftbench.results.selection import (
    CLASSIC_RULES,
    Selected,
    applicable_rules,
    get_selection_rule,
    select,
)
from shiftbench.results.stats import hparam_budgets, mean_and_error, paired_test, unequal_budgets

FORMATS = ("text", "markdown", "latex", "csv", "json", "html", "domainbed")
MISSING = "X"  # no value

# DomainBed's environment names for datasets we may not have registered.
DOMAINBED_ENVIRONMENTS = {
    "Debug28": ["0", "1", "2"], "Debug224": ["0", "1", "2"],
    "ColoredMNIST": ["+90%", "+80%", "-90%"], "RotatedMNIST": ["0", "15", "30", "45", "60", "75"],
    "VLCS": ["C", "L", "S", "V"], "PACS": ["A", "C", "P", "S"], "OfficeHome": ["A", "C", "P", "R"],
    "TerraIncognita": ["L100", "L38", "L43", "L46"],
    "DomainNet": ["clip", "info", "paint", "quick", "real", "sketch"],
    "SVIRO": ["aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe"],
    "WILDSCamelyon": [f"hospital_{i}" for i in range(5)],
    "WILDSFMoW": [f"region_{i}" for i in range(6)],
    **{f"Spawrious{kind}_{level}": ["Test", "SC_group_1", "SC_group_2"]
       for kind in ("O2O", "M2M") for level in ("easy", "medium", "hard")},
}
# DomainBed's row and table order (its ALGORITHMS and DATASETS lists), for --format domainbed.
DOMAINBED_ALGORITHMS = (
    "ERM", "ERMPlusPlus", "Fish", "IRM", "GroupDRO", "Mixup", "MLDG", "CORAL", "MMD", "DANN",
    "CDANN", "MTL", "SagNet", "ARM", "VREx", "RSC", "SD", "ANDMask", "SANDMask", "IGA", "SelfReg",
    "Fishr", "TRM", "IB_ERM", "IB_IRM", "CAD", "CondCAD", "Transfer", "CausIRL_CORAL",
    "CausIRL_MMD", "EQRM", "RDM", "ADRMX", "URM")
DOMAINBED_DATASETS = tuple(DOMAINBED_ENVIRONMENTS)


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

    def display(self, style: str = "text", digits: int = 1) -> str:
        if self.text is not None:
            out = self.text
        elif self.mean is None:
            out = MISSING
        elif self.err is None:
            out = f"{self.mean:.{digits}f}"
        else:
            pm = {"latex": r"$\pm$", "text": "+/-"}.get(style, "±")
            out = f"{self.mean:.{digits}f} {pm} {self.err:.{digits}f}"
        return out + self.flag

    def to_dict(self, digits: int = 1) -> dict[str, Any]:
        return {"mean": _clean(self.mean), "err": _clean(self.err), "n": self.n,
                "values": self.values, "p_value": _clean(self.p_value),
                "display": self.display("json", digits)}


def _clean(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


@dataclass
class Table:
    kind: str  # dataset | averages | ranks | baseline | budget
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

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "rule": self.rule, "task": self.task,
                "dataset": self.dataset, "columns": self.columns, "notes": self.notes,
                "rows": [{"row": r, "cells": {c: cell.to_dict(self.digits)
                                              for c, cell in zip(self.columns, cells)}}
                         for r, cells in zip(self.rows, self.cells)]}


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


# --------------------------------------------------------------------------------------------
# Ordering and names


def environment_names(dataset: str, records: Sequence[dict[str, Any]] = (),
                      prefer_domainbed: bool = False) -> list[str]:
    """A dataset's environment names: our registry, then the records, then DomainBed's list
    (DomainBed's first with `prefer_domainbed`)."""
    if prefer_domainbed and dataset in DOMAINBED_ENVIRONMENTS:
        return list(DOMAINBED_ENVIRONMENTS[dataset])
    try:
        from shiftbench.datasets import get_dataset_class

        return [str(e) for e in get_dataset_class(dataset).ENVIRONMENTS]
    except Exception:  # noqa: BLE001 - any failure (unknown name, import error) falls through
        pass
    for r in records:
        if r["args"]["dataset"] == dataset and isinstance(r.get("environments"), list):
            return [str(e) for e in r["environments"]]
    if dataset in DOMAINBED_ENVIRONMENTS:
        return list(DOMAINBED_ENVIRONMENTS[dataset])
    n = 0
    for r in records:
        if r["args"]["dataset"] == dataset:
            while f"env{n}_out_acc" in r or f"env{n}_in_acc" in r:
                n += 1
    return [str(i) for i in range(n)]


def _ordered(names: Iterable[str], known: Sequence[str]) -> list[str]:
    names = set(names)
    return [n for n in known if n in names] + sorted(n for n in names if n not in known)


def order_algorithms(names: Iterable[str]) -> list[str]:
    try:
        from shiftbench.algorithms import ALGORITHMS
        known = list(ALGORITHMS)
    except Exception:  # noqa: BLE001
        known = []
    return _ordered(names, known)


def order_datasets(names: Iterable[str]) -> list[str]:
    try:
        from shiftbench.datasets import DATASETS
        known = list(DATASETS)
    except Exception:  # noqa: BLE001
        known = []
    return _ordered(names, known + [d for d in DOMAINBED_ENVIRONMENTS if d not in known])


# --------------------------------------------------------------------------------------------
# Building the tables


def _accuracy_cell(fractions: Sequence[float], ddof: int) -> Cell:
    mean, err = mean_and_error(fractions, ddof)
    if mean is None:
        return Cell()
    return Cell(100 * mean, None if err is None else 100 * err, len(fractions),
                [100 * v for v in fractions])


def _index(selected: Sequence[Selected]) -> dict[tuple[str, str, str, int], dict[int, float]]:
    """(task, dataset, algorithm, test_env) -> {trial_seed: selected test accuracy (fraction)}."""
    out: dict[tuple[str, str, str, int], dict[int, float]] = defaultdict(dict)
    for s in selected:
        out[(s.task, s.dataset, s.algorithm, s.test_env)][s.trial_seed] = s.test_acc
    return out


def _trial_averages(index, task: str, dataset: str, algorithm: str, n_envs: int
                    ) -> tuple[dict[int, float], list[int]]:
    """Per trial, the mean over all held-out environments; also the trials missing some."""
    per_trial: dict[int, dict[int, float]] = defaultdict(dict)
    for env in range(n_envs):
        for trial, acc in index.get((task, dataset, algorithm, env), {}).items():
            per_trial[trial][env] = acc
    complete = {t: float(np.mean([accs[e] for e in range(n_envs)]))
                for t, accs in per_trial.items() if len(accs) == n_envs}
    partial = sorted(t for t in per_trial if t not in complete)
    return dict(sorted(complete.items())), partial


def _rule_suffix(task: str) -> str:
    return "" if task == "dg" else f", task: {task}"


def build_rule_tables(rule_name: str, records: Sequence[dict[str, Any]], selected: Sequence[Selected],
                      baseline: str | None, ddof: int = 0) -> list[Table]:
    """The per-dataset, averages, rank and baseline tables of one selection rule."""
    rule = get_selection_rule(rule_name)
    index = _index(selected)
    tables: list[Table] = []
    relevant = [r for r in records if r["args"]["task"] in rule.TASKS]
    for task in sorted({r["args"]["task"] for r in relevant}):
        task_records = [r for r in relevant if r["args"]["task"] == task]
        algorithms = order_algorithms(r["args"]["algorithm"] for r in task_records)
        datasets = order_datasets(r["args"]["dataset"] for r in task_records)
        avg_cols: dict[str, list[Cell]] = {a: [] for a in algorithms}
        avg_notes: list[str] = []
        per_trial_avgs: dict[tuple[str, str], dict[int, float]] = {}
        dataset_avgs: dict[str, dict[str, float | None]] = {}
        for dataset in datasets:
            envs = environment_names(dataset, task_records)
            cells_rows = []
            dataset_avgs[dataset] = {}
            for alg in algorithms:
                row = [_accuracy_cell(sorted_values(index.get((task, dataset, alg, e), {})), ddof)
                       for e in range(len(envs))]
                means = [c.mean for c in row]
                avg = None if any(m is None for m in means) else sum(means) / len(means)
                row.append(Cell(avg))
                dataset_avgs[dataset][alg] = avg
                cells_rows.append(row)
                complete, partial = _trial_averages(index, task, dataset, alg, len(envs))
                per_trial_avgs[(dataset, alg)] = complete
                cell = _accuracy_cell(list(complete.values()), ddof)
                if partial and complete:
                    cell.flag = "*"
                    avg_notes.append(
                        f"* {alg} on {dataset}: averaged over trial(s) {sorted(complete)}; "
                        f"trial(s) {partial} miss held-out environments")
                elif partial:
                    avg_notes.append(f"{alg} on {dataset}: no trial covers every held-out "
                                     f"environment (trials {partial} are partial)")
                avg_cols[alg].append(cell)
            notes = []
            if rule.NAME == "loo" and not any(len(r["args"]["test_envs"]) == 2 for r in task_records
                                              if r["args"]["dataset"] == dataset):
                notes.append("no runs held out on pairs of environments: leave-one-domain-out "
                             "cannot select (sweep without --single-test-envs)")
            tables.append(Table(
                "dataset", f"Dataset: {dataset}, model selection method: {rule.TITLE}"
                + _rule_suffix(task), rule.NAME, task, dataset, [*envs, "Avg"], list(algorithms),
                cells_rows, notes))
        rows = []
        for alg in algorithms:
            means = [c.mean for c in avg_cols[alg]]
            avg = None if any(m is None for m in means) or not means else sum(means) / len(means)
            rows.append(avg_cols[alg] + [Cell(avg)])
        tables.append(Table("averages", f"Averages, model selection method: {rule.TITLE}"
                            + _rule_suffix(task), rule.NAME, task, None, [*datasets, "Avg"],
                            list(algorithms), rows, avg_notes))
        if len(algorithms) > 1:
            tables.append(_rank_table(rule, task, algorithms, datasets, dataset_avgs))
        if baseline is not None:
            tables.append(_baseline_table(rule, task, algorithms, datasets, per_trial_avgs,
                                          baseline))
    return tables


def sorted_values(by_trial: dict[int, float]) -> list[float]:
    return [by_trial[t] for t in sorted(by_trial)]


def _rank_table(rule, task, algorithms, datasets, dataset_avgs) -> Table:
    ranks: dict[str, dict[str, float]] = defaultdict(dict)
    for dataset in datasets:
        present = [(a, v) for a, v in dataset_avgs[dataset].items() if v is not None]
        if not present:
            continue
        r = rankdata([-v for _, v in present], method="average")
        for (a, _), rank in zip(present, r):
            ranks[a][dataset] = float(rank)
    rows = []
    for alg in algorithms:
        row = [Cell(ranks[alg].get(d)) for d in datasets]
        have = [ranks[alg].get(d) for d in datasets]
        row.append(Cell(None if any(h is None for h in have) or not have else float(np.mean(have))))
        rows.append(row)
    return Table("ranks", f"Average rank (1 = best), model selection method: {rule.TITLE}"
                 + _rule_suffix(task), rule.NAME, task, None, [*datasets, "Avg rank"],
                 list(algorithms), rows, digits=2,
                 notes=["rank of each algorithm's dataset Avg among the algorithms with one; "
                        "ties share the mean rank"])


def _baseline_table(rule, task, algorithms, datasets, per_trial_avgs, baseline) -> Table:
    title = (f"Difference to {baseline} (points; paired t-test over trial seeds), model selection "
             f"method: {rule.TITLE}" + _rule_suffix(task))
    if baseline not in algorithms:
        return Table("baseline", title, rule.NAME, task, None, [], [], [],
                     [f"baseline {baseline} has no records for task {task}; no comparison"])
    rows, names = [], []
    for alg in algorithms:
        if alg == baseline:
            continue
        row = []
        for dataset in datasets:
            row.append(_diff_cell(alg, baseline, per_trial_avgs.get((dataset, alg), {}),
                                  per_trial_avgs.get((dataset, baseline), {})))
        row.append(_diff_cell(alg, baseline, _overall(per_trial_avgs, datasets, alg),
                              _overall(per_trial_avgs, datasets, baseline)))
        rows.append(row)
        names.append(alg)
    if not names:
        return Table("baseline", title, rule.NAME, task, None, [*datasets, "Avg"], [], [],
                     [f"only the baseline {baseline} has records for task {task}; nothing to "
                      "compare"])
    return Table("baseline", title, rule.NAME, task, None, [*datasets, "Avg"], names, rows,
                 ["cell: mean over shared trials of (algorithm - baseline) in points, the paired "
                  "t-test p-value and n; 'Avg' uses each trial's mean over all datasets"])


def _overall(per_trial_avgs, datasets, alg) -> dict[int, float]:
    per = [per_trial_avgs.get((d, alg), {}) for d in datasets]
    trials = set.intersection(*(set(p) for p in per)) if per else set()
    return {t: float(np.mean([p[t] for p in per])) for t in sorted(trials)}


def _diff_cell(alg, baseline, a: dict[int, float], b: dict[int, float]) -> Cell:
    cmp = paired_test(alg, baseline, {t: 100 * v for t, v in a.items()},
                      {t: 100 * v for t, v in b.items()})
    if cmp.mean_diff is None:
        return Cell()
    p = "n/a" if cmp.p_value is None else f"{cmp.p_value:.3g}"
    return Cell(cmp.mean_diff, None, cmp.n, cmp.diffs, cmp.p_value,
                text=f"{cmp.mean_diff:+.1f} (p={p}, n={cmp.n})")


def build_budget_tables(records: Sequence[dict[str, Any]], baseline: str | None) -> list[Table]:
    budgets = hparam_budgets(records)
    tables = []
    for task in sorted({b.task for b in budgets}):
        bs = [b for b in budgets if b.task == task]
        algorithms = order_algorithms(b.algorithm for b in bs)
        datasets = order_datasets(b.dataset for b in bs)
        lookup = {(b.dataset, b.algorithm): b for b in bs}
        rows = []
        for alg in algorithms:
            row = []
            for d in datasets:
                b = lookup.get((d, alg))
                if b is None:
                    row.append(Cell())
                    continue
                ref = lookup.get((d, baseline)) if baseline else None
                counts = [(x.min_configs, x.max_configs) for x in bs if x.dataset == d]
                if ref is not None:
                    unequal = (b.min_configs, b.max_configs) != (ref.min_configs, ref.max_configs)
                else:
                    unequal = len(set(counts)) > 1
                row.append(Cell(float(b.max_configs), None, 1, [b.min_configs, b.max_configs],
                                text=b.text(), flag="!" if unequal else ""))
            rows.append(row)
        notes = unequal_budgets(bs, baseline) or ["equal budgets"]
        tables.append(Table("budget", "Hyperparameter configurations per held-out environment "
                            "and trial" + _rule_suffix(task), None, task, None, datasets,
                            algorithms, rows, notes, digits=0))
    return tables


def collect(data: Sweep | Iterable[dict[str, Any]], rules: Sequence[str] | None = None,
            baseline: str | None = "ERM", ddof: int = 0) -> Collection:
    """Select with every rule and build every table. `rules=None`: the applicable ones."""
    records = as_records(data)
    summary = data.summary() if isinstance(data, Sweep) else {"records": len(records)}
    notes = []
    if rules is None:
        rules = applicable_rules(records)
        for name in ("target", "entropy", "im", "snd", "dev"):
            rule = get_selection_rule(name)
            tasks = {r["args"]["task"] for r in records} & set(rule.TASKS)
            if tasks and name not in rules:
                notes.append(f"selection rule {name!r} skipped: the {'/'.join(sorted(tasks))} "
                             f"records lack {', '.join(rule.REQUIRED_KEYS)}")
    else:
        rules = [get_selection_rule(r).NAME for r in rules]
        present = {r["args"]["task"] for r in records}
        for name in rules:
            rule = get_selection_rule(name)
            if not present & set(rule.TASKS):
                raise ShiftbenchError(
                    f"selection rule {name!r} applies to tasks {', '.join(rule.TASKS)}, but the "
                    f"records are of tasks {', '.join(sorted(present)) or '(none)'}")
    titles = {r: get_selection_rule(r).TITLE for r in rules}
    selected = {r: select(records, r) for r in rules}
    tables: list[Table] = []
    for r in rules:
        tables.extend(build_rule_tables(r, records, selected[r], baseline, ddof))
    tables.extend(build_budget_tables(records, baseline))
    return Collection(summary, list(rules), titles, selected, tables, notes, records, baseline)


# --------------------------------------------------------------------------------------------
# Renderings


def render(collection: Collection, fmt: str) -> str:
    """The collection in one of the text formats (html lives in `report`)."""
    renderers = {"text": render_text, "markdown": render_markdown, "latex": render_latex,
                 "csv": render_csv, "json": render_json}
    if fmt == "html":
        from shiftbench.results.report import render_html
        return render_html(collection)
    if fmt == "domainbed":
        return domainbed_format(collection.records, collection.rules)
    if fmt not in renderers:
        raise UnknownNameError("output format", fmt, FORMATS)
    return renderers[fmt](collection)


def _grid(table: Table, style: str) -> list[list[str]]:
    return [[name] + [c.display(style, table.digits) for c in cells]
            for name, cells in zip(table.rows, table.cells)]


def _summary_lines(collection: Collection) -> list[str]:
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
    lines.extend(collection.notes)
    return lines


def render_text(collection: Collection) -> str:
    from tabulate import tabulate

    out = _summary_lines(collection)
    for t in collection.tables:
        out += ["", f"-------- {t.title}"]
        if t.rows:
            out.append(tabulate(_grid(t, "text"), headers=[t.row_label, *t.columns],
                                tablefmt="simple", disable_numparse=True))
        out += [f"  {n}" for n in t.notes]
    return "\n".join(out) + "\n"


def render_markdown(collection: Collection) -> str:
    from tabulate import tabulate

    out = ["# Results", ""] + [f"- {line}" for line in _summary_lines(collection)]
    current_rule = object()
    for t in collection.tables:
        if t.rule != current_rule:
            current_rule = t.rule
            heading = (f"Model selection: {collection.titles[t.rule]}" if t.rule
                       else "Search budgets")
            out += ["", f"## {heading}"]
        out += ["", f"### {t.title}", ""]
        if t.rows:
            out.append(tabulate(_grid(t, "markdown"), headers=[t.row_label, *t.columns],
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
    out += [f"% {line}" for line in _summary_lines(collection)]
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
              "p_value", "display")


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
                            "display": c.display("csv", t.digits)})
    return buf.getvalue()


def collection_to_dict(collection: Collection) -> dict[str, Any]:
    return {
        "summary": collection.summary, "rules": collection.rules, "titles": collection.titles,
        "baseline": collection.baseline, "notes": collection.notes,
        "tables": [t.to_dict() for t in collection.tables],
        "selected": {r: [s.to_dict() for s in sel] for r, sel in collection.selected.items()},
    }


def render_json(collection: Collection) -> str:
    return json.dumps(collection_to_dict(collection), indent=1, default=str) + "\n"


# --------------------------------------------------------------------------------------------
# DomainBed's layout


def _db_format_mean(fractions: Sequence[float], latex: bool) -> tuple[float | None, str]:
    if not fractions:
        return None, "X"
    mean = 100 * np.mean(list(fractions))
    err = 100 * np.std(np.asarray(list(fractions)) / np.sqrt(len(fractions)))
    pm = r"$\pm$" if latex else "+/-"
    return mean, f"{mean:.1f} {pm} {err:.1f}"


def _db_row(cells: Sequence[str], width: int, latex: bool) -> str:
    sep, end = (" & ", "\\\\") if latex else ("  ", "")
    return sep.join(str(c).ljust(width)[:width] for c in cells) + " " + end


def _db_table(lines: list[str], header: str, columns: list[str], rows: list[tuple[str, list[str]]],
              width: int, latex: bool) -> None:
    lines.append("")
    if latex:
        lines += [r"\begin{center}", r"\adjustbox{max width=\textwidth}{%",
                  r"\begin{tabular}{l" + "c" * (len(columns) - 1) + "}", r"\toprule"]
        columns = [r"\textbf{" + str(c).replace("%", r"\%") + "}" for c in columns]
    else:
        lines.append(f"-------- {header}")
    lines.append(_db_row(columns, width, latex))
    if latex:
        lines.append(r"\midrule")
    for name, cells in rows:
        lines.append(_db_row([name, *cells], width, latex))
    if latex:
        lines += [r"\bottomrule", r"\end{tabular}}", r"\end{center}"]


def domainbed_format(data: Sweep | Iterable[dict[str, Any]], rules: Sequence[str] | None = None,
                     latex: bool = False) -> str:
    """DomainBed's collect_results output (text or `--latex`), computed with its definitions.

    Same layout and numbers: cells `mean +/- err` with DomainBed's error (population std / sqrt
    n), `Avg` the mean of the row's cells; the averages table averages, per trial, whatever
    held-out environments that trial has (DomainBed's behaviour). Tasks other than dg get their
    own tables, the dataset name suffixed with the task.
    """
    records = as_records(data)
    rules = list(rules or CLASSIC_RULES)
    lines: list[str] = []
    if latex:
        lines += [r"\documentclass{article}", r"\usepackage{booktabs}", r"\usepackage{adjustbox}",
                  r"\begin{document}", r"\section{Full DomainBed results}",
                  f"% Total records: {len(records)}"]
    else:
        lines.append(f"Total records: {len(records)}")
    for name in rules:
        rule = get_selection_rule(name)
        if latex:
            lines += ["", rf"\subsection{{Model selection: {rule.TITLE}}}"]
        selected = select(records, rule)
        index = _index(selected)
        relevant = [r for r in records if r["args"]["task"] in rule.TASKS]
        tasks = sorted({r["args"]["task"] for r in relevant})
        for task in tasks:
            task_records = [r for r in relevant if r["args"]["task"] == task]
            algorithms = _ordered((r["args"]["algorithm"] for r in task_records),
                                  DOMAINBED_ALGORITHMS)
            datasets = _ordered((r["args"]["dataset"] for r in task_records), DOMAINBED_DATASETS)
            label = (lambda d: d) if task == "dg" else (lambda d, task=task: f"{d} [{task}]")
            for dataset in datasets:
                if latex:
                    lines += ["", rf"\subsubsection{{{label(dataset)}}}"]
                envs = environment_names(dataset, task_records, prefer_domainbed=True)
                rows = []
                for alg in algorithms:
                    cells, means = [], []
                    for e in range(len(envs)):
                        mean, text = _db_format_mean(
                            sorted_values(index.get((task, dataset, alg, e), {})), latex)
                        cells.append(text)
                        means.append(mean)
                    cells.append("X" if None in means else f"{sum(means) / len(means):.1f}")
                    rows.append((alg, cells))
                _db_table(lines, f"Dataset: {label(dataset)}, model selection method: {rule.TITLE}",
                          ["Algorithm", *envs, "Avg"], rows, 20, latex)
            if latex:
                lines += ["", r"\subsubsection{Averages}"]
            rows = []
            for alg in algorithms:
                cells, means = [], []
                for dataset in datasets:
                    per_trial: dict[int, list[float]] = defaultdict(list)
                    for (t, d, a, _), by_trial in index.items():
                        if (t, d, a) == (task, dataset, alg):
                            for trial, acc in by_trial.items():
                                per_trial[trial].append(acc)
                    trial_means = [float(np.mean(per_trial[tr])) for tr in sorted(per_trial)]
                    mean, text = _db_format_mean(trial_means, latex)
                    cells.append(text)
                    means.append(mean)
                cells.append("X" if None in means else f"{sum(means) / len(means):.1f}")
                rows.append((alg, cells))
            header = "Averages" if task == "dg" else f"Averages [{task}]"
            _db_table(lines, f"{header}, model selection method: {rule.TITLE}",
                      ["Algorithm", *[label(d) for d in datasets], "Avg"], rows, 25, latex)
    if latex:
        lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"
