"""Mechanism and ERM-reduction tests for ANDMask, SANDMask and IGA (dg_gradient.py)."""

from __future__ import annotations

import pytest
import torch
from dg_testing import assert_erm_update, batches, build, params

from shiftbench.algorithms.dg_gradient import (
    and_mask,
    domain_gradients,
    masked_mean_gradient,
    sand_mask,
)

# three domains' gradients for four components: full agreement, 2-vs-1, 2-vs-1, full agreement
G = torch.tensor([[1.0, 1.0, -2.0, -1.0],
                  [2.0, -1.0, -1.0, -3.0],
                  [3.0, 1.0, 1.0, -2.0]], dtype=torch.float64)


def test_and_mask_zeroes_components_with_disagreeing_signs():
    assert and_mask(G, 1.0).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert and_mask(G, 0.3).tolist() == [1.0, 1.0, 1.0, 1.0]  # |mean sign| = 1/3 passes 0.3
    direction = masked_mean_gradient(G, and_mask(G, 1.0))
    # kept components: the mean gradient, rescaled by 1 / (fraction kept = 1/2)
    torch.testing.assert_close(direction, torch.tensor([4.0, 0.0, 0.0, -4.0], dtype=torch.float64))


def test_andmask_update_leaves_disagreeing_components_untouched():
    alg = build("ANDMask", {"tau": 1.0})
    mbs = batches(seed=4)
    _, grads = domain_gradients(alg, mbs)
    before = params(alg)
    alg.train_step(mbs)
    for i, (old, new) in enumerate(zip(before, params(alg))):
        stacked = torch.stack([g[i] for g in grads])
        agree = and_mask(stacked, 1.0).bool() & (stacked.mean(0) != 0)
        assert torch.equal(new[~agree], old[~agree])
        assert (new[agree] != old[agree]).all()


def test_sand_mask_is_soft_zero_below_tau_and_sharpens_with_k():
    m = sand_mask(G, 0.5, 10.0)
    assert ((m >= 0) & (m <= 1)).all()
    assert m[1].item() == 0.0 and m[2].item() == 0.0  # agreement 1/3 < tau
    assert m[0].item() > 0 and m[3].item() > 0
    soft, sharp = sand_mask(G, 0.5, 0.1), sand_mask(G, 0.5, 100.0)
    assert (sharp[[0, 3]] > soft[[0, 3]]).all()
    # equal (full) agreement: the component whose domain gradients spread less gets the larger mask
    spread = sand_mask(torch.tensor([[1.0, 1.0], [1.2, 5.0], [0.8, 9.0]], dtype=torch.float64), 0.5, 10.0)
    assert spread[0] > spread[1] > 0


@pytest.mark.parametrize("name,hp", [("ANDMask", {"tau": 0.0}), ("IGA", {"penalty": 0.0})])
def test_reduces_to_erm(name, hp):
    assert_erm_update(name, hp)


def test_iga_penalty_is_the_spread_of_domain_gradients():
    alg = build("IGA", {"penalty": 1.0})
    mbs = batches(seed=8)
    _, grads = domain_gradients(alg, mbs)
    flat = torch.stack([torch.cat([g.flatten() for g in gr]) for gr in grads])
    want = ((flat - flat.mean(0)) ** 2).sum().item()
    assert alg.train_step(mbs)["penalty"] == pytest.approx(want, rel=1e-10)
    same = batches(domains=1, seed=9) * 3
    assert build("IGA", {}).train_step(same)["penalty"] < 1e-25


def test_sandmask_domainbed_default_tau_is_domainbeds():
    from shiftbench.hparams_registry import default_hparams

    assert default_hparams("SANDMask", "RotatedMNIST")["tau"] == 0.5
    assert default_hparams("SANDMask", "RotatedMNIST", protocol="domainbed")["tau"] == 1.0
