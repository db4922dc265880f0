"""The on-disk cache of the generated street datasets (v1 and v2): one torch file per
(version, seed, count, size) key under `shiftbench.paths.cache_dir()`, written atomically; a
corrupt file is set aside (`.corrupt`) and the data regenerated."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from shiftbench.errors import ShiftbenchError
from shiftbench.paths import atomic_write_bytes, cache_dir


def build_cached(filename: str, generate: Callable[[str], tuple[np.ndarray, np.ndarray]],
                 environments: Sequence[str], use_cache: bool = True
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{environment: (uint8 images, uint8 label maps)}, from the cache file or `generate(env)`."""
    path = cache_dir() / filename
    if use_cache and path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            return {k: (d["x"], d["y"]) for k, d in data.items()}
        except Exception:
            os.replace(path, path.with_suffix(".corrupt"))
    envs = {}
    for env in environments:
        x, y = generate(env)
        envs[env] = (torch.from_numpy(x), torch.from_numpy(y))
    if use_cache:
        buffer = io.BytesIO()
        torch.save({k: {"x": x, "y": y} for k, (x, y) in envs.items()}, buffer)
        try:
            atomic_write_bytes(path, buffer.getvalue())
        except (OSError, ShiftbenchError):
            pass  # a read-only cache only costs regeneration time
    return envs
