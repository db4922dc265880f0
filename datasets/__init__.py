"""The dataset registry. Every module in this package registers its datasets on import."""

import importlib
import pkgutil

from shiftbench.datasets.base import (
    DATASETS,
    MultiDomainDataset,
    TensorDomain,
    get_dataset_class,
    list_datasets,
    num_environments,
    register_dataset,
)

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if not _info.name.startswith("_") and _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "DATASETS",
    "MultiDomainDataset",
    "TensorDomain",
    "get_dataset_class",
    "list_datasets",
    "num_environments",
    "register_dataset",
]
