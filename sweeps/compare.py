"""Planning and running a comparison: every algorithm's jobs on a suite, found in a results store.

The store is a directory (a shared one on a cluster file system works: jobs take a lock): each
trial lives in `<store>/<hash>`, its hash the trial's identity (`shiftbench.trial_record`), which
holds every argument that changes the result and nothing else (not the output directory, not the
algorithm under test). So a baseline trial finished by an earlier comparison, or by any sweep
into the same directory, is found and reused; only trials not done are launched.

Cost estimate (`estimate_costs`): CPU seconds per training step of each (dataset, algorithm),
from the store's own finished trials of the same dataset and algorithm where there are some
(their last record's `cpu_time` over their steps), else from the figures shipped in
`sweeps/step_costs.json` (measured by bench/bench_step_costs.py, with the machine they were
measured on), else the dataset's ERM figure (marked).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError
from shiftbench.sweeps.jobs import Job, enumerate_jobs
from shiftbench.sweeps.spec import SweepSpec
from shiftbench.sweeps.state import job_state
from shiftbench.sweeps.suites import Suite
from shiftbench.trial_dir import TrialDir

STEP_COSTS = Path(__file__).resolve().parent / "step_costs.json"
SAMPLE = 20  # finished trials read per (dataset, algorithm) for the cost estimate


@dataclass
class Plan:
    """Every job of a comparison and what the store already has."""

    suite: Suite
    algorithm: str
    baselines: list[str]
    spec: SweepSpec
    store: Path
    jobs: list[Job]
    states: dict[str, str]  # job hash -> done | running | incomplete | failed | not_launched
    cost_per_step: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def to_run(self) -> list[Job]:
        """Jobs the comparison launches: not done and not running elsewhere (failed ones too)."""
        return [j for j in self.jobs if self.states[j.hash] not in ("done", "running")]

    @property
    def reused(self) -> list[Job]:
        return [j for j in self.jobs if self.states[j.hash] == "done"]

    def job_cost(self, job: Job) -> float | None:
        found = self.cost_per_step.get((job.args.dataset, job.args.algorithm))
        return None if found is None else found[0] * (job.args.steps or 0)


def make_plan(suite: Suite, algorithm: str, baselines: list[str], store: str | Path,
              data_dir: str | None = None, imports: tuple[str, ...] = ()) -> Plan:
    """The comparison's jobs (its algorithm and baselines at the suite's identical budget) and
    their states in the store."""
    if not baselines:
        raise ShiftbenchError("no baseline to compare against (--against NAME ...)")
    if algorithm in baselines:
        raise ShiftbenchError(f"--algorithm {algorithm} is also in --against "
                              f"({', '.join(baselines)}); compare it with other algorithms")
    if len(set(baselines)) != len(baselines):
        raise ShiftbenchError(f"--against names an algorithm twice: {', '.join(baselines)}")
    spec = suite.spec([algorithm, *baselines])
    spec.validate()
    all_imports = tuple(dict.fromkeys((*suite.imports, *imports)))
    jobs = enumerate_jobs(spec, store, data_dir, all_imports)
    states = {j.hash: job_state(j.dir).state for j in jobs}
    plan = Plan(suite, algorithm, list(baselines), spec, Path(store), jobs, states)
    plan.cost_per_step = estimate_costs(plan)
    if Path(store).is_dir():  # trials of an unpaired sweep of the same job set are not reused
        unpaired = [j for j in enumerate_jobs(spec, store, data_dir, all_imports,
                                              seeding="domainbed") if j.hash not in states]
        found = sum(j.dir.is_dir() for j in unpaired)
        if found:
            plan.notes.append(f"{found} trial(s) of this job set in {store} were run with "
                              "unpaired (domainbed) seeds; compare runs paired trials and does "
                              "not reuse them")
    return plan


def _measured_in_store(jobs: list[Job]) -> float | None:
    """Mean CPU seconds per step of (up to SAMPLE) finished jobs, from their last record."""
    costs = []
    for job in jobs[:SAMPLE]:
        try:
            last = TrialDir(job.dir).results.read_bytes().splitlines()[-1]
            record = json.loads(last)
            costs.append(float(record["cpu_time"]) / max(1, int(record["step"]) + 1))
        except (OSError, IndexError, KeyError, ValueError, TypeError):
            continue
    return sum(costs) / len(costs) if costs else None


def shipped_costs() -> dict[str, Any]:
    """The measured per-step costs shipped with shiftbench (and the machine they came from)."""
    try:
        return json.loads(STEP_COSTS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"costs": {}, "machine": {}}


def estimate_costs(plan: Plan) -> dict[tuple[str, str], tuple[float, str]]:
    """(dataset, algorithm) -> (CPU seconds per step, where the figure comes from)."""
    shipped = shipped_costs()["costs"]
    done: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in plan.reused:
        done[(job.args.dataset, job.args.algorithm)].append(job)
    out = {}
    for key in dict.fromkeys((j.args.dataset, j.args.algorithm) for j in plan.jobs):
        dataset, algorithm = key
        measured = _measured_in_store(done.get(key, []))
        if measured is not None:
            out[key] = (measured, "store")
        elif algorithm in shipped.get(dataset, {}):
            out[key] = (shipped[dataset][algorithm], "bench")
        elif "ERM" in shipped.get(dataset, {}):
            out[key] = (shipped[dataset]["ERM"], "bench, ERM's")
    return out


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.2g}" if hours < 10 else f"{hours:,.0f}"


def plan_table(plan: Plan) -> str:
    """Per dataset and algorithm: jobs, reused, to run, and the estimated CPU hours to run."""
    from tabulate import tabulate

    rows = []
    groups: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in plan.jobs:
        groups[(job.args.dataset, job.args.algorithm)].append(job)
    total = {"jobs": 0, "reused": 0, "run": 0, "cpu": 0.0, "unknown": 0}
    for (dataset, algorithm), jobs in groups.items():
        run = [j for j in jobs if plan.states[j.hash] not in ("done", "running")]
        reused = sum(plan.states[j.hash] == "done" for j in jobs)
        per_step = plan.cost_per_step.get((dataset, algorithm))
        cpu = None if per_step is None else sum(plan.job_cost(j) or 0 for j in run)
        total["jobs"] += len(jobs)
        total["reused"] += reused
        total["run"] += len(run)
        total["cpu"] += cpu or 0
        total["unknown"] += len(run) if per_step is None else 0
        rows.append([dataset, algorithm, len(jobs), reused, len(run),
                     "-" if per_step is None else f"{per_step[0]:.3g} ({per_step[1]})",
                     "?" if cpu is None else _hours(cpu)])
    rows.append(["total", "", total["jobs"], total["reused"], total["run"], "",
                 _hours(total["cpu"]) + (f" + {total['unknown']} jobs of unknown cost"
                                         if total["unknown"] else "")])
    return tabulate(rows, headers=["dataset", "algorithm", "jobs", "reused (done)", "to run",
                                   "CPU s/step (from)", "CPU hours to run"],
                    tablefmt="simple", disable_numparse=True)


def cost_note(plan: Plan) -> str:
    machine = shipped_costs().get("machine", {})
    where = ", ".join(f"{k} {v}" for k, v in machine.items() if k in ("cpu", "threads", "date"))
    return ("CPU hours = steps x CPU seconds per step (training and evaluation of finished trials "
            "in this store where there are some ('store'); else bench/bench_step_costs.py's "
            f"training steps{' on ' + where if where else ''} ('bench'), without evaluation); "
            "divide by the jobs run at once; GPUs are much faster")


def read_plan_records(plan: Plan) -> list[dict[str, Any]]:
    """The records of the plan's jobs only (the store may hold other trials)."""
    from shiftbench.results.reading import _drop_cross_directory_duplicates, _read_job

    per_job = []
    for job in plan.jobs:
        if (job.dir / "results.jsonl").exists():
            per_job.append(_read_job(job.dir, lambda message: None))
    _drop_cross_directory_duplicates(per_job, lambda message: None)
    return [r for _, records in per_job for r in records]
