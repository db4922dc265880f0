"""Result tables of a sweep: `collect` selects with each rule and builds every table.

The parts, one job each: `table_model` (Cell, Table, Collection), `names` (row and column order,
environment names), `stats` (mean +/- error, paired t-tests, ranks, budgets), `builders` (the
tables), `renderers` (text, Markdown, LaTeX, CSV, JSON), `report` (HTML), `domainbed_format`
(DomainBed's collect_results layout) and `formats` (`render`: a collection in any of them). Other
modules add tables of their own through `builders.register_table_builder`; the DA task tables
(`da_tables`) and the segmentation tables (`seg_tables`) are registered on import, here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import DOMAINBED_ALGORITHMS
from shiftbench.results.builders import (
    TABLE_BUILDERS,
    build_budget_tables,
    build_rule_tables,
    register_table_builder,
    sorted_values,
)
from shiftbench.results.da_tables import check_one_da_mode
from shiftbench.results.domainbed_format import domainbed_format
from shiftbench.results.health import annotate, health_table, sweep_health
from shiftbench.results.health import legend as health_legend
from shiftbench.results.names import (
    DOMAINBED_DATASETS,
    DOMAINBED_ENVIRONMENTS,
    environment_names,
    order_algorithms,
    order_datasets,
)
from shiftbench.results.phases import source_model_records
from shiftbench.results.reading import Sweep, as_records
from shiftbench.results.renderers import (
    collection_to_dict,
    latex_escape,
    render_csv,
    render_json,
    render_latex,
    render_markdown,
    render_text,
)
from shiftbench.results.seg_tables import is_segmentation
from shiftbench.results.selection import (
    applicable_rules,
    get_selection_rule,
    select,
    source_key,
)
from shiftbench.results.stats import DEFAULT_DDOF
from shiftbench.results.table_model import MISSING, Cell, Collection, Table


def task_run_key(record: dict[str, Any]) -> tuple:
    """(task, dataset, algorithm, trial_seed, explicit sources) of a record's run, as `Selected`
    carries them."""
    a = record["args"]
    return (a["task"], a["dataset"], a["algorithm"], int(a["trial_seed"]), source_key(a))


def collect(data: Sweep | Iterable[dict[str, Any]], rules: Sequence[str] | None = None,
            baseline: str | None = "ERM", ddof: int = DEFAULT_DDOF,
            health: bool = False, source_models: bool = False) -> Collection:
    """Select with every rule and build every table. `rules=None`: the applicable ones.
    Every run's health is checked (`results.health`) and marked on the cells of flagged
    trials; `health=True` adds the health table (every flagged run) first. `source_models=True`
    adds a row `"<algorithm> (source)"` per phased algorithm: its runs' checkpoints from before
    adaptation (`results.phases.source_model_records`)."""
    records = as_records(data)
    if source_models:
        records = records + source_model_records(records)
    check_one_da_mode(records)  # transductive and inductive accuracies never share a table
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
    report = sweep_health(records, data.jobs if isinstance(data, Sweep) else ())
    annotate(report, selected)
    tables: list[Table] = []
    # accuracy tables from the records that have accuracies (segmentation records get their own)
    # A run that left some domain out of its sources (a source->target task with `unused_envs`)
    # is reported only in the task tables: two tasks with the same target (synth->mnist and
    # lowres->mnist) must never share a per-domain cell.
    plain = [r for r in records if not is_segmentation(r) and not r.get("unused_envs")]
    task_runs = {task_run_key(r) for r in records if r.get("unused_envs")}
    for r in rules:
        per_domain = [s for s in selected[r]
                      if (s.task, s.dataset, s.algorithm, s.trial_seed, s.source_envs) not in task_runs]
        tables.extend(build_rule_tables(r, plain, per_domain, baseline, ddof))
    tables.extend(build_budget_tables(plain, baseline))
    for builder in TABLE_BUILDERS:
        tables.extend(builder(records, list(rules), selected, baseline, ddof))
    for table in tables:
        flags = {f for cells in table.cells for c in cells for f in c.health}
        if flags:
            table.notes.append(health_legend(flags))
    if health:
        tables.insert(0, health_table(report))
    return Collection(summary, list(rules), titles, selected, tables, notes, records, baseline,
                      report)


__all__ = [
    "DOMAINBED_ALGORITHMS", "DOMAINBED_DATASETS", "DOMAINBED_ENVIRONMENTS", "MISSING",
    "TABLE_BUILDERS", "Cell", "Collection", "Table", "collect", "collection_to_dict",
    "domainbed_format", "environment_names", "latex_escape", "order_algorithms", "order_datasets",
    "register_table_builder", "render_csv", "render_json", "render_latex",
    "render_markdown", "render_text", "sorted_values",
]
