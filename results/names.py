"""Names and order of a table's rows and columns: algorithms, datasets, environments.

Our registries come first; DomainBed's lists cover datasets and algorithms a sweep may hold that
are not registered here (records read from DomainBed output).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from shiftbench.trial_record import record_key

# DomainBed's environment names for datasets we may not have registered.
DOMAINBED_ENVIRONMENTS = {
    "Debug28": ["0", "1", "2"], "Debug224": ["0", "1", "2"],
    "ColoredMNIST": ["+90%", "+80%", "-90%"], "RotatedMNIST": ["0", "15", "30", "45", "60", "75"],
    "VLCS": ["C", "L", "S", "V"], "PACS": ["A", "C", "P", "S"], "OfficeHome": ["A", "C", "P", "R"],
    "TerraIncognita": ["L100", "L38", "L43", "L46"],
    "DomainNet": ["clip", "info", "paint", "quick", "real", "sketch"],
    "SVIRO": ["aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe"],
    "WILDSCamelyon": [f"hospital_{i}" for i in range(5)],
    "WILDSFMoW": [f"region_{i}" for i in range(6)],
    **{f"Spawrious{kind}_{level}": ["Test", "SC_group_1", "SC_group_2"]
       for kind in ("O2O", "M2M") for level in ("easy", "medium", "hard")},
}
# DomainBed's row and table order (its ALGORITHMS and DATASETS lists), for --format domainbed.
DOMAINBED_DATASETS = tuple(DOMAINBED_ENVIRONMENTS)


def environment_names(dataset: str, records: Sequence[dict[str, Any]] = (),
                      prefer_domainbed: bool = False) -> list[str]:
    """A dataset's environment names: our registry (its torch-free index unless the registry is
    already imported), then the records, then DomainBed's list (first with `prefer_domainbed`)."""
    if prefer_domainbed and dataset in DOMAINBED_ENVIRONMENTS:
        return list(DOMAINBED_ENVIRONMENTS[dataset])
    try:
        if "shiftbench.datasets" in sys.modules:  # plug-ins may be registered: ask the registry
            from shiftbench.datasets import get_dataset_class

            return [str(e) for e in get_dataset_class(dataset).ENVIRONMENTS]
        from shiftbench.catalog import dataset_index

        return list(dataset_index()[dataset].environments)
    except Exception:  # noqa: BLE001 - any failure (unknown name, import error) falls through
        pass
    for r in records:
        if r["args"]["dataset"] == dataset and isinstance(r.get("environments"), list):
            return [str(e) for e in r["environments"]]
    if dataset in DOMAINBED_ENVIRONMENTS:
        return list(DOMAINBED_ENVIRONMENTS[dataset])
    n = 0
    for r in records:
        if r["args"]["dataset"] == dataset:
            while record_key(n, "out") in r or record_key(n, "in") in r:
                n += 1
    return [str(i) for i in range(n)]


def ordered(names: Iterable[str], known: Sequence[str]) -> list[str]:
    """`names` in the order of `known`, then the unknown ones sorted."""
    names = set(names)
    return [n for n in known if n in names] + sorted(n for n in names if n not in known)


def order_algorithms(names: Iterable[str]) -> list[str]:
    """Algorithms in registry order (unregistered ones last, sorted)."""
    try:
        if "shiftbench.algorithms" in sys.modules:
            from shiftbench.algorithms import ALGORITHMS
            known = list(ALGORITHMS)
        else:
            from shiftbench.catalog import algorithm_index
            known = list(algorithm_index())
    except Exception:  # noqa: BLE001
        known = []
    return ordered(names, known)


def order_datasets(names: Iterable[str]) -> list[str]:
    """Datasets in registry order, then DomainBed's, then the rest sorted."""
    try:
        if "shiftbench.datasets" in sys.modules:
            from shiftbench.datasets import DATASETS
            known = list(DATASETS)
        else:
            from shiftbench.catalog import dataset_index
            known = list(dataset_index())
    except Exception:  # noqa: BLE001
        known = []
    return ordered(names, known + [d for d in DOMAINBED_ENVIRONMENTS if d not in known])
