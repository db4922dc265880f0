"""Table builders: from selected runs to the per-dataset, averages, rank, baseline and budget tables.

Per selection rule and task:
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

Other modules add tables of their own with `register_table_builder` (the DA task tables, the
segmentation tables); `tables.collect` calls every registered builder after the built-in ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shiftbench.health import FLAGS
from shiftbench.results.names import environment_names, order_algorithms, order_datasets
from shiftbench.results.selection import Selected, SelectionRule, get_selection_rule
from shiftbench.results.stats import (
    average_ranks,
    hparam_budgets,
    mean_and_error,
    paired_test,
    unequal_budgets,
)
from shiftbench.results.table_model import Cell, Table
from shiftbench.setting import DG

Index = dict[tuple[str, str, str, int], dict[int, float]]
HealthIndex = dict[tuple[str, str, str, int], dict[int, tuple[str, ...]]]

# (records, rules, selected per rule, baseline, ddof) -> extra tables, appended after the built-in ones.
TableBuilder = Callable[[Sequence[dict[str, Any]], Sequence[str], dict[str, list[Selected]], "str | None",
                         int], list[Table]]
TABLE_BUILDERS: list[TableBuilder] = []


def register_table_builder(builder: TableBuilder) -> TableBuilder:
    """Add tables to every `collect` (usable as a decorator); the builder returns [] when the
    records are not its kind."""
    if builder not in TABLE_BUILDERS:
        TABLE_BUILDERS.append(builder)
    return builder


def accuracy_cell(fractions: Sequence[float], ddof: int) -> Cell:
    """Mean +/- error of accuracies given as fractions, shown in %."""
    mean, err = mean_and_error(fractions, ddof)
    if mean is None:
        return Cell()
    return Cell(100 * mean, None if err is None else 100 * err, len(fractions),
                [100 * v for v in fractions])


def index_selected(selected: Sequence[Selected]) -> Index:
    """(task, dataset, algorithm, test_env) -> {trial_seed: selected test accuracy (fraction)}."""
    out: Index = defaultdict(dict)
    for s in selected:
        out[(s.task, s.dataset, s.algorithm, s.test_env)][s.trial_seed] = s.test_acc
    return out


def index_health(selected: Sequence[Selected]) -> HealthIndex:
    """(task, dataset, algorithm, test_env) -> {trial_seed: the selected run's health flags}."""
    out: HealthIndex = defaultdict(dict)
    for s in selected:
        out[(s.task, s.dataset, s.algorithm, s.test_env)][s.trial_seed] = tuple(s.health)
    return out


def union(flag_sets) -> tuple[str, ...]:
    """The flags of several trials together, in `health.FLAGS` order."""
    every = {f for flags in flag_sets for f in flags}
    return tuple(f for f in FLAGS if f in every)


def sorted_values(by_trial: dict[int, float]) -> list[float]:
    """The values of a trial -> value mapping in trial order."""
    return [by_trial[t] for t in sorted(by_trial)]


def trial_averages(index: Index, task: str, dataset: str, algorithm: str, n_envs: int
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


def rule_suffix(task: str) -> str:
    """What a title adds for tasks other than dg."""
    return "" if task == DG.name else f", task: {task}"


def _row_mean(cells: Sequence[Cell]) -> float | None:
    means = [c.mean for c in cells]
    return None if not means or any(m is None for m in means) else sum(means) / len(means)


def build_rule_tables(rule_name: str, records: Sequence[dict[str, Any]], selected: Sequence[Selected],
                      baseline: str | None, ddof: int = 1) -> list[Table]:
    """The per-dataset, averages, rank and baseline tables of one selection rule."""
    rule = get_selection_rule(rule_name)
    index = index_selected(selected)
    flags = index_health(selected)
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
        health_of: dict[tuple[str, str], tuple[str, ...]] = {}
        for dataset in datasets:
            envs = environment_names(dataset, task_records)
            cells_rows = []
            dataset_avgs[dataset] = {}
            for alg in algorithms:
                row = [accuracy_cell(sorted_values(index.get((task, dataset, alg, e), {})), ddof)
                       for e in range(len(envs))]
                for e, cell in enumerate(row):
                    cell.health = union(flags.get((task, dataset, alg, e), {}).values())
                avg = _row_mean(row)
                row.append(Cell(avg))
                dataset_avgs[dataset][alg] = avg
                cells_rows.append(row)
                complete, partial = trial_averages(index, task, dataset, alg, len(envs))
                per_trial_avgs[(dataset, alg)] = complete
                cell = accuracy_cell(list(complete.values()), ddof)
                cell.health = union(flags.get((task, dataset, alg, e), {}).get(t, ())
                                    for e in range(len(envs)) for t in complete)
                health_of[(dataset, alg)] = cell.health
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
                + rule_suffix(task), rule.NAME, task, dataset, [*envs, "Avg"], list(algorithms),
                cells_rows, notes))
        rows = [avg_cols[alg] + [Cell(_row_mean(avg_cols[alg]),
                                      health=union(c.health for c in avg_cols[alg]))]
                for alg in algorithms]
        tables.append(Table("averages", f"Averages, model selection method: {rule.TITLE}"
                            + rule_suffix(task), rule.NAME, task, None, [*datasets, "Avg"],
                            list(algorithms), rows, avg_notes))
        if len(algorithms) > 1:
            tables.append(rank_table(rule, task, algorithms, datasets, dataset_avgs))
        if baseline is not None:
            tables.append(baseline_table(rule, task, algorithms, datasets, per_trial_avgs,
                                         baseline, health_of))
    return tables


