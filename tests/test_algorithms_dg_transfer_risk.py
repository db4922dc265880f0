"""Mechanism tests for TRM (algorithms/dg_transfer_risk.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from dg_testing import assert_erm_update, batches, build

from shiftbench.algorithms.dg_transfer_risk import NEUMANN_STEPS, neumann_inverse_hvp


def _hessian(head, f, y):
    def loss(w):
        return F.cross_entropy(f @ w.reshape(head.weight.shape).T + head.bias, y)
    return torch.autograd.functional.hessian(loss, head.weight.detach().flatten())


@pytest.mark.parametrize("reference", [False, True])
def test_neumann_sum_against_an_explicit_hessian(reference):
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3).double()
    f, y = torch.randn(10, 4, dtype=torch.float64) * 0.5, torch.randint(3, (10,))
    v = torch.randn(12, dtype=torch.float64) * 0.1
    m = torch.eye(12, dtype=torch.float64) - _hessian(head, f, y)
    terms = [v]
    for _ in range(NEUMANN_STEPS):
        terms.append(m @ terms[-1])
    expected = sum(terms[2:]) + (2 * terms[1] if reference else terms[0] + terms[1])
    got = neumann_inverse_hvp(head, f, y, v, reference)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    if not reference:  # a converging series approaches H^-1 v
        exact = torch.linalg.solve(_hessian(head, f, y), v)
        assert (got - exact).norm() < (v - exact).norm()


def test_neumann_stops_once_an_entry_exceeds_the_bound():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3).double()
    f, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(3, (10,))
    v = torch.full((12,), 6.0, dtype=torch.float64)
    m = torch.eye(12, dtype=torch.float64) - _hessian(head, f, y)
    assert torch.allclose(neumann_inverse_hvp(head, f, y, v), v + m @ v)


def test_reduces_to_erm_before_iters():
    assert_erm_update("TRM", {"iters": 100})


def _explicit_step(alg, mbs, variant):
    """Value of T, the heads after their fit and the new alpha, computed from before the update."""
    eta, cos = alg.hparams["groupdro_eta"], alg.hparams["cos_lambda"]
    f = [alg.featurizer(x) for x, _ in mbs]
    ys = [t for _, t in mbs]
    alpha = alg.alpha / alg.alpha.sum(1, keepdim=True)
    heads = copy.deepcopy(alg.heads)
    opt = torch.optim.SGD(heads.parameters(), lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        sum(F.cross_entropy(h(x.detach()), y) for h, x, y in zip(heads, f, ys)).backward()
        opt.step()
    total, new_alpha = 0.0, alpha.clone()
    for q, head in enumerate(heads):
        others = [i for i in range(len(mbs)) if i != q]
        g_q = torch.autograd.grad(F.cross_entropy(head(f[q]), ys[q]), head.weight, create_graph=True)[0]
        risks = [alpha[q, i] * F.cross_entropy(head(f[i]), ys[i]) for i in others]
        g_p = torch.autograd.grad(sum(risks), head.weight)[0]
        h = neumann_inverse_hvp(head, f[q], ys[q], g_p.flatten(), variant == "domainbed")
        total += (sum(risks) - cos * h @ g_q.flatten()).item()
        for i, r in zip(others, risks):
            new_alpha[q, i] = alpha[q, i] * torch.exp(eta * r.detach())
    return total / len(mbs), heads, new_alpha


@pytest.mark.parametrize("variant", ["paper", "domainbed"])
def test_transfer_risk_heads_and_domain_weights(variant):
    alg = build("TRM", {"iters": 0, "cos_lambda": 0.5, "groupdro_eta": 0.3, "trm_variant": variant})
    mbs = batches(seed=2)
    expected, heads, alpha = _explicit_step(alg, mbs, variant)
    out = alg.train_step(mbs)
    assert out["trm_loss"] == pytest.approx(expected, rel=1e-8)
    for a, b in zip(heads.parameters(), alg.heads.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(alg.alpha, alpha, rtol=1e-10, atol=1e-12)
    assert torch.all(alg.alpha.diagonal() == 0) and not torch.allclose(alpha, torch.full_like(alpha, 0.5) -
                                                                      0.5 * torch.eye(3, dtype=alpha.dtype))


def test_the_two_variants_share_values_but_not_updates():
    runs = {}
    for variant in ("paper", "domainbed"):
        alg = build("TRM", {"iters": 0, "groupdro_eta": 0.5, "trm_variant": variant})
        out = alg.train_step(batches(seed=3))
        runs[variant] = (out["nll"], [p.detach().clone() for p in alg.featurizer.parameters()])
    assert runs["paper"][0] == runs["domainbed"][0]
    assert any(not torch.allclose(a, b) for a, b in zip(runs["paper"][1], runs["domainbed"][1]))


def test_heads_and_domain_weights_survive_a_state_round_trip():
    alg = build("TRM", {"iters": 0})
    alg.train_step(batches(seed=1))
    fresh = build("TRM", {"iters": 0})
    fresh.load_full_state(alg.full_state())
    assert torch.equal(fresh.alpha, alg.alpha)
    assert all(torch.equal(a, b) for a, b in zip(fresh.heads.parameters(), alg.heads.parameters()))
    assert fresh.train_step(batches(seed=2)) == alg.train_step(batches(seed=2))
