"""Mechanism tests for RDM (algorithms/dg_risk_distribution.py)."""

from __future__ import annotations

import math

import pytest
import torch
from dg_testing import assert_erm_update, batches, build

from shiftbench.algorithms.dg_risk_distribution import GAMMAS, risk_mmd
from shiftbench.hparams_registry import default_hparams


def _slow_mmd(a, b):
    def k(u, v):
        return sum(math.exp(-g * (p - q) ** 2) for p in u for q in v for g in GAMMAS) / (len(u) * len(v))
    a, b = a.tolist(), b.tolist()
    return k(a, a) + k(b, b) - 2 * k(a, b)


def test_risk_mmd_is_the_biased_multi_bandwidth_mmd_and_zero_for_equal_samples():
    a = torch.tensor([0.1, 0.7, 2.0], dtype=torch.float64)
    b = torch.tensor([0.3, 1.5, 0.2, 4.0], dtype=torch.float64)
    assert risk_mmd(a, b).item() == pytest.approx(_slow_mmd(a, b), rel=1e-9) and _slow_mmd(a, b) > 0
    assert abs(risk_mmd(a, a).item()) < 1e-12


def test_penalties_use_the_worst_domain_and_the_pooled_risks():
    hp = {"rdm_penalty_anneal_iters": 0, "rdm_lambda": 2.0, "variance_weight": 0.5}
    alg = build("RDM", hp)
    mbs = batches(seed=5)
    with torch.no_grad():
        risks = [torch.nn.functional.cross_entropy(alg.predict(x), y, reduction="none") for x, y in mbs]
    means = [r.mean().item() for r in risks]
    worst = risks[means.index(max(means))]
    pooled = torch.cat(risks)
    out = alg.train_step(mbs)
    assert out["erm_loss"] == pytest.approx(sum(means) / 3, rel=1e-10)
    assert out["matching_penalty"] == pytest.approx(_slow_mmd(worst, pooled), rel=1e-9)
    assert out["matching_penalty"] > 0
    variance = pooled.var(unbiased=True).item() + worst.var(unbiased=True).item()
    assert out["variance_penalty"] == pytest.approx(variance, rel=1e-10)
    assert out["total_loss"] == pytest.approx(out["erm_loss"] + 2.0 * out["matching_penalty"]
                                              + 0.5 * variance, rel=1e-10)


def test_penalties_start_after_the_anneal_with_a_fresh_adam_at_rdm_lr():
    alg = build("RDM", {"rdm_penalty_anneal_iters": 2, "rdm_lr": 1e-5})
    first = alg.optimizer
    for step in range(3):
        out = alg.train_step(batches(seed=step))
        if step < 2:
            assert out["total_loss"] == pytest.approx(out["erm_loss"], rel=1e-12)
            assert alg.optimizer is first
    assert out["total_loss"] > out["erm_loss"]
    assert alg.optimizer is not first and alg.optimizer.param_groups[0]["lr"] == 1e-5


def test_reduces_to_erm():
    assert_erm_update("RDM", {"rdm_penalty_anneal_iters": 100})
    assert_erm_update("RDM", {"rdm_penalty_anneal_iters": 0, "rdm_lambda": 0.0, "variance_weight": 0.0,
                              "rdm_lr": 1e-3})


def test_dataset_dependent_defaults_as_domainbed():
    pacs, dn = default_hparams("RDM", "PACS"), default_hparams("RDM", "DomainNet")
    assert (pacs["batch_size"], pacs["rdm_lambda"], pacs["variance_weight"]) == (88, 5.0, 0.004)
    assert (dn["batch_size"], dn["rdm_lambda"], dn["rdm_penalty_anneal_iters"]) == (40, 0.5, 2400)
    assert default_hparams("RDM", "OfficeHome")["variance_weight"] == 0.0
    for protocol in ("shiftbench", "domainbed"):
        assert default_hparams("RDM", "ColoredMNIST", protocol=protocol)["batch_size"] == 64
        assert default_hparams("RDM", "PACS", protocol=protocol)["batch_size"] == 88
