"""Seed derivation: every split and every random draw is a pure function of named seeds."""

from __future__ import annotations

import hashlib
import random

import numpy as np

# torch is imported inside the functions that use it: `seed_hash` (hparams, splits) stays
# importable without it, for the command line's fast paths.


def seed_hash(*args: object) -> int:
    """A 31-bit integer hash of the arguments, stable across runs and machines (as in DomainBed)."""
    text = str(args)
    return int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % (2**31)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, for checkpoints."""
    import torch

    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_portable(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(_numpy_state_from_portable(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_portable(state: tuple) -> list:
    """NumPy's state with its key array as a tensor, so `torch.load(weights_only=True)` reads it."""
    import torch

    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
            float(cached)]


def _numpy_state_from_portable(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
