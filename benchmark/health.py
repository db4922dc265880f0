"""Run health as the trainer judges it: diverged, not learning, collapsed, target at chance.

Every run (the records of one trial: one algorithm, dataset, held-out set, trial seed and
hyperparameter configuration) is checked from its records alone, so old records and
DomainBed's get the same checks. The trainer writes the verdict into a run's last record
(`loop`); the collector (`results.health`) recomputes it, adds the selection-time flag and
builds tables. Thresholds are module constants, documented in docs/results.md and tested on
crafted records in tests/test_results_health.py:

* **diverged** — a recorded loss is not finite, or the trial's `failed` marker says the
  trainer stopped on a non-finite loss.
* **not learning** — at the run's end (its last checkpoint, once the run reached its budget;
  for a phased method, the last checkpoint of its source phase, when it has one):
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
* **target at chance** — a run of a setting that reads target data (every setting but dg:
  unlabeled or few labeled target examples, or a test stream to adapt on) that learned its
  source (not flagged "not learning") ends, at its last checkpoint, with target accuracy (the
  key the collapse check reads) at most chance + `NOT_LEARNING_MARGIN` x (1 - chance) on some
  held-out environment. The classifier it hands over is useless on the domain it adapted to,
  as when self-training turns every target prediction into one class (FixMatch on
  mnist -> lowres). A diagnostic, like collapsed; a domain generalization run is not checked
  (an unseen domain at chance is what DG measures, e.g. ColoredMNIST's test environment).
* **selected before adaptation** — set by the collector (`results.health.annotate`) when a
  selection rule chose a checkpoint of a phased algorithm from before its adaptation.

Which checkpoints precede adaptation comes from `shiftbench.phases`, as for the collector.
Imports no torch and nothing of `shiftbench.results`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shiftbench.phases import source_phase
from shiftbench.setting import get_setting
from shiftbench.trial_record import overrides_key, record_key

DIVERGED = "diverged"
NOT_LEARNING = "not learning"
COLLAPSED = "collapsed"
AT_CHANCE = "target at chance"
BEFORE_ADAPTATION = "selected before adaptation"
FLAGS = (DIVERGED, NOT_LEARNING, COLLAPSED, AT_CHANCE, BEFORE_ADAPTATION)
MARKS = {DIVERGED: "[d]", NOT_LEARNING: "[n]", COLLAPSED: "[c]", AT_CHANCE: "[t]",
         BEFORE_ADAPTATION: "[a]"}
MEANINGS = {
    DIVERGED: "a non-finite loss",
    NOT_LEARNING: "source validation near chance or loss near ln C at the end",
    COLLAPSED: "target accuracy at the last checkpoint far below its own best (diagnostic)",
    AT_CHANCE: "a run that reads target data learned its source but ends near chance on its "
               "target (diagnostic)",
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
    overrides: str = ""  # the fixed hparams overrides (`trial_record.overrides_key`), "" for none

    @property
    def all_flags(self) -> list[str]:
        """The run's flags plus `selected before adaptation` if some rule chose too early."""
        return self.flags + ([BEFORE_ADAPTATION] if self.early else [])

    @property
    def key(self) -> tuple:
        return run_key(self.task, self.dataset, self.algorithm, self.test_envs, self.trial_seed,
                       self.hparams_seed, self.source_envs, self.overrides)

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
            hparams_seed: int, source_envs: Iterable[int] | None, overrides: str = "") -> tuple:
    """One run: a trial's group fields plus its configuration (hparams seed and fixed
    overrides, `trial_record.config_key`), so a sweep's grid points are separate runs."""
    return (task, dataset, algorithm, tuple(sorted(int(e) for e in test_envs)), int(trial_seed),
            int(hparams_seed), None if source_envs is None else tuple(sorted(int(e) for e in source_envs)),
            overrides)


def record_run_key(record: Mapping[str, Any]) -> tuple:
    a = record["args"]
    return run_key(a["task"], a["dataset"], a["algorithm"], a["test_envs"], a.get("trial_seed", 0),
                   a.get("hparams_seed", 0), a.get("source_envs"), overrides_key(a.get("hparams")))


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


def check_run(records: Sequence[dict[str, Any]], status: str | None = None,
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
                       last.get("_job_dir", a.get("output_dir")), last["step"],
                       overrides=overrides_key(a.get("hparams")))
    for r in records:
        bad = [k for k, v in r.items() if ("loss" in k or k == "nll") and _number(v)
               and not math.isfinite(v)]
        if bad:
            health.flag(DIVERGED, f"{', '.join(sorted(bad))} = {r[bad[0]]} at step {r['step']}")
            break
    if failure and failure.startswith(DIVERGED_ERROR):
        health.flag(DIVERGED, f"the trainer stopped: {failure}")
    judged_at_end = not _is_segmentation(last) and _reached_end(last, status)
    if judged_at_end:
        _check_learning(health, _learning_checkpoint(records))
    _check_collapse(health, records)
    if judged_at_end:
        _check_target_chance(health, records)
    return health


