"""Domain-adaptation tables in the field's convention: algorithms x source->target tasks + Avg.

Built for records of runs with explicit sources (`args.source_envs`, set by `--source-envs` or
a `--tasks` suite), one held-out target each. For every selection rule and setting:

* **transductive** (uda/ssda): accuracy on the unlabeled target split the algorithm adapted to
  (`env{t}_uda_acc`), what most DA papers report;
* **inductive**: accuracy on the target's held-out split, which the algorithm never saw
  (`env{t}_in_acc`).

Records of the transductive mode (`args.da_mode`, shiftbench.splits: the algorithm adapted on
the whole target domain) give only the first, over the whole target domain; records of the
inductive mode give both, the first over the part of the target they adapted on. The two modes
are never mixed: `check_one_da_mode` refuses records of both in one (task, dataset), which
`collect` calls before building any table.

Both numbers come from the same checkpoint, the one the rule (named in the table's caption)
selected in each trial. A cell is the mean ± standard error over trial seeds; `Avg` averages
the tasks within each trial seed first (only seeds with every task), then over seeds.

Columns follow the field's order: that of the first named task suite (sweeps/tasks.py) whose
pairs, by domain name, include every task of the table (Office-31: A→W, D→W, W→D, A→D, D→A,
W→A); tasks outside every suite are ordered by target index, then by source indices (which is
also the order of the leave-one-domain-out suites).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from shiftbench.errors import ShiftbenchError
from shiftbench.results.builders import register_table_builder, union
from shiftbench.results.names import order_algorithms
from shiftbench.results.selection import Selected, get_selection_rule
from shiftbench.results.stats import mean_and_error
from shiftbench.results.table_model import Cell, Table
from shiftbench.trial_record import config_key, record_key

KIND = "da_tasks"
AVERAGE = "Avg"


def task_label(record: dict[str, Any], sources: tuple[int, ...], test_env: int) -> str:
    """`A→W` from the record's environment names (indices when it has none)."""
    from shiftbench.sweeps.tasks import task_name

    envs = record.get("environments") or [str(i) for i in range(max((*sources, test_env)) + 1)]
    return task_name(envs, sources, (test_env,))


