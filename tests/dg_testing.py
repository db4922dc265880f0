"""Shared helpers for the DG algorithm tests: tiny float64 models, batches, ERM comparisons."""

from __future__ import annotations

import torch

from shiftbench.algorithms import create_algorithm

DIM, CLASSES = 5, 3


def build(name: str, hparams: dict | None = None, domains: int = 3, seed: int = 0,
          steps: int = 10, dtype: torch.dtype = torch.float64):
    """A small MLP-based algorithm in float64, configured for the dg setting."""
    torch.manual_seed(seed)
    hp = {"mlp_width": 8, "mlp_depth": 3, **(hparams or {})}
    alg = create_algorithm(name, (DIM,), CLASSES, domains, hp, setting="dg", total_steps=steps).to(dtype)
    return alg


def batches(domains: int = 3, bs: int = 8, seed: int = 1, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, DIM, generator=g, dtype=dtype), torch.randint(CLASSES, (bs,), generator=g))
            for _ in range(domains)]


def params(alg) -> list[torch.Tensor]:
    return [p.detach().clone() for p in alg.network.parameters()]


def assert_erm_update(name: str, hparams: dict, steps: int = 2, domains: int = 3, rtol: float = 1e-10,
                      atol: float = 1e-12) -> None:
    """`name` with `hparams` makes exactly ERM's updates: same init, same batches, same parameters."""
    erm, alg = build("ERM", hparams, domains), build(name, hparams, domains)
    for a, b in zip(params(erm), params(alg)):
        assert torch.equal(a, b), "the two algorithms do not start from the same weights"
    for step in range(steps):
        mbs = batches(domains, seed=10 + step)
        torch.manual_seed(100 + step)
        erm.train_step(mbs)
        torch.manual_seed(100 + step)
        alg.train_step(mbs)
        for a, b in zip(params(erm), params(alg)):
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol)
    before = params(build("ERM", hparams, domains))
    moved = any(not torch.equal(a, b) for a, b in zip(before, params(erm)))
    assert moved, "ERM did not move: the comparison would be vacuous"
