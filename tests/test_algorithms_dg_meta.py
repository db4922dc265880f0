"""Mechanism tests for MLDG and Fish (algorithms/dg_meta.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from dg_testing import assert_erm_update, batches, build, params

from shiftbench.errors import ShiftbenchError


def _grad(net, theta, x, y):
    """Gradient of the CE of `net` evaluated at the weights `theta` (a copy; `net` is untouched)."""
    clone = copy.deepcopy(net)
    with torch.no_grad():
        for p, v in zip(clone.parameters(), theta):
            p.copy_(v)
    return torch.autograd.grad(F.cross_entropy(clone(x), y), list(clone.parameters()))


def test_mldg_gradient_is_first_order_meta_gradient():
    alg = build("MLDG", {"mldg_beta": 0.7, "n_meta_test": 1}, domains=2)
    mbs = batches(domains=2, seed=3)
    torch.manual_seed(11)
    i, j = torch.randperm(2).tolist()
    net, lr = alg.network, alg.hparams["lr"]
    theta = [v.detach().clone() for v in net.parameters()]
    g_i = _grad(net, theta, *mbs[i])
    # one fresh Adam step: theta' = theta - lr * g / (|g| + eps)
    moved = [v - lr * g / (g.abs() + 1e-8) for v, g in zip(theta, g_i)]
    g_j = _grad(net, moved, *mbs[j])
    expected = [(a + 0.7 * b) / 2 for a, b in zip(g_i, g_j)]
    torch.manual_seed(11)
    grads, _ = alg.meta_gradients(mbs)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # the clones never touched the real network
    for a, b in zip(params(alg), theta):
        assert torch.equal(a, b)


def test_mldg_caps_meta_test_domains_and_needs_two_domains():
    alg = build("MLDG", {"n_meta_test": 2}, domains=2)
    before = params(alg)
    alg.train_step(batches(domains=2))
    assert any(not torch.equal(a, b) for a, b in zip(before, params(alg)))
    with pytest.raises(ShiftbenchError, match="at least 2"):
        build("MLDG", {}, domains=1)


def test_fish_meta_lr_zero_keeps_the_weights():
    alg = build("Fish", {"meta_lr": 0.0})
    before = params(alg)
    alg.train_step(batches())
    assert all(torch.equal(a, b) for a, b in zip(before, params(alg)))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, alg.network_inner.parameters()))


def test_fish_with_one_domain_and_meta_lr_one_is_erm():
    assert_erm_update("Fish", {"meta_lr": 1.0}, steps=3, domains=1)


def test_fish_meta_step_interpolates_towards_sequential_inner_steps():
    alg = build("Fish", {"meta_lr": 0.5})
    mbs = batches(seed=6)
    clone = copy.deepcopy(alg.network)
    opt = torch.optim.Adam(clone.parameters(), lr=alg.hparams["lr"])
    for x, y in mbs:  # the inner loop done by hand: one Adam step per domain, in order
        opt.zero_grad()
        F.cross_entropy(clone(x), y).backward()
        opt.step()
    before = params(alg)
    alg.train_step(mbs)
    for old, new, inner in zip(before, params(alg), clone.parameters()):
        torch.testing.assert_close(new, old + 0.5 * (inner.detach() - old), rtol=1e-10, atol=1e-12)


def test_mldg_domainbed_protocol_makes_no_meta_train_pair_with_two_domains():
    """DomainBed's default n_meta_test = 2 with two training domains: zero gradient."""
    from shiftbench.algorithms.base import create_algorithm
    from shiftbench.hparams_registry import default_hparams

    assert default_hparams("MLDG", "RotatedMNIST", protocol="domainbed")["mldg_cap_meta_test"] is False
    torch.manual_seed(0)
    alg = create_algorithm("MLDG", (4,), 3, 2, {"mlp_width": 8, "mldg_cap_meta_test": False,
                                                 "n_meta_test": 2}, setting="dg", total_steps=5)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(6, 4, generator=g), torch.randint(3, (6,), generator=g)) for _ in range(2)]
    grads, objective = alg.meta_gradients(data)
    assert objective == 0 and all(float(gr.abs().sum()) == 0 for gr in grads)
    alg.hparams["mldg_cap_meta_test"] = True
    grads, objective = alg.meta_gradients(data)
    assert objective > 0
