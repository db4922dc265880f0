"""Run health in the collector: the trainer's checks (`shiftbench.health`) over a whole sweep,
plus which trials were selected too early, marked on tables.

The checks of one run (diverged, not learning, collapsed, target at chance; their thresholds
and flag names) live in the engine, `shiftbench.health`, where the trainer uses them too;
docs/results.md describes them. This module adds:

* **selected before adaptation** — a selection rule chose a checkpoint of a phased algorithm
  from before its adaptation (`shiftbench.phases`); per rule, since each rule selects its own.

`annotate` puts the flags of each selected run on its `Selected.health`; table cells built
from flagged trials then carry the flags' marks (`MARKS`) and a footnote.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shiftbench.health import (
    BEFORE_ADAPTATION,
    COLLAPSE_DROP,
    FLAGS,
    LOSS_TOLERANCE,
    MARKS,
    MEANINGS,
    NOT_LEARNING_MARGIN,
    RunHealth,
    check_run,
    record_run_key,
    run_key,
    thresholds,
)
from shiftbench.phases import adaptation_start


def run_health(records: Sequence[dict[str, Any]], status: str | None = None,
               failure: str | None = None) -> RunHealth:
    """`shiftbench.health.check_run` of one run's records, with the first step of its
    adaptation phase (`shiftbench.phases`), which `annotate` compares selected steps with."""
    health = check_run(records, status, failure)
    health.adaptation_start = adaptation_start(max(records, key=lambda r: r["step"]))
    return health


@dataclass
class HealthReport:
    """The health of every run of a collection, by `run_key`."""

    runs: dict[tuple, RunHealth]

    def flagged(self) -> list[RunHealth]:
        return [h for h in self.runs.values() if h.all_flags]

    def counts(self) -> dict[str, int]:
        return {f: sum(f in h.all_flags for h in self.runs.values()) for f in FLAGS}

    def summary_line(self) -> str:
        counts = self.counts()
        n = len(self.runs)
        if not any(counts.values()):
            return f"Health: all {n} runs healthy."
        parts = [f"{counts[f]} {f}" for f in FLAGS if counts[f]]
        return (f"Health: {len(self.flagged())} of {n} runs flagged ({', '.join(parts)}); marked "
                "cells: " + ", ".join(f"{MARKS[f]} {f}" for f in FLAGS if counts[f])
                + "; --health lists them.")

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary_line(), "counts": self.counts(), "thresholds": thresholds(),
                "flagged": [h.to_dict() for h in self.flagged()]}


def sweep_health(records: Iterable[dict[str, Any]], jobs: Iterable[Any] = ()) -> HealthReport:
    """Check every run of `records`; `jobs` (`reading.JobInfo`) give status and failure."""
    by_run: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_run[record_run_key(r)].append(r)
    info = {j.path: j for j in jobs}
    runs = {}
    for key, group in by_run.items():
        job = info.get(group[-1].get("_job_dir"))
        runs[key] = run_health(group, getattr(job, "status", None), getattr(job, "failure", None))
    return HealthReport(runs)


def annotate(report: HealthReport, selected: Mapping[str, Sequence[Any]]) -> None:
    """Put on each `Selected` (per rule) the flags of its run, plus `selected before adaptation`
    when its step precedes the run's adaptation (`shiftbench.phases`)."""
    for rule, winners in selected.items():
        for s in winners:
            key = run_key(s.task, s.dataset, s.algorithm, (s.test_env,), s.trial_seed,
                          s.hparams_seed, s.source_envs, s.overrides)
            run = report.runs.get(key)
            if run is None:
                s.health = ()
                continue
            flags = list(run.flags)
            if run.adaptation_start is not None and s.step <= run.adaptation_start:
                flags.append(BEFORE_ADAPTATION)
                run.early[rule] = s.step
            s.health = tuple(f for f in FLAGS if f in flags)


def legend(flags: Iterable[str]) -> str:
    """One footnote naming the marks that occur."""
    flags = set(flags)
    return ("Health marks (a cell's mark: at least one of its trials is flagged; collect --health "
            "lists them): " + "; ".join(f"{MARKS[f]} {f}: {MEANINGS[f]}" for f in FLAGS
                                        if f in flags) + ".")


def health_table(report: HealthReport, task_label=None) -> Any:
    """Every flagged run as a `Table` (kind `health`): what tripped each flag, and the numbers
    the checks read. `task_label(run)` names the run's task or held-out set (default indices)."""
    from shiftbench.results.table_model import Cell, Table

    columns = ["Flags", "Source val", "Chance", "Final loss", "ln C", "Adaptation from",
               "Details"]
    rows, cells = [], []
    # A run's fixed overrides are printed only where they tell runs apart (a sweep's grid points).
    shared = Counter(h.key[:-1] for h in report.runs.values())
    flagged = sorted(report.flagged(), key=lambda h: (h.task, h.dataset, h.algorithm,
                                                       h.test_envs, h.source_envs or (),
                                                       h.trial_seed, h.hparams_seed,
                                                       h.overrides))
    for h in flagged:
        where = task_label(h) if task_label else (
            f"{'+'.join(map(str, h.source_envs))}->" if h.source_envs else "") + \
            ",".join(map(str, h.test_envs))
        rows.append(f"{h.algorithm} {h.dataset} [{h.task}] {where} trial {h.trial_seed} "
                    f"hp {h.hparams_seed}" + (f" {h.overrides}" if shared[h.key[:-1]] > 1 else ""))
        details = [f"{f}: {h.details[f]}" for f in FLAGS if f in h.details]
        if h.early:
            details.append(BEFORE_ADAPTATION + ": " + ", ".join(
                f"rule {rule} chose step {step}" for rule, step in sorted(h.early.items())))
        c = None if h.chance is None else round(1 / h.chance)
        values = [", ".join(h.all_flags),
                  _pct(h.source_val), _pct(h.chance), _num(h.loss),
                  _num(None if c is None else math.log(c)),
                  "-" if h.adaptation_start is None else str(h.adaptation_start),
                  "; ".join(details)]
        cells.append([Cell(text=v) for v in values])
    counts = report.counts()
    notes = [f"Thresholds: not learning = source validation <= chance + {NOT_LEARNING_MARGIN} x "
             f"(1 - chance) or |loss - ln C| <= {LOSS_TOLERANCE} x ln C at the end; collapsed = "
             f"last test accuracy >= {100 * COLLAPSE_DROP:.0f} points below the run's best; "
             f"target at chance = a run that reads target data and learned its source ends "
             f"with target accuracy <= chance + {NOT_LEARNING_MARGIN} x (1 - chance); "
             "selected before adaptation = the chosen step <= the first adaptation step.",
             "Counts: " + ", ".join(f"{f} {counts[f]}" for f in FLAGS)]
    return Table("health", "Run health: flagged runs", None, "all", None, columns, rows, cells,
                 notes, row_label="Run")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"
