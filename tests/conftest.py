"""Shared fixtures: an isolated cache, one torch thread, CPU only."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated datasets are cached once per test session, away from the user's cache."""
    cache = tmp_path_factory.getbasetemp() / "shiftbench-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("SHIFTBENCH_CACHE", str(cache))
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
