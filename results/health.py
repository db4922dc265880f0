"""Run health: which trials diverged, did not learn, collapsed, or were selected too early.

Every run (the records of one trial: one algorithm, dataset, held-out set, trial seed and
hyperparameter configuration) is checked from its records alone, so old records and
DomainBed's get the same checks. The flags (thresholds are module constants, documented in
docs/results.md and tested on crafted records in tests/test_results_health.py):

* **diverged** — a recorded loss is not finite, or the trial's `failed` marker says the
  trainer stopped on a non-finite loss.
* **not learning** — at the run's end (its last checkpoint, once the run reached its budget):
  the mean validation accuracy of its source domains (`env{i}_out_acc`) is at most
  chance + `NOT_LEARNING_MARGIN` x (1 - chance), chance = 1 / C; or its classification loss
  is within `LOSS_TOLERANCE` x ln C of ln C (the loss of a uniform prediction). The loss read
  is the first of `CLASSIFICATION_LOSS_KEYS` recorded, else `loss` when no other loss term
  is recorded (so composite objectives are not mistaken for a cross-entropy). C is the
  record's `num_classes`, else the dataset's. Not checked on segmentation records.
* **collapsed** — on some held-out environment t, test accuracy (`env{t}_in_acc`, else the
  unlabeled target split's `env{t}_uda_acc`) at the last checkpoint is at least
  `COLLAPSE_DROP` below the run's best checkpoint. A diagnostic for the reader: it is
  never an input to selection (which cannot see test accuracy).
* **selected before adaptation** — a selection rule chose a checkpoint of a phased algorithm
  from before its adaptation (`results.phases`); per rule, since each rule selects its own.

`annotate` puts the flags of each selected run on its `Selected.health`; table cells built
from flagged trials then carry the flags' marks (`MARKS`) and a footnote.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shiftbench.results.phases import adaptation_start
from shiftbench.trial_record import record_key

DIVERGED = "diverged"
NOT_LEARNING = "not learning"
COLLAPSED = "collapsed"
BEFORE_ADAPTATION = "selected before adaptation"
FLAGS = (DIVERGED, NOT_LEARNING, COLLAPSED, BEFORE_ADAPTATION)
MARKS = {DIVERGED: "[d]", NOT_LEARNING: "[n]", COLLAPSED: "[c]", BEFORE_ADAPTATION: "[a]"}
MEANINGS = {
    DIVERGED: "a non-finite loss",
    NOT_LEARNING: "source validation near chance or loss near ln C at the end",
    COLLAPSED: "target accuracy at the last checkpoint far below its own best (diagnostic)",
    BEFORE_ADAPTATION: "the selected checkpoint precedes the algorithm's adaptation phase",
}

NOT_LEARNING_MARGIN = 0.1  # source validation <= chance + 0.1 (1 - chance)
LOSS_TOLERANCE = 0.05  # |loss - ln C| <= 0.05 ln C
COLLAPSE_DROP = 0.10  # best - last test accuracy >= 0.10 (10 points)
CLASSIFICATION_LOSS_KEYS = ("cls_loss", "src_loss", "sup_loss", "erm_loss", "nll")
EPS = 1e-9  # thresholds compare with this slack, so 0.6 - 0.5 counts as a 0.10 drop
DIVERGED_ERROR = "non-finite loss"  # the trainer's `failed` marker on divergence

# Classes of DomainBed's datasets that may not be registered here (records read from DomainBed).
DOMAINBED_CLASSES = {"Debug28": 2, "Debug224": 2, "ColoredMNIST": 2, "RotatedMNIST": 10,
                     "VLCS": 5, "PACS": 7, "OfficeHome": 65, "TerraIncognita": 10,
                     "DomainNet": 345, "SVIRO": 7, "WILDSCamelyon": 2, "WILDSFMoW": 62}


@dataclass
class RunHealth:
    """The checks of one run and what they read."""

    task: str
    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    trial_seed: int
    hparams_seed: int
    source_envs: tuple[int, ...] | None
    job_dir: str | None
    last_step: Any
    flags: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)  # flag -> what tripped it
    source_val: float | None = None
    chance: float | None = None
    loss: float | None = None
    adaptation_start: int | None = None
    early: dict[str, Any] = field(default_factory=dict)  # rule -> step chosen before adaptation

    @property
    def all_flags(self) -> list[str]:
        """The run's flags plus `selected before adaptation` if some rule chose too early."""
        return self.flags + ([BEFORE_ADAPTATION] if self.early else [])

    @property
    def key(self) -> tuple:
        return run_key(self.task, self.dataset, self.algorithm, self.test_envs, self.trial_seed,
                       self.hparams_seed, self.source_envs)

    def flag(self, name: str, detail: str) -> None:
        if name not in self.flags:
            self.flags.append(name)
            self.details[name] = detail
        else:
            self.details[name] += "; " + detail

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "dataset": self.dataset, "algorithm": self.algorithm,
                "test_envs": list(self.test_envs), "trial_seed": self.trial_seed,
                "hparams_seed": self.hparams_seed,
                "source_envs": None if self.source_envs is None else list(self.source_envs),
                "job_dir": self.job_dir, "last_step": self.last_step, "flags": self.all_flags,
                "details": dict(self.details), "selected_before_adaptation": dict(self.early),
                "source_val": self.source_val,
                "chance": self.chance, "loss": self.loss,
                "adaptation_start": self.adaptation_start}


