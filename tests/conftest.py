"""Shared fixtures: an isolated cache, one torch thread, CPU only."""

from __future__ import annotations

import os

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
