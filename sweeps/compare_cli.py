"""`shiftbench compare`: one algorithm against baselines on a named suite, at an identical budget.

    shiftbench compare --algorithm MyAlg --import mymodule --against ERM CORAL --suite digits-dg
    shiftbench compare --algorithm CORAL --against ERM --suite domainbed-full --dry-run

Every algorithm runs the same jobs (the suite's datasets and held-out sets or tasks, the same
number of hparam configurations drawn from each algorithm's own search space, the same trial
seeds, steps and protocol). Finished trials in the store (`--output-dir`) are found by their
identity and reused, so baselines run once. Then, per unit and selection rule: each algorithm's
mean with a 95 % interval, the paired difference to each baseline with its interval, p-value
(Holm over the suite's units) and power, and one verdict per baseline.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.sweeps.compare import Plan, cost_note, make_plan, plan_table, read_plan_records
from shiftbench.sweeps.suites import SUITES, get_suite

FORMATS = ("text", "markdown", "latex", "html")
DEFAULT_STORE = "shiftbench_store"
MAX_LISTED = 40


class NotConfirmed(ShiftbenchError):
    exit_code = 1


@dataclass
class CompareResult:
    """What `compare` computed: the plan, the tables (DataFrames) and what was printed."""

    plan: Plan
    frames: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    launched: int = 0
    failed: int = 0


def units_of(plan: Plan):
    """The suite's reported units: DA tasks, else one per dataset (all its held-out domains)."""
    from shiftbench.results.compare import Unit
    from shiftbench.sweeps.facts import dataset_facts
    from shiftbench.sweeps.spec import sweep_units
    from shiftbench.sweeps.tasks import suite_tasks

    if plan.spec.tasks:
        return [Unit(t.name, t.dataset, tuple(t.test_envs), tuple(sorted(t.source_envs)))
                for t in suite_tasks(plan.spec.tasks, plan.spec.datasets)]
    units = []
    for dataset in plan.spec.datasets:
        singles = sorted({e[0] for d, _, e in sweep_units(plan.spec) if d == dataset
                          and len(e) == 1})
        if len(singles) != len(dataset_facts(dataset).environments):
            raise ShiftbenchError(f"suite {plan.suite.label} does not hold out every domain of "
                                  f"{dataset} on its own; a dataset's average needs them all")
        units.append(Unit(dataset, dataset, tuple(singles)))
    return units


def job_listing(plan: Plan, limit: int | None = MAX_LISTED) -> str:
    lines = []
    for title, jobs in (("to run", plan.to_run), ("reused (done in the store)", plan.reused)):
        lines.append(f"{title}: {len(jobs)}")
        for job in jobs[:limit] if limit else jobs:
            lines.append(f"  {plan.states[job.hash]:<12} {job.hash[:12]}  {job.describe()}")
        if limit and len(jobs) > limit:
            lines.append(f"  ... and {len(jobs) - limit} more (--list-jobs lists every one)")
    return "\n".join(lines)


def published_extra(plan: Plan, units: Sequence[Any], rules: Sequence[str]):
    from shiftbench.results.published import display_rows, reference_rows

    names = [u.name for u in units]
    rows, notes = reference_rows(plan.suite, names, [plan.algorithm, *plan.baselines], rules)
    return display_rows(rows, names), rows, notes