def _learning_checkpoint(records: Sequence[dict[str, Any]]) -> Mapping[str, Any]:
    """The checkpoint "not learning" is judged at: the last one, or, for a phased method (a
    recorded or declared `adaptation_start`, `shiftbench.phases`), the last one of its source
    phase (0 < step < start) when there is one. After the switch a method may stop reading the
    source (SHOT) or predict with a new network (ADDA, GAM), so source validation then measures
    forgetting, not learning; a collapse after the switch is the collapse check's to report."""
    source = source_phase(records)
    return source[-1] if source else records[-1]


def _near_chance(acc: float, chance: float) -> bool:
    """acc <= chance + `NOT_LEARNING_MARGIN` x (1 - chance): the bar of "not learning" (source
    validation) and of "target at chance"."""
    return acc <= chance + NOT_LEARNING_MARGIN * (1 - chance) + EPS


def _check_learning(health: RunHealth, last: Mapping[str, Any]) -> None:
    c = num_classes(last)
    if c is None:
        return
    health.chance = chance = 1.0 / c
    health.source_val = val = source_validation(last)
    if val is not None and _near_chance(val, chance):
        health.flag(NOT_LEARNING, f"source validation {100 * val:.1f}% at step {last['step']} "
                                  f"(chance {100 * chance:.1f}%, C = {c})")
    health.loss = loss = classification_loss(last)
    ln_c = math.log(c)
    if loss is not None and math.isfinite(loss) and abs(loss - ln_c) <= LOSS_TOLERANCE * ln_c + EPS:
        health.flag(NOT_LEARNING, f"loss {loss:.3f} at step {last['step']} (ln {c} = "
                                  f"{math.log(c):.3f})")


def _target_key(records: Sequence[Mapping[str, Any]], t: int, metric: str) -> str:
    """The test accuracy (or mIoU) key of held-out environment t: its held-out split, else the
    adapted-to one (a run with no held-out target split)."""
    key = record_key(t, "in", metric)
    return key if any(key in r for r in records) else record_key(t, "uda", metric)


def _reads_target(task: str) -> bool:
    try:
        setting = get_setting(task)
    except Exception:  # noqa: BLE001 - a task this version does not know: not checked
        return False
    return setting.unlabeled_target or setting.few_shot_target or setting.adapts_at_test


def _check_target_chance(health: RunHealth, records: Sequence[Mapping[str, Any]]) -> None:
    """Target at chance: judged on the last checkpoint, after `_check_learning` set chance."""
    if health.chance is None or NOT_LEARNING in health.flags or not _reads_target(health.task):
        return
    last, chance = records[-1], health.chance
    for t in health.test_envs:
        acc = last.get(_target_key(records, t, "acc"))
        if _number(acc) and math.isfinite(acc) and _near_chance(acc, chance):
            health.flag(AT_CHANCE, f"env {t}: {100 * acc:.1f}% at step {last['step']} (chance "
                                   f"{100 * chance:.1f}%)")


def _check_collapse(health: RunHealth, records: Sequence[dict[str, Any]]) -> None:
    metric = "miou" if _is_segmentation(records[-1]) else "acc"
    for t in health.test_envs:
        key = _target_key(records, t, metric)
        curve = [(r["step"], r[key]) for r in records if _number(r.get(key)) and math.isfinite(r[key])]
        if len(curve) < 2:
            continue
        best_step, best = max(curve, key=lambda sv: sv[1])
        last_step, last = curve[-1]
        if best - last >= COLLAPSE_DROP - EPS:
            health.flag(COLLAPSED, f"env {t}: {100 * last:.1f} at step {last_step} vs best "
                                   f"{100 * best:.1f} at step {best_step}")


def thresholds() -> dict[str, Any]:
    return {"not_learning_margin": NOT_LEARNING_MARGIN, "loss_tolerance": LOSS_TOLERANCE,
            "collapse_drop": COLLAPSE_DROP}


def marks(flags: Iterable[str]) -> str:
    """The cell marks of a set of flags, in `FLAGS` order (`""` for none)."""
    flags = set(flags)
    return "".join(MARKS[f] for f in FLAGS if f in flags)
