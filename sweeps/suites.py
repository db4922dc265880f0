"""Named, versioned comparison suites: what `shiftbench compare` runs every algorithm on.

A suite fixes everything a fair comparison must hold equal: the datasets, the held-out sets or
source->target tasks, the setting, the protocol (hparam defaults, search spaces, networks), the
steps, the hparam budget (how many configurations each algorithm draws from its own search
space), the trial seeds, fixed hparams shared by every algorithm, and the selection rules the
comparison is reported under. `version` changes whenever any of these does, so a result quoted
as "digits-dg v1" means one job set.

Suites:
* `digits-dg` - the offline digits (`DigitsDemo`: 4 domains, 16x16 px), each domain held out in
  turn, dg, the small CNN at half width, batch 16: minutes on a CPU.
* `digits-da` - the same data, unsupervised adaptation on the four classic digit pairs
  (`digits` task suite: mnist->mnist_m, synth->mnist, mnist->lowres, lowres->mnist).
* `rmnist` - DomainBed's protocol on RotatedMNIST: 20 hparam configurations, 3 trial seeds,
  every single and paired held-out set, the dataset's steps, its three selection rules.
* `domainbed-full` - DomainBed's paper (Gulrajani & Lopez-Paz, ICLR 2021): the same protocol on
  its 7 datasets, ColoredMNIST, RotatedMNIST, VLCS, PACS, OfficeHome, TerraIncognita, DomainNet.
* `office31-da`, `officehome-da` - TLlib's unsupervised-adaptation tables: the single-source
  pairs of Office-31 / Office-Home, ResNet-50, batch 32, TLlib's 20 (30) epochs of 1,000
  iterations; reported at the oracle rule (TLlib picks the epoch by target test accuracy).

`spec(...)` turns a suite plus the algorithms (and budget overrides) into a `SweepSpec`; the jobs
and their identities then come from `shiftbench.sweeps.jobs` like any sweep's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.sweeps.spec import SweepSpec
from shiftbench.trial_record import auto_precision

BUDGET_KEYS = ("steps", "n_trials", "n_hparams")


@dataclass(frozen=True)
class Suite:
    """One comparison protocol. `steps=None` uses each dataset's own number of steps."""

    name: str
    version: int
    description: str
    datasets: tuple[str, ...]
    task: str = "dg"
    tasks: tuple[str, ...] = ()  # named source->target task suites (shiftbench.sweeps.tasks)
    single_test_envs: bool = False
    protocol: str = "shiftbench"
    steps: int | None = None
    checkpoint_freq: int | None = None
    n_hparams: int = 1
    n_trials: int = 3
    hparams: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # "auto": bf16 where the hardware runs it natively
    rules: tuple[str, ...] = ("iid",)
    imports: tuple[str, ...] = ()  # modules registering the suite's datasets
    baselines: tuple[str, ...] = ("ERM",)
    published: tuple[str, ...] = ()  # ids of published reference tables (results/published)

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def with_budget(self, **overrides: int | None) -> Suite:
        """The suite with `steps` / `n_trials` / `n_hparams` replaced (None keeps the suite's)."""
        unknown = sorted(set(overrides) - set(BUDGET_KEYS))
        if unknown:
            raise UnknownNameError("budget override", unknown[0], BUDGET_KEYS)
        given = {k: v for k, v in overrides.items() if v is not None}
        for key, value in given.items():
            if not isinstance(value, int) or value < 1:
                raise ShiftbenchError(f"--{key.replace('_', '-')} must be a positive integer, "
                                      f"got {value!r}")
        return replace(self, **given)

    def overridden(self) -> list[str]:
        """The budget keys that differ from the registered suite of the same name."""
        base = SUITES.get(self.name)
        if base is None:
            return []
        return [k for k in BUDGET_KEYS if getattr(self, k) != getattr(base, k)]

    def spec(self, algorithms: Sequence[str]) -> SweepSpec:
        """The sweep of `algorithms` on this suite (validated by the caller)."""
        precision = self.precision
        if precision == "auto":
            precision = auto_precision()
        spec = SweepSpec(
            datasets=list(self.datasets), algorithms=list(algorithms), task=self.task,
            tasks=list(self.tasks), n_hparams=self.n_hparams, n_trials=self.n_trials,
            steps=self.steps, checkpoint_freq=self.checkpoint_freq,
            single_test_envs=self.single_test_envs, protocol=self.protocol,
            precision=precision, hparams=dict(self.hparams))
        # paired trials: at one trial seed every algorithm draws the same batches (issue 22)
        if "seeding" in {f.name for f in fields(SweepSpec)}:
            spec.seeding = "paired"
        elif hasattr(spec.trial, "seeding"):
            spec.trial.seeding = "paired"
        return spec

    def describe(self, precision: str | None = None) -> str:
        """Two lines for the top of a comparison (`precision`: what "auto" resolved to)."""
        where = (f"tasks {', '.join(self.tasks)} on {', '.join(self.datasets)}" if self.tasks
                 else f"{', '.join(self.datasets)}, "
                      + ("single held-out domains" if self.single_test_envs
                         else "single and paired held-out domains"))
        steps = self.steps if self.steps is not None else "dataset default"
        fixed = (", " + ", ".join(f"{k}={v}" for k, v in self.hparams.items())
                 if self.hparams else "")
        return (f"{self.label}: {self.description}\n  {where}; setting {self.task}, protocol "
                f"{self.protocol}; {self.n_hparams} hparam configuration(s) x {self.n_trials} "
                f"trial seeds, steps {steps}, precision {precision or self.precision}{fixed}; rules "
                f"{', '.join(self.rules)}")