def rank_table(rule: SelectionRule, task: str, algorithms: Sequence[str], datasets: Sequence[str],
               dataset_avgs: dict[str, dict[str, float | None]]) -> Table:
    """Rank of each algorithm's dataset `Avg` per dataset, and the mean rank over datasets."""
    ranks = average_ranks(dataset_avgs)
    rows = []
    for alg in algorithms:
        have = [ranks[alg].get(d) for d in datasets]
        row = [Cell(h) for h in have]
        row.append(Cell(None if any(h is None for h in have) or not have else float(np.mean(have))))
        rows.append(row)
    return Table("ranks", f"Average rank (1 = best), model selection method: {rule.TITLE}"
                 + rule_suffix(task), rule.NAME, task, None, [*datasets, "Avg rank"],
                 list(algorithms), rows, digits=2,
                 notes=["rank of each algorithm's dataset Avg among the algorithms with one; "
                        "ties share the mean rank"])


def baseline_table(rule: SelectionRule, task: str, algorithms: Sequence[str], datasets: Sequence[str],
                   per_trial_avgs: dict[tuple[str, str], dict[int, float]], baseline: str,
                   health_of: dict[tuple[str, str], tuple[str, ...]] | None = None) -> Table:
    """Paired differences to the baseline per dataset and overall (`Avg`)."""
    title = (f"Difference to {baseline} (points; paired t-test over trial seeds), model selection "
             f"method: {rule.TITLE}" + rule_suffix(task))
    if baseline not in algorithms:
        return Table("baseline", title, rule.NAME, task, None, [], [], [],
                     [f"baseline {baseline} has no records for task {task}; no comparison"])
    rows, names = [], []
    for alg in algorithms:
        if alg == baseline:
            continue
        row = [diff_cell(alg, baseline, per_trial_avgs.get((dataset, alg), {}),
                         per_trial_avgs.get((dataset, baseline), {})) for dataset in datasets]
        row.append(diff_cell(alg, baseline, overall_averages(per_trial_avgs, datasets, alg),
                             overall_averages(per_trial_avgs, datasets, baseline)))
        if health_of:  # a difference is as healthy as the trials on both sides
            for cell, dataset in zip(row, datasets):
                cell.health = union((health_of.get((dataset, alg), ()),
                                     health_of.get((dataset, baseline), ())))
            row[-1].health = union(c.health for c in row[:-1])
        rows.append(row)
        names.append(alg)
    if not names:
        return Table("baseline", title, rule.NAME, task, None, [*datasets, "Avg"], [], [],
                     [f"only the baseline {baseline} has records for task {task}; nothing to "
                      "compare"])
    return Table("baseline", title, rule.NAME, task, None, [*datasets, "Avg"], names, rows,
                 ["cell: mean over shared trials of (algorithm - baseline) in points ± its sample "
                  "standard error, the paired t-test p-value and n; 'Avg' uses each trial's mean "
                  "over all datasets"])


def overall_averages(per_trial_avgs: dict[tuple[str, str], dict[int, float]], datasets: Sequence[str],
                     alg: str) -> dict[int, float]:
    """Per trial present on every dataset, the mean of the dataset averages."""
    per = [per_trial_avgs.get((d, alg), {}) for d in datasets]
    trials = set.intersection(*(set(p) for p in per)) if per else set()
    return {t: float(np.mean([p[t] for p in per])) for t in sorted(trials)}


def diff_cell(alg: str, baseline: str, a: dict[int, float], b: dict[int, float]) -> Cell:
    """Paired difference (points) of two trial -> accuracy (fraction) mappings, with its p-value."""
    cmp = paired_test(alg, baseline, {t: 100 * v for t, v in a.items()},
                      {t: 100 * v for t, v in b.items()})
    if cmp.mean_diff is None:
        return Cell()
    p = "n/a" if cmp.p_value is None else f"{cmp.p_value:.3g}"
    return Cell(cmp.mean_diff, cmp.se, cmp.n, cmp.diffs, cmp.p_value, signed=True,
                suffix=f" (p={p}, n={cmp.n})")


def build_budget_tables(records: Sequence[dict[str, Any]], baseline: str | None) -> list[Table]:
    """Per task: hyperparameter configurations per algorithm and dataset, unequal ones flagged."""
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
                            "and trial" + rule_suffix(task), None, task, None, datasets,
                            algorithms, rows, notes, digits=0))
    return tables
