"""Mechanism and ERM-reduction tests for CORAL, MMD, CausIRL_CORAL, CausIRL_MMD (dg_alignment.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dg_testing import assert_erm_update, build

from shiftbench.algorithms.components import mmd_gaussian
from shiftbench.algorithms.dg_alignment import mean_cov_distance


def test_mean_cov_distance_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0], [2.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    mean_diff = ((a.mean(0) - b.mean(0)) ** 2).mean()
    ca = (a - a.mean(0)).T @ (a - a.mean(0)) / 2
    cb = (b - b.mean(0)).T @ (b - b.mean(0)) / 2
    want = mean_diff + ((ca - cb) ** 2).mean()
    assert mean_cov_distance(a, b).item() == pytest.approx(want.item(), rel=1e-12)
    # zero for equal means and covariances, order-invariant; the MEAN is matched too (DomainBed)
    assert mean_cov_distance(a, a.flip(0)).item() == pytest.approx(0.0, abs=1e-15)
    assert mean_cov_distance(a, a + 1.0).item() == pytest.approx(1.0, rel=1e-12)


def test_mmd_zero_for_identical_sets_positive_otherwise_and_finite_gradient():
    a = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert abs(mmd_gaussian(a, a).item()) < 1e-12
    b = torch.randn(6, 3, dtype=torch.float64) + 0.5
    value = mmd_gaussian(a, b)
    assert value.item() > 0
    mmd_gaussian(a, a.detach() + 0.0).backward()
    assert torch.isfinite(a.grad).all()


@pytest.mark.parametrize("name", ["CORAL", "MMD"])
def test_pairwise_penalty_is_the_mean_over_domain_pairs(name):
    alg = build(name, {"mmd_gamma": 1.0})
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(7, 4, generator=g, dtype=torch.float64) + k for k in range(3)]
    pairs = [(0, 1), (0, 2), (1, 2)]
    want = sum(alg.distance(feats[i], feats[j]) for i, j in pairs) / 3
    assert alg.penalty(feats).item() == pytest.approx(want.item(), rel=1e-12)
    same = [feats[0]] * 3
    assert abs(alg.penalty(same).item()) < 1e-12


@pytest.mark.parametrize("name", ["CausIRL_CORAL", "CausIRL_MMD"])
def test_causirl_matches_two_random_parts_of_the_pooled_batch(name):
    alg = build(name, {"mmd_gamma": 1.0})
    feats = [torch.arange(8, dtype=torch.float64).unsqueeze(1).repeat(1, 2) + 100 * k for k in range(3)]
    np.random.seed(3)  # the cut points come from numpy's generator, as in DomainBed
    first, second = alg.random_parts(feats)
    np.random.seed(3)
    cuts = [int(np.random.randint(0, 8)) for _ in range(3)]
    # a partition of the pooled batch: every domain contributes its head to one part, its tail
    # to the other, so both parts mix domains (it is not a per-domain comparison)
    assert len(first) + len(second) == 24 and len(first) == sum(cuts)
    pooled = torch.cat([first, second])[:, 0].sort().values
    assert torch.equal(pooled, torch.cat(feats)[:, 0].sort().values)
    np.random.seed(3)
    want = alg.distance(first, second) if min(len(first), len(second)) > 1 else torch.zeros(())
    assert alg.penalty(feats).item() == pytest.approx(want.item(), rel=1e-12)


@pytest.mark.parametrize("name", ["CORAL", "MMD", "CausIRL_CORAL", "CausIRL_MMD"])
def test_gamma_zero_is_erm(name):
    assert_erm_update(name, {"mmd_gamma": 0.0})