def task_key(record: dict[str, Any], sources: tuple[int, ...],
             test_env: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The task as (source names, target names), the form task suites list their pairs in."""
    envs = record.get("environments") or [str(i) for i in range(max((*sources, test_env)) + 1)]
    return tuple(envs[i] for i in sources), (envs[test_env],)


def column_order(tasks: dict[str, tuple[tuple[tuple[str, ...], tuple[str, ...]], tuple[int, ...], int]]
                 ) -> list[str]:
    """Task labels in the order of the first named suite that has every task (label -> (names,
    source indices, target index)); otherwise by target index, then source indices."""
    from shiftbench.sweeps.tasks import TASK_SUITES

    names = {label: key for label, (key, _, _) in tasks.items()}
    for suite in TASK_SUITES.values():
        pairs = list(suite.pairs)
        if pairs and all(key in pairs for key in names.values()):
            return sorted(tasks, key=lambda label: pairs.index(names[label]))
    return sorted(tasks, key=lambda label: (tasks[label][2], tasks[label][1]))


def _record_at(records_by_run: dict, s: Selected) -> dict[str, Any] | None:
    return records_by_run.get((s.task, s.dataset, s.algorithm, s.test_env, s.trial_seed,
                               s.source_envs, s.config, s.step))


def da_mode_of(record: dict[str, Any]) -> str:
    """The record's `da_mode` (records written before it existed are inductive)."""
    return str(record["args"].get("da_mode") or "inductive")


def check_one_da_mode(records: list[dict[str, Any]]) -> None:
    """Refuse records of both DA modes for one (task, dataset): their target accuracies measure
    different things (the whole domain adapted on vs a held-out part), so no table may mix them."""
    modes: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        modes[(r["args"]["task"], r["args"]["dataset"])][da_mode_of(r)] += 1
    for (task, dataset), counts in sorted(modes.items()):
        if len(counts) > 1:
            found = ", ".join(f"{n} record(s) of da_mode {m}" for m, n in sorted(counts.items()))
            raise ShiftbenchError(
                f"{dataset} ({task}): the records mix DA modes ({found}); a table never mixes "
                "transductive and inductive accuracies: collect each mode from its own "
                "--input-dir")


def _cell(values: list[float], ddof: int) -> Cell:
    mean, err = mean_and_error([100 * v for v in values], ddof)
    return Cell(mean, err, len(values), [100 * v for v in values])


def da_task_tables(records: list[dict[str, Any]], rules: list[str],
                   selected: dict[str, list[Selected]], baseline: str | None,
                   ddof: int) -> list[Table]:
    """The task-column tables of every rule (none when no record has explicit sources)."""
    if not any(r["args"].get("source_envs") is not None for r in records):
        return []
    by_run: dict[tuple, dict[str, Any]] = {}
    for r in records:
        a = r["args"]
        if a.get("source_envs") is None or len(a["test_envs"]) != 1:
            continue
        key = (a["task"], a["dataset"], a["algorithm"], int(a["test_envs"][0]),
               int(a["trial_seed"]), tuple(sorted(a["source_envs"])), config_key(a),
               r["step"])
        by_run[key] = r
    tables = []
    for rule in rules:
        # (task, dataset) -> split -> algorithm -> task label -> trial -> accuracy
        values: dict[tuple[str, str], dict[str, dict]] = defaultdict(
            lambda: {"transductive": defaultdict(lambda: defaultdict(dict)),
                     "inductive": defaultdict(lambda: defaultdict(dict))})
        tasks: dict[tuple[str, str], dict[str, tuple]] = defaultdict(dict)  # label -> task
        whole: dict[tuple[str, str], bool] = {}  # transductive mode: `in` is the whole target
        # (task, dataset) -> algorithm -> task label -> trial -> health flags of the selected run
        health: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
        for s in selected.get(rule, []):
            record = _record_at(by_run, s) if s.source_envs is not None else None
            if record is None:
                continue
            label = task_label(record, s.source_envs, s.test_env)
            group = values[(s.task, s.dataset)]
            tasks[(s.task, s.dataset)][label] = (task_key(record, s.source_envs, s.test_env),
                                                 tuple(s.source_envs), s.test_env)
            health[(s.task, s.dataset)][s.algorithm][label][s.trial_seed] = tuple(s.health)
            whole[(s.task, s.dataset)] = da_mode_of(record) == "transductive"
            if whole[(s.task, s.dataset)]:  # the selected test accuracy is the whole target's
                group["transductive"][s.algorithm][label][s.trial_seed] = s.test_acc
                continue
            group["inductive"][s.algorithm][label][s.trial_seed] = s.test_acc
            uda = record.get(record_key(s.test_env, "uda"))
            if isinstance(uda, (int, float)):
                group["transductive"][s.algorithm][label][s.trial_seed] = float(uda)
        for (setting, dataset), group in sorted(values.items()):
            labels = column_order(tasks[(setting, dataset)])
            for split in ("transductive", "inductive"):
                by_alg = group[split]
                if not by_alg:
                    continue
                tables.append(_table(rule, setting, dataset, split, labels, by_alg, ddof,
                                     health[(setting, dataset)], whole[(setting, dataset)]))
    return tables


def _table(rule: str, setting: str, dataset: str, split: str, labels: list[str],
           by_alg: dict[str, dict[str, dict[int, float]]], ddof: int,
           health: dict[str, dict[str, dict[int, tuple[str, ...]]]],
           whole_target: bool = False) -> Table:
    algorithms = order_algorithms(list(by_alg))
    rows = []
    for alg in algorithms:
        cells = []
        for label in labels:
            per_trial = by_alg[alg].get(label, {})
            cell = _cell(list(per_trial.values()), ddof)
            cell.health = union(health[alg][label].get(t, ()) for t in per_trial)
            cells.append(cell)
        trials = set.intersection(*(set(by_alg[alg].get(label, {})) for label in labels))
        averages = [sum(by_alg[alg][label][t] for label in labels) / len(labels)
                    for t in sorted(trials)]
        cells.append(_cell(averages, ddof))
        cells[-1].health = union(health[alg][label].get(t, ()) for label in labels
                                 for t in trials)
        rows.append(cells)
    where = ("the whole target domain, which the algorithm adapted to unlabeled (transductive "
             "mode)" if whole_target else
             "the unlabeled part of the target domain the algorithm adapted to (transductive; "
             "inductive-mode trials)" if split == "transductive" else
             "the target's held-out split, never seen in training (inductive)")
    title_rule = get_selection_rule(rule).TITLE
    named = title_rule if f"({rule})" in title_rule else f"{title_rule} ({rule})"
    notes = [f"Model selection: {named}. Accuracy (%) on {where}; mean ± sample standard "
             f"error over trial seeds; {AVERAGE} averages the tasks within each trial seed "
             "(seeds with every task), then over seeds."]
    scope = ", whole target domain" if whole_target else ""
    return Table(KIND, f"{dataset} ({setting}), {split} target accuracy{scope}, selection: "
                 f"{title_rule}",
                 rule, setting, dataset, labels + [AVERAGE], algorithms, rows, notes)


register_table_builder(da_task_tables)