def run_key(task: str, dataset: str, algorithm: str, test_envs: Iterable[int], trial_seed: int,
            hparams_seed: int, source_envs: Iterable[int] | None) -> tuple:
    return (task, dataset, algorithm, tuple(sorted(int(e) for e in test_envs)), int(trial_seed),
            int(hparams_seed), None if source_envs is None else tuple(sorted(int(e) for e in source_envs)))


def record_run_key(record: Mapping[str, Any]) -> tuple:
    a = record["args"]
    return run_key(a["task"], a["dataset"], a["algorithm"], a["test_envs"], a.get("trial_seed", 0),
                   a.get("hparams_seed", 0), a.get("source_envs"))


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def num_classes(record: Mapping[str, Any]) -> int | None:
    """C from the record (`num_classes`), else the dataset's (torch-free index, then DomainBed's)."""
    c = record.get("num_classes")
    if _number(c) and c >= 2:
        return int(c)
    dataset = record["args"]["dataset"]
    try:
        from shiftbench.catalog import dataset_index

        c = dataset_index()[dataset].num_classes
        if _number(c) and c >= 2:
            return int(c)
    except Exception:  # noqa: BLE001 - unknown or unreadable: try DomainBed's list
        pass
    return DOMAINBED_CLASSES.get(dataset)


def classification_loss(record: Mapping[str, Any]) -> float | None:
    """The recorded classification loss (see the module docstring), or None."""
    for key in CLASSIFICATION_LOSS_KEYS:
        if _number(record.get(key)):
            return float(record[key])
    others = [k for k in record if k != "loss" and ("loss" in k or k in ("nll", "penalty"))]
    if _number(record.get("loss")) and not others:
        return float(record["loss"])
    return None


def source_validation(record: Mapping[str, Any]) -> float | None:
    """Mean `env{i}_out_acc` over the run's source domains (None if any is missing)."""
    a = record["args"]
    n = 0
    while record_key(n, "out") in record or record_key(n, "in") in record:
        n += 1
    sources = a.get("source_envs")
    unused = set(record.get("unused_envs") or ())
    if sources is None:
        sources = [i for i in range(n) if i not in a["test_envs"] and i not in unused]
    accs = [record.get(record_key(i, "out")) for i in sources]
    if not accs or not all(_number(x) and math.isfinite(x) for x in accs):
        return None
    return sum(accs) / len(accs)


def _is_segmentation(record: Mapping[str, Any]) -> bool:
    return any(k.endswith("_miou") for k in record)


def _reached_end(last: Mapping[str, Any], status: str | None) -> bool:
    n_steps = last.get("n_steps")
    if _number(n_steps):
        return _number(last["step"]) and last["step"] >= n_steps - 1
    return status not in ("incomplete", "failed")


