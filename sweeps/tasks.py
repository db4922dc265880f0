"""Named suites of source->target tasks, as domain-adaptation papers report them.

A task trains on its source domains and adapts to / is tested on its target domains; the
other domains of the dataset are neither trained on nor adapted to (they are still evaluated).
A suite is a list of tasks given by domain *names*, with the dataset it is defined for; it
applies to any dataset that has those domains (e.g. `digits` also to `DigitsDemo`).

Suites:
* `office31` - Office-31's six pairs, in the field's column order: A->W, D->W, W->D, A->D, D->A, W->A.
* `officehome` - Office-Home's twelve pairs (Ar, Cl, Pr, Rw = A, C, P, R), Ar->Cl ... Rw->Pr.
* `digits` - the classic digit pairs the offline `Digits` domains can host: mnist->mnist_m
  (Ganin & Lempitsky), synth->mnist (SynDigits/SVHN->MNIST), mnist->lowres and lowres->mnist
  (MNIST<->USPS: the low-resolution handwritten domain stands in for USPS).
* `visda` - VisDA-2017: synthetic->real.
* `domainnet`, `pacs`, `vlcs`, `officehome_loo`, `terra`: multi-source leave-one-domain-out, one
  task per domain (all other domains are the sources): DomainBed's tasks, named by target.
* `loo` - leave-one-domain-out on whichever datasets the sweep names.

Without `--tasks`, a sweep keeps DomainBed's behaviour: every held-out set, all other domains
as sources.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from shiftbench.errors import ShiftbenchError, UnknownNameError


@dataclass(frozen=True)
class DATask:
    """One source->target task of a dataset, by domain indices (and names for display)."""

    dataset: str
    source_envs: tuple[int, ...]
    test_envs: tuple[int, ...]
    name: str


@dataclass(frozen=True)
class TaskSuite:
    """Tasks as (source names, target names); `dataset` is the dataset the suite is for
    (None: any dataset, leave-one-domain-out)."""

    dataset: str | None
    pairs: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]
    description: str

    def tasks(self, dataset: str | None = None) -> list[DATask]:
        """The suite's tasks on `dataset` (default: the suite's own dataset)."""
        from shiftbench.sweeps.facts import dataset_facts

        name = dataset or self.dataset
        if name is None:
            raise ShiftbenchError(f"task suite '{self.description}' needs a dataset "
                                  "(--datasets)")
        envs = dataset_facts(name).environments
        if not self.pairs:  # leave-one-domain-out
            return [DATask(name, tuple(j for j in range(len(envs)) if j != i), (i,),
                           task_name(envs, None, (i,))) for i in range(len(envs))]
        missing = sorted({d for src, tgt in self.pairs for d in src + tgt} - set(envs))
        if missing:
            raise ShiftbenchError(
                f"dataset {name} has no domain(s) {', '.join(missing)} needed by this task "
                f"suite; its domains: {', '.join(envs)}")
        out = []
        for src, tgt in self.pairs:
            s = tuple(envs.index(d) for d in src)
            t = tuple(envs.index(d) for d in tgt)
            out.append(DATask(name, s, t, task_name(envs, s, t)))
        return out


def task_name(envs: Sequence[str], source_envs: Sequence[int] | None,
              test_envs: Sequence[int]) -> str:
    """`A→W`; several domains are joined with `+`; several sources that are all the other
    domains give `→t` (DomainBed's multi-source leave-one-out, named by its target)."""
    targets = "+".join(envs[i] for i in test_envs)
    others = set(range(len(envs))) - set(test_envs)
    if source_envs is None or (len(others) > 1 and set(source_envs) == others):
        return f"→{targets}"
    return "+".join(envs[i] for i in source_envs) + f"→{targets}"


def _pairs(domains: Sequence[str], order: Sequence[tuple[str, str]] | None = None):
    order = order or [(a, b) for a, b in itertools.permutations(domains, 2)]
    return tuple(((a,), (b,)) for a, b in order)


def _loo(dataset: str | None, description: str) -> TaskSuite:
    return TaskSuite(dataset, (), description)


TASK_SUITES: dict[str, TaskSuite] = {
    "office31": TaskSuite("Office31", _pairs("ADW", [("A", "W"), ("D", "W"), ("W", "D"),
                                                    ("A", "D"), ("D", "A"), ("W", "A")]),
                          "Office-31: six single-source pairs"),
    "officehome": TaskSuite("OfficeHome", _pairs("ACPR"), "Office-Home: twelve pairs"),
    "digits": TaskSuite("Digits", _pairs((), [("mnist", "mnist_m"), ("synth", "mnist"),
                                             ("mnist", "lowres"), ("lowres", "mnist")]),
                        "Digits: mnist→mnist_m, synth→mnist, mnist→lowres, lowres→mnist"),
    "visda": TaskSuite("VisDA", (((("synthetic",), ("real",))),), "VisDA-2017: synthetic→real"),
    "domainnet": _loo("DomainNet", "DomainNet: multi-source leave-one-domain-out"),
    "pacs": _loo("PACS", "PACS: multi-source leave-one-domain-out"),
    "vlcs": _loo("VLCS", "VLCS: multi-source leave-one-domain-out"),
    "officehome_loo": _loo("OfficeHome", "Office-Home: multi-source leave-one-domain-out"),
    "terra": _loo("TerraIncognita", "TerraIncognita: multi-source leave-one-domain-out"),
    "loo": _loo(None, "leave-one-domain-out on the sweep's datasets"),
}


def get_task_suite(name: str) -> TaskSuite:
    if name not in TASK_SUITES:
        raise UnknownNameError("task suite", name, TASK_SUITES)
    return TASK_SUITES[name]


def suite_tasks(names: Sequence[str], datasets: Sequence[str] = ()) -> list[DATask]:
    """Every task of the named suites: on `datasets` when given, else on each suite's own."""
    tasks: list[DATask] = []
    for name in names:
        suite = get_task_suite(name)
        for dataset in (list(datasets) or [suite.dataset]):
            for task in suite.tasks(dataset):
                if task not in tasks:
                    tasks.append(task)
    return tasks
