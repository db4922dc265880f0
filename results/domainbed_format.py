"""`--format domainbed`: DomainBed's collect_results layout and numbers, for diffing old outputs.

Cells are `mean +/- err` with DomainBed's error (population std / sqrt n), `Avg` the mean of the
row's cells; the averages table averages, per trial, whatever held-out environments that trial
has (DomainBed's behaviour, unlike `results.builders`). Tasks other than dg get their own tables,
the dataset name suffixed with the task.

DomainBed keys a run by `hparams_seed` alone. Records where one seed has several fixed-override
configurations in a group (a sweep's grid points, or `train` runs differing only in `--hparams`)
are refused (`check_one_config_per_seed`): DomainBed would merge them into one run, and printing
anything else would no longer be DomainBed's output.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import DOMAINBED_ALGORITHMS
from shiftbench.results.builders import index_selected, sorted_values
from shiftbench.results.names import (
    DOMAINBED_DATASETS,
    environment_names,
    ordered,
)
from shiftbench.results.reading import Sweep, as_records
from shiftbench.results.selection import CLASSIC_RULES, get_selection_rule, select, source_key
from shiftbench.setting import DG
from shiftbench.trial_record import overrides_key


def _format_mean(fractions: Sequence[float], latex: bool) -> tuple[float | None, str]:
    if not fractions:
        return None, "X"
    mean = 100 * np.mean(list(fractions))
    err = 100 * np.std(np.asarray(list(fractions)) / np.sqrt(len(fractions)))
    pm = r"$\pm$" if latex else "+/-"
    return mean, f"{mean:.1f} {pm} {err:.1f}"


def _row(cells: Sequence[str], width: int, latex: bool) -> str:
    sep, end = (" & ", "\\\\") if latex else ("  ", "")
    return sep.join(str(c).ljust(width)[:width] for c in cells) + " " + end


def _table(lines: list[str], header: str, columns: list[str], rows: list[tuple[str, list[str]]],
           width: int, latex: bool) -> None:
    lines.append("")
    if latex:
        lines += [r"\begin{center}", r"\adjustbox{max width=\textwidth}{%",
                  r"\begin{tabular}{l" + "c" * (len(columns) - 1) + "}", r"\toprule"]
        columns = [r"\textbf{" + str(c).replace("%", r"\%") + "}" for c in columns]
    else:
        lines.append(f"-------- {header}")
    lines.append(_row(columns, width, latex))
    if latex:
        lines.append(r"\midrule")
    for name, cells in rows:
        lines.append(_row([name, *cells], width, latex))
    if latex:
        lines += [r"\bottomrule", r"\end{tabular}}", r"\end{center}"]


def _with_average(cells: list[str], means: list[float | None]) -> list[str]:
    return cells + ["X" if None in means else f"{sum(means) / len(means):.1f}"]


def check_one_config_per_seed(records: Iterable[dict[str, Any]]) -> None:
    """Refuse records in which one trial's `hparams_seed` has several override configurations."""
    configs: dict[tuple, set[str]] = defaultdict(set)
    for r in records:
        a = r["args"]
        configs[(a["task"], a["dataset"], a["algorithm"], tuple(a["test_envs"]),
                 int(a["trial_seed"]), int(a["hparams_seed"]), source_key(a) or ())].add(
            overrides_key(a.get("hparams")))
    for (task, dataset, algorithm, envs, trial, seed, _), found in sorted(configs.items()):
        if len(found) > 1:
            listed = ", ".join(repr(o or "no overrides") for o in sorted(found))
            raise ShiftbenchError(
                f"--format domainbed: {algorithm} on {dataset} [{task}] test_envs {list(envs)} "
                f"trial {trial} hparams_seed {seed} has {len(found)} configurations ({listed}); "
                "DomainBed's collect_results keys a run by hparams_seed alone and would merge "
                "them into one run, so its numbers would be wrong. Use another --format (text, "
                "markdown, latex, csv, json, html), which keeps each configuration a run of its own")


def domainbed_format(data: Sweep | Iterable[dict[str, Any]], rules: Sequence[str] | None = None,
                     latex: bool = False) -> str:
    """DomainBed's collect_results output (text or `--latex`), computed with its definitions."""
    records = as_records(data)
    check_one_config_per_seed(records)
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
        index = index_selected(select(records, rule))
        relevant = [r for r in records if r["args"]["task"] in rule.TASKS]
        for task in sorted({r["args"]["task"] for r in relevant}):
            task_records = [r for r in relevant if r["args"]["task"] == task]
            algorithms = ordered((r["args"]["algorithm"] for r in task_records), DOMAINBED_ALGORITHMS)
            datasets = ordered((r["args"]["dataset"] for r in task_records), DOMAINBED_DATASETS)
            label = (lambda d: d) if task == DG.name else (lambda d, task=task: f"{d} [{task}]")
            for dataset in datasets:
                if latex:
                    lines += ["", rf"\subsubsection{{{label(dataset)}}}"]
                envs = environment_names(dataset, task_records, prefer_domainbed=True)
                rows = []
                for alg in algorithms:
                    shown = [_format_mean(sorted_values(index.get((task, dataset, alg, e), {})), latex)
                             for e in range(len(envs))]
                    rows.append((alg, _with_average([t for _, t in shown], [m for m, _ in shown])))
                _table(lines, f"Dataset: {label(dataset)}, model selection method: {rule.TITLE}",
                       ["Algorithm", *envs, "Avg"], rows, 20, latex)
            if latex:
                lines += ["", r"\subsubsection{Averages}"]
            rows = []
            for alg in algorithms:
                shown = []
                for dataset in datasets:
                    per_trial: dict[int, list[float]] = defaultdict(list)
                    for (t, d, a, _), by_trial in index.items():
                        if (t, d, a) == (task, dataset, alg):
                            for trial, acc in by_trial.items():
                                per_trial[trial].append(acc)
                    trial_means = [float(np.mean(per_trial[tr])) for tr in sorted(per_trial)]
                    shown.append(_format_mean(trial_means, latex))
                rows.append((alg, _with_average([t for _, t in shown], [m for m, _ in shown])))
            header = "Averages" if task == DG.name else f"Averages [{task}]"
            _table(lines, f"{header}, model selection method: {rule.TITLE}",
                   ["Algorithm", *[label(d) for d in datasets], "Avg"], rows, 25, latex)
    if latex:
        lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"
