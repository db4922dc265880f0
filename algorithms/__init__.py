"""The algorithm registry. Every module in this package registers its algorithms on import."""

import importlib

from shiftbench.algorithms.base import (
    ALGORITHM_REGISTRY,
    ALGORITHMS,
    LABEL_SOURCES,
    SETTINGS,
    Algorithm,
    create_algorithm,
    get_algorithm_class,
    iter_modules_to_import,
    list_algorithms,
    register_algorithm,
)

for _module in list(iter_modules_to_import()):
    importlib.import_module(_module)

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_REGISTRY",
    "Algorithm",
    "LABEL_SOURCES",
    "SETTINGS",
    "create_algorithm",
    "get_algorithm_class",
    "list_algorithms",
    "register_algorithm",
]