def compare(algorithm: str, against: Sequence[str] | None = None, suite: str = "digits-dg", *,
            output_dir: str = DEFAULT_STORE, steps: int | None = None,
            n_trials: int | None = None, n_hparams: int | None = None,
            imports: Sequence[str] = (), data_dir: str | None = None, launcher: str = "local",
            launch_options: Any = None, dry_run: bool = False, detect: float | None = None,
            alpha: float = 0.05, rules: Sequence[str] | None = None, fmt: str = "text",
            list_jobs: bool = False, confirm=None, echo=print) -> CompareResult:
    """Plan, launch what the store lacks, and compute the comparison (see the module doc).

    `confirm(question) -> bool` is asked before launching (None: launch). Returns the tables as
    DataFrames (`frames`: algorithms, differences, verdicts, published) and the printed text."""
    import pandas as pd

    from shiftbench.cli import import_user_modules
    from shiftbench.results.compare import compare_records, render
    from shiftbench.results.selection import get_selection_rule
    from shiftbench.sweeps.launchers import LaunchOptions, get_launcher

    if fmt not in FORMATS:
        raise UnknownNameError("format", fmt, FORMATS)
    if not 0 < alpha < 1:
        raise ShiftbenchError(f"--alpha must be in (0, 1), got {alpha}")
    if detect is not None and not detect > 0:
        raise ShiftbenchError(f"--detect must be a positive difference in points, got {detect}")
    chosen = get_suite(suite).with_budget(steps=steps, n_trials=n_trials, n_hparams=n_hparams)
    rules = list(rules or chosen.rules)
    for rule in rules:
        get_selection_rule(rule)  # unknown names list the rules
    import_user_modules([*chosen.imports, *imports])
    run = get_launcher(launcher) if not dry_run else None
    plan = make_plan(chosen, algorithm, list(against or chosen.baselines), output_dir,
                     data_dir, tuple(imports))
    units = units_of(plan)
    changed = chosen.overridden()
    echo(chosen.describe(plan.spec.trial.precision)
         + (f"\n  budget changed from the suite's: {', '.join(changed)}" if changed else ""))
    echo(f"{algorithm} against {', '.join(plan.baselines)}; store {plan.store}")
    if dry_run:
        echo(job_listing(plan, None if list_jobs else MAX_LISTED))
    echo(plan_table(plan))
    echo(cost_note(plan))
    for note in plan.notes:
        echo(f"note: {note}")
    result = CompareResult(plan)
    extra, published, notes = published_extra(plan, units, rules)
    if dry_run:
        for title, headers, rows in extra:
            from tabulate import tabulate

            echo(title + "\n" + tabulate(rows, headers=headers, disable_numparse=True))
        for note in notes:
            echo(f"note: {note}")
        result.frames = {"published": pd.DataFrame(published)}
        return result
    todo = plan.to_run
    if todo and confirm is not None and not confirm(f"Launch {len(todo)} job(s)?"):
        raise NotConfirmed("nothing launched (not confirmed); --skip-confirmation launches "
                           "without asking")
    if todo:
        for job in todo:
            job.prepare()
        launched = run(todo, launch_options or LaunchOptions())
        for line in launched.info:
            echo(line)
        if launched.interrupted:
            raise KeyboardInterrupt
        result.launched, result.failed = launched.launched, len(launched.failed)
        echo(f"launched {launched.launched}, succeeded {launched.succeeded}, failed "
             f"{len(launched.failed)}")
    records = read_plan_records(plan)
    comparison = compare_records(records, algorithm, plan.baselines, units, rules, alpha, detect)
    not_done = sum(not (j.dir / "done").exists() for j in plan.jobs)
    if not_done:
        comparison.notes.append(f"{not_done} of {len(plan.jobs)} jobs are not done (failed, "
                                "running elsewhere or interrupted); the tables use the trials "
                                "that have records")
    comparison.notes += notes
    result.frames = {**comparison.frames, "published": pd.DataFrame(published)}
    result.text = render(comparison, fmt, extra)
    echo(result.text)
    return result


def cmd_compare(ns: argparse.Namespace) -> int:
    from shiftbench.sweeps.cli import confirm, launch_options

    options = launch_options(ns)
    compare(ns.algorithm, ns.against, ns.suite, output_dir=ns.output_dir, steps=ns.steps,
            n_trials=ns.n_trials, n_hparams=ns.n_hparams, imports=ns.imports,
            data_dir=ns.data_dir, launcher=ns.launcher, launch_options=options,
            dry_run=ns.dry_run, detect=ns.detect, alpha=ns.alpha, rules=ns.selection,
            fmt=ns.format, list_jobs=ns.list_jobs,
            confirm=lambda q: confirm(q, ns.skip_confirmation))
    return 0


def register(subparsers) -> None:
    """Add `compare`."""
    from shiftbench.cli import flag
    from shiftbench.sweeps.cli import add_launch_arguments

    p = subparsers.add_parser("compare", help="compare an algorithm with baselines on a suite, "
                              "at an identical budget, with intervals, tests and power",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithm", required=True, help="the algorithm under test")
    p.add_argument("--against", nargs="+", default=None, metavar="BASELINE",
                   help="baselines (default: the suite's, ERM)")
    p.add_argument("--suite", required=True,
                   help=f"one of: {', '.join(SUITES)} (shiftbench list suites)")
    p.add_argument("--steps", type=int, default=None, help="override the suite's steps")
    p.add_argument(*flag("n_trials"), type=int, default=None,
                   help="override the suite's trial seeds")
    p.add_argument(*flag("n_hparams"), type=int, default=None,
                   help="override the suite's hparam configurations per algorithm")
    p.add_argument(*flag("output_dir"), "--store", default=DEFAULT_STORE,
                   help="the results store: finished trials there are reused (default "
                        f"./{DEFAULT_STORE}; a shared directory works)")
    p.add_argument(*flag("data_dir"), default=None)
    p.add_argument(*flag("import"), dest="imports", action="append", default=[],
                   metavar="MODULE", help="a module registering the algorithm (repeatable)")
    p.add_argument("--selection", nargs="+", default=None, metavar="RULE",
                   help="selection rules (default: the suite's)")
    p.add_argument("--detect", type=float, default=None, metavar="POINTS",
                   help="also print the trial seeds needed to detect this difference at 80%% "
                        "power")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--format", choices=FORMATS, default="text")
    p.add_argument("--dry-run", action="store_true",
                   help="print the jobs to run, those reused and the estimated cost; run nothing")
    p.add_argument("--list-jobs", action="store_true", help="with --dry-run: list every job")
    add_launch_arguments(p)
    p.set_defaults(func=cmd_compare)
