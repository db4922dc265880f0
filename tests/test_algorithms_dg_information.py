"""Mechanism tests for IB_ERM and IB_IRM (algorithms/dg_information.py)."""

from __future__ import annotations

import pytest
import torch
from dg_testing import assert_erm_update, batches, build, params

from shiftbench.algorithms.dg_invariance import irm_penalty


def _explicit_terms(alg, mbs):
    """Per-domain CE, IRM penalty and unbiased feature variance, computed domain by domain."""
    nll, irm, ib = [], [], []
    for x, y in mbs:
        f = alg.featurizer(x)
        logits = alg.classifier(f)
        nll.append(torch.nn.functional.cross_entropy(logits, y).item())
        irm.append(irm_penalty(logits, y).item())
        centered = f - f.mean(0)
        ib.append(((centered ** 2).sum(0) / (len(f) - 1)).mean().item())
    n = len(mbs)
    return sum(nll) / n, sum(irm) / n, sum(ib) / n


@pytest.mark.parametrize("name", ["IB_ERM", "IB_IRM"])
def test_ib_penalty_is_the_mean_per_domain_feature_variance(name):
    alg = build(name, {"ib_penalty_anneal_iters": 0, "ib_lambda": 3.0, "irm_penalty_anneal_iters": 0,
                       "irm_lambda": 2.0})
    mbs = batches(seed=7)
    nll, irm, ib = _explicit_terms(alg, mbs)
    out = alg.train_step(mbs)
    assert out["IB_penalty"] == pytest.approx(ib, rel=1e-10) and ib > 0
    assert out["nll"] == pytest.approx(nll, rel=1e-10)
    expected = nll + 3.0 * ib + (2.0 * irm if name == "IB_IRM" else 0.0)
    assert out["loss"] == pytest.approx(expected, rel=1e-10)
    if name == "IB_IRM":
        assert out["IRM_penalty"] == pytest.approx(irm, rel=1e-10)


def test_ib_erm_schedule_weight_zero_then_lambda_with_adam_reset():
    alg = build("IB_ERM", {"ib_lambda": 50.0, "ib_penalty_anneal_iters": 2})
    opts = []
    for step in range(4):
        out = alg.train_step(batches(seed=step))
        opts.append(alg.optimizer)
        weight = 0.0 if step < 2 else 50.0
        assert out["loss"] == pytest.approx(out["nll"] + weight * out["IB_penalty"], rel=1e-10)
    assert opts[0] is opts[1] and opts[1] is not opts[2] and opts[2] is opts[3]


def test_ib_irm_two_schedules_and_a_reset_at_each_switch():
    alg = build("IB_IRM", {"ib_lambda": 5.0, "ib_penalty_anneal_iters": 3, "irm_lambda": 7.0,
                           "irm_penalty_anneal_iters": 1})
    opts = []
    for step in range(5):
        out = alg.train_step(batches(seed=step))
        opts.append(alg.optimizer)
        w_irm = 1.0 if step < 1 else 7.0
        w_ib = 0.0 if step < 3 else 5.0
        expected = out["nll"] + w_irm * out["IRM_penalty"] + w_ib * out["IB_penalty"]
        assert out["loss"] == pytest.approx(expected, rel=1e-10)
    fresh = [i for i in range(1, 5) if opts[i] is not opts[i - 1]]
    assert fresh == [1, 3]


def test_a_large_ib_weight_shrinks_the_feature_variance():
    def variance_after(weight):
        alg = build("IB_ERM", {"ib_lambda": weight, "ib_penalty_anneal_iters": 0, "lr": 1e-2})
        for step in range(30):
            alg.train_step(batches(seed=step))
        return _explicit_terms(alg, batches(seed=99))[2]
    assert variance_after(100.0) < 0.1 * variance_after(0.0)


@pytest.mark.parametrize("name,hp", [
    ("IB_ERM", {"ib_penalty_anneal_iters": 100}),
    ("IB_ERM", {"ib_lambda": 0.0, "ib_penalty_anneal_iters": 0}),
    ("IB_IRM", {"ib_lambda": 0.0, "irm_lambda": 0.0, "ib_penalty_anneal_iters": 0,
                "irm_penalty_anneal_iters": 0}),
])
def test_reduces_to_erm(name, hp):
    assert_erm_update(name, hp)


def test_ib_irm_without_bottleneck_is_irm():
    hp = {"irm_lambda": 30.0, "irm_penalty_anneal_iters": 1, "ib_penalty_anneal_iters": 100}
    irm, ib_irm = build("IRM", hp), build("IB_IRM", hp)
    for step in range(3):
        mbs = batches(seed=20 + step)
        irm.train_step(mbs)
        ib_irm.train_step(mbs)
    for a, b in zip(params(irm), params(ib_irm)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
