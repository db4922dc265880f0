"""Shared fixtures: an isolated cache, one torch thread, CPU only."""

from __future__ import annotations

import os
import sys

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Generated datasets are cached once per test session, away from the user's cache.

    Session-scoped, so a module's own fixture may point the cache elsewhere for a while."""
    cache = tmp_path_factory.getbasetemp() / "shiftbench-cache"
    cache.mkdir(exist_ok=True)
    previous = os.environ.get("SHIFTBENCH_CACHE")
    os.environ["SHIFTBENCH_CACHE"] = str(cache)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    yield
    if previous is None:
        os.environ.pop("SHIFTBENCH_CACHE", None)
    else:
        os.environ["SHIFTBENCH_CACHE"] = previous


# The registries a test could empty, by the module that holds each (read only if imported).
_REGISTRIES = {"shiftbench.datasets.base": "DATASETS",
               "shiftbench.algorithms.base": "ALGORITHM_REGISTRY"}


def _registered() -> dict[str, set[str]]:
    out = {}
    for module, attr in _REGISTRIES.items():
        registry = getattr(sys.modules.get(module), attr, None)
        if registry is not None:
            out[attr] = set(registry._items)
    return out


@pytest.fixture(autouse=True)
def _registrations_kept(request):
    """A test may add registrations (its own names) but never remove one that existed before
    it, nor one whose registering module stays imported (importing it again then registers
    nothing): a removed name stays unknown to every later test of the process, whose result
    would then depend on the order tests run in. `DATASETS.scratch()` undoes a test's own
    changes, forgetting the modules first imported inside it."""
    before = _registered()
    yield
    after = _registered()
    problems = {kind: sorted(names - after.get(kind, set())) for kind, names in before.items()}
    for module, attr in _REGISTRIES.items():
        registry = getattr(sys.modules.get(module), attr, None)
        if registry is not None and registry.index is not None:
            problems.setdefault(attr, []).extend(
                f"{name} (its module {where} is imported)" for name, where in registry.index().items()
                if where in sys.modules and name not in registry._items)
    problems = {kind: names for kind, names in problems.items() if names}
    assert not problems, f"{request.node.nodeid} removed registrations: {problems}"
