"""What a sweep needs to know about its datasets and algorithms, without importing torch when it
can: names, environments, steps, task types, settings.

Built-in datasets and algorithms are described by `shiftbench.catalog` (their sources read with
`ast`; `tests/test_catalog.py` checks it against the imported classes); plug-ins, and names the
catalog cannot know, by their imported classes. Launching and `sweep status` enumerate jobs from
these same facts, so they compute the same job hashes, and status answers without torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from shiftbench import catalog
from shiftbench.datasets.lookup import environment_index
from shiftbench.errors import UnknownNameError


@dataclass(frozen=True)
class DatasetFacts:
    name: str
    environments: tuple[str, ...]
    n_steps: int
    task_type: str
    image_cache: bool

    def env_index(self, env: int | str) -> int:
        """An environment's index from its index or its name (as `MultiDomainDataset.env_index`)."""
        return environment_index(self.name, self.environments, env)


@dataclass(frozen=True)
class AlgorithmFacts:
    name: str
    settings: tuple[str, ...]
    task_types: tuple[str, ...]


def _catalog_entry(kind: str, name: str) -> Any:
    """The catalog's entry of `name`, or None when only the real registry can answer (plug-ins
    may be registered); an unknown name is refused from the catalog, without torch."""
    if _may_be_overridden(kind):
        return None
    index = catalog.dataset_index() if kind == "datasets" else catalog.algorithm_index()
    if name not in index:
        raise UnknownNameError(kind[:-1], name, index)
    return index[name]


def _may_be_overridden(kind: str) -> bool:
    """True when code outside the catalog may have registered names of `kind` in this process
    (installed plug-ins, `--import` modules, run-time registrations): ask the real registry."""
    base = sys.modules.get(f"shiftbench.{kind}.base")
    registry = getattr(base, "DATASETS" if kind == "datasets" else "ALGORITHM_REGISTRY", None)
    index = catalog.dataset_index() if kind == "datasets" else catalog.algorithm_index()
    extra = registry is not None and any(n not in index for n in registry)
    return extra or bool(catalog.plugin_entry_points(kind))


def dataset_facts(name: str) -> DatasetFacts:
    e = _catalog_entry("datasets", name)
    if e is not None:
        return DatasetFacts(name, tuple(e.environments), int(e.n_steps), e.task_type,
                            bool(e.image_cache))
    from shiftbench.datasets import get_dataset_class
    from shiftbench.datasets.segmentation import task_type_of

    cls = get_dataset_class(name)
    return DatasetFacts(name, tuple(str(e) for e in cls.ENVIRONMENTS), int(cls.N_STEPS),
                        task_type_of(cls), bool(cls.IMAGE_CACHE))


def algorithm_facts(name: str) -> AlgorithmFacts:
    e = _catalog_entry("algorithms", name)
    if e is not None:
        return AlgorithmFacts(name, tuple(e.settings), tuple(e.task_types))
    from shiftbench.algorithms import get_algorithm_class

    cls = get_algorithm_class(name)
    return AlgorithmFacts(name, tuple(cls.SETTINGS), tuple(cls.TASK_TYPES))


def algorithm_names(setting: str) -> list[str]:
    """Every algorithm supporting `setting`, in registration order."""
    if _may_be_overridden("algorithms"):
        from shiftbench.algorithms import list_algorithms

        return list_algorithms(setting=setting)
    return [n for n, e in catalog.algorithm_index().items() if setting in e.settings]


def dataset_names() -> list[str]:
    """Every dataset name (for messages)."""
    if _may_be_overridden("datasets"):
        from shiftbench.datasets import list_datasets

        return list_datasets()
    return list(catalog.dataset_index())
