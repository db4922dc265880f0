"""The dataset registry. Every module in this package registers its datasets when imported.

The names below are read from `shiftbench.datasets.base` on first use, which first imports every
module of the package (so `shiftbench.datasets.DATASETS` holds every built-in dataset). Importing
one submodule imports only what it needs: `shiftbench data list` (`shiftbench.datasets.cli`)
starts without torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what static tools see; at run time `__getattr__` below imports them
    from shiftbench.datasets.base import (
        DATASETS,
        MultiDomainDataset,
        TensorDomain,
        get_dataset_class,
        list_datasets,
        num_environments,
        register_dataset,
    )

__all__ = [
    "DATASETS",
    "MultiDomainDataset",
    "TensorDomain",
    "get_dataset_class",
    "list_datasets",
    "num_environments",
    "register_dataset",
]


def import_all() -> None:
    """Import every module of the package (each registers its datasets)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import_all()
    base = importlib.import_module(f"{__name__}.base")
    for exported in __all__:
        globals()[exported] = getattr(base, exported)
    return globals()[name]