def run_health(records: Sequence[dict[str, Any]], status: str | None = None,
               failure: str | None = None) -> RunHealth:
    """The diverged / not learning / collapsed checks of one run's records (by step).
    `status` (done / incomplete / failed) and `failure` (the `failed` marker's error) come from
    the trial directory when known."""
    records = sorted(records, key=lambda r: r["step"])
    first, last = records[0], records[-1]
    a = first["args"]
    health = RunHealth(a["task"], a["dataset"], a["algorithm"], tuple(a["test_envs"]),
                       int(a.get("trial_seed", 0)), int(a.get("hparams_seed", 0)),
                       None if a.get("source_envs") is None else tuple(a["source_envs"]),
                       last.get("_job_dir", a.get("output_dir")), last["step"])
    health.adaptation_start = adaptation_start(last)
    for r in records:
        bad = [k for k, v in r.items() if ("loss" in k or k == "nll") and _number(v)
               and not math.isfinite(v)]
        if bad:
            health.flag(DIVERGED, f"{', '.join(sorted(bad))} = {r[bad[0]]} at step {r['step']}")
            break
    if failure and failure.startswith(DIVERGED_ERROR):
        health.flag(DIVERGED, f"the trainer stopped: {failure}")
    if not _is_segmentation(last) and _reached_end(last, status):
        _check_learning(health, last)
    _check_collapse(health, records)
    return health


def _check_learning(health: RunHealth, last: Mapping[str, Any]) -> None:
    c = num_classes(last)
    if c is None:
        return
    health.chance = chance = 1.0 / c
    health.source_val = val = source_validation(last)
    if val is not None and val <= chance + NOT_LEARNING_MARGIN * (1 - chance) + EPS:
        health.flag(NOT_LEARNING, f"source validation {100 * val:.1f}% at step {last['step']} "
                                  f"(chance {100 * chance:.1f}%, C = {c})")
    health.loss = loss = classification_loss(last)
    ln_c = math.log(c)
    if loss is not None and math.isfinite(loss) and abs(loss - ln_c) <= LOSS_TOLERANCE * ln_c + EPS:
        health.flag(NOT_LEARNING, f"loss {loss:.3f} at step {last['step']} (ln {c} = "
                                  f"{math.log(c):.3f})")


def _check_collapse(health: RunHealth, records: Sequence[dict[str, Any]]) -> None:
    metric = "miou" if _is_segmentation(records[-1]) else "acc"
    for t in health.test_envs:
        key = record_key(t, "in", metric)
        if not any(key in r for r in records):  # no held-out split: the adapted-to one
            key = record_key(t, "uda", metric)
        curve = [(r["step"], r[key]) for r in records if _number(r.get(key)) and math.isfinite(r[key])]
        if len(curve) < 2:
            continue
        best_step, best = max(curve, key=lambda sv: sv[1])
        last_step, last = curve[-1]
        if best - last >= COLLAPSE_DROP - EPS:
            health.flag(COLLAPSED, f"env {t}: {100 * last:.1f} at step {last_step} vs best "
                                   f"{100 * best:.1f} at step {best_step}")


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


def thresholds() -> dict[str, Any]:
    return {"not_learning_margin": NOT_LEARNING_MARGIN, "loss_tolerance": LOSS_TOLERANCE,
            "collapse_drop": COLLAPSE_DROP}


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
    when its step precedes the run's adaptation (`results.phases`)."""
    for rule, winners in selected.items():
        for s in winners:
            key = run_key(s.task, s.dataset, s.algorithm, (s.test_env,), s.trial_seed,
                          s.hparams_seed, s.source_envs)
            run = report.runs.get(key)
            if run is None:
                s.health = ()
                continue
            flags = list(run.flags)
            if run.adaptation_start is not None and s.step <= run.adaptation_start:
                flags.append(BEFORE_ADAPTATION)
                run.early[rule] = s.step
            s.health = tuple(f for f in FLAGS if f in flags)


def marks(flags: Iterable[str]) -> str:
    """The cell marks of a set of flags, in `FLAGS` order (`""` for none)."""
    flags = set(flags)
    return "".join(MARKS[f] for f in FLAGS if f in flags)


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
    flagged = sorted(report.flagged(), key=lambda h: (h.task, h.dataset, h.algorithm,
                                                       h.test_envs, h.source_envs or (),
                                                       h.trial_seed, h.hparams_seed))
    for h in flagged:
        where = task_label(h) if task_label else (
            f"{'+'.join(map(str, h.source_envs))}->" if h.source_envs else "") + \
            ",".join(map(str, h.test_envs))
        rows.append(f"{h.algorithm} {h.dataset} [{h.task}] {where} trial {h.trial_seed} "
                    f"hp {h.hparams_seed}")
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
             "selected before adaptation = the chosen step <= the first adaptation step.",
             "Counts: " + ", ".join(f"{f} {counts[f]}" for f in FLAGS)]
    return Table("health", "Run health: flagged runs", None, "all", None, columns, rows, cells,
                 notes, row_label="Run")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"
