"""The algorithm registry. Every module in this package registers its algorithms on import."""

import importlib
import pkgutil
from collections.abc import Iterator

from shiftbench.algorithms.base import (
    ALGORITHM_REGISTRY,
    ALGORITHMS,
    LABEL_SOURCES,
    SETTINGS,
    Algorithm,
    AlgorithmBase,
    create_algorithm,
    get_algorithm_class,
    list_algorithms,
    register_algorithm,
)


def iter_modules_to_import() -> Iterator[str]:
    """The algorithm modules of this package, ERM's first (the reference row of every table)."""
    names = [i.name for i in pkgutil.iter_modules(__path__)
             if not i.name.startswith("_") and i.name != "base"]
    for name in sorted(names, key=lambda n: (n != "erm", n)):
        yield f"{__name__}.{name}"


for _module in list(iter_modules_to_import()):
    importlib.import_module(_module)

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_REGISTRY",
    "Algorithm",
    "AlgorithmBase",
    "LABEL_SOURCES",
    "SETTINGS",
    "create_algorithm",
    "get_algorithm_class",
    "list_algorithms",
    "register_algorithm",
]