_DIGITS = dict(datasets=("DigitsDemo",), steps=250, checkpoint_freq=50, n_hparams=3, n_trials=3,
               hparams={"batch_size": 16, "cnn_width": 32}, precision="auto",
               imports=("shiftbench.demo_data",))
_DOMAINBED = dict(protocol="domainbed", n_hparams=20, n_trials=3,
                  rules=("iid", "loo", "oracle"))
DOMAINBED_DATASETS = ("ColoredMNIST", "RotatedMNIST", "VLCS", "PACS", "OfficeHome",
                      "TerraIncognita", "DomainNet")

SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("digits-dg", 1, "offline digits, each of 4 domains held out, small CNN (CPU minutes)",
          single_test_envs=True, rules=("iid", "oracle"), **_DIGITS),
    Suite("digits-da", 1, "offline digits, unsupervised adaptation on the 4 classic digit pairs",
          task="uda", tasks=("digits",), rules=("iid", "entropy", "snd", "oracle"),
          **_DIGITS),
    Suite("rmnist", 1, "DomainBed's protocol on RotatedMNIST", datasets=("RotatedMNIST",),
          published=("domainbed-2020",), **_DOMAINBED),
    Suite("domainbed-full", 1, "DomainBed's paper: its protocol on its 7 datasets",
          datasets=DOMAINBED_DATASETS, published=("domainbed-2020",), **_DOMAINBED),
    Suite("office31-da", 1, "TLlib's Office-31 table: 6 single-source pairs, ResNet-50",
          datasets=("Office31",), task="uda", tasks=("office31",), steps=20000,
          hparams={"batch_size": 32}, rules=("oracle", "iid"), published=("tllib-office31",)),
    Suite("officehome-da", 1, "TLlib's Office-Home table: 12 single-source pairs, ResNet-50",
          datasets=("OfficeHome",), task="uda", tasks=("officehome",), steps=30000,
          hparams={"batch_size": 32}, rules=("oracle", "iid"), published=("tllib-officehome",)),
)}


def get_suite(name: str) -> Suite:
    """A suite by name; an unknown name lists the suites."""
    if name not in SUITES:
        raise UnknownNameError("suite", name, SUITES)
    return SUITES[name]


def list_suites() -> list[dict[str, Any]]:
    """One row per suite (what `shiftbench list suites` prints)."""
    rows = []
    for s in SUITES.values():
        rows.append({"suite": s.name, "v": s.version, "setting": s.task,
                     "datasets": ", ".join(s.datasets),
                     "held_out": ("tasks " + ", ".join(s.tasks)) if s.tasks else
                     ("single" if s.single_test_envs else "single+pairs"),
                     "protocol": s.protocol, "steps": s.steps or "dataset",
                     "hparams x seeds": f"{s.n_hparams} x {s.n_trials}",
                     "rules": ", ".join(s.rules), "description": s.description})
    return rows
