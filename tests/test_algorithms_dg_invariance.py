"""Mechanism and ERM-reduction tests for IRM, VREx and EQRM (algorithms/dg_invariance.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dg_testing import assert_erm_update, batches, build

from shiftbench.algorithms.dg_invariance import gaussian_quantile, irm_penalty, kde_quantile
from shiftbench.errors import ShiftbenchError


def _binary_logits(z: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Each half (even / odd indices) has 3 positives and 1 negative: the loss-optimal logit is log 3.
    y = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])
    logits = torch.tensor([[0.0, z]] * 8, dtype=torch.float64)
    return logits, y


def test_irm_penalty_zero_at_the_optimal_scale_positive_otherwise():
    logits, y = _binary_logits(math.log(3.0))
    assert abs(irm_penalty(logits, y).item()) < 1e-14
    for z in (2 * math.log(3.0), 0.5 * math.log(3.0)):
        logits, y = _binary_logits(z)
        assert irm_penalty(logits, y).item() > 1e-4
    # the penalty is differentiable w.r.t. the logits (double back-prop)
    logits.requires_grad_(True)
    irm_penalty(logits, y).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_irm_anneal_switch_and_adam_reset():
    alg = build("IRM", {"irm_lambda": 1e3, "irm_penalty_anneal_iters": 2})
    opts = []
    for step in range(4):
        out = alg.train_step(batches(seed=step))
        opts.append(alg.optimizer)
        weight = 1.0 if step < 2 else 1e3
        assert out["loss"] == pytest.approx(out["nll"] + weight * out["penalty"], rel=1e-9)
    assert opts[0] is opts[1] and opts[1] is not opts[2] and opts[2] is opts[3]
    state = next(iter(opts[3].state.values()))
    assert int(state["step"]) == 2  # fresh Adam at update 2, stepped at updates 2 and 3


@pytest.mark.parametrize("name,hp", [
    ("IRM", {"irm_lambda": 0.0, "irm_penalty_anneal_iters": 0}),
    ("VREx", {"vrex_lambda": 0.0, "vrex_penalty_anneal_iters": 0}),
    ("EQRM", {"eqrm_burnin_iters": 100}),
])
def test_reduces_to_erm(name, hp):
    assert_erm_update(name, hp)


def test_vrex_penalty_is_the_variance_of_domain_risks():
    alg = build("VREx", {"vrex_penalty_anneal_iters": 0})
    same = batches(domains=1, seed=3) * 3
    assert alg.train_step(same)["penalty"] < 1e-28
    alg = build("VREx", {"vrex_penalty_anneal_iters": 0, "vrex_lambda": 0.0})
    mbs = batches(seed=4)
    with torch.no_grad():
        risks = torch.stack([torch.nn.functional.cross_entropy(alg.predict(x), y) for x, y in mbs])
    out = alg.train_step(mbs)
    assert out["penalty"] == pytest.approx(risks.var(unbiased=False).item(), rel=1e-10)
    assert out["penalty"] > 0


def test_kde_quantile_solves_the_cdf_and_has_the_implicit_gradient():
    risks = torch.tensor([0.3, 0.5, 1.2, 0.9], dtype=torch.float64, requires_grad=True)
    normal = torch.distributions.Normal(0.0, 1.0)
    qs = []
    for alpha in (0.25, 0.5, 0.9):
        q = kde_quantile(risks, alpha)
        h = 1.06 * risks.detach().std() * 4 ** -0.2
        assert normal.cdf((q.detach() - risks.detach()) / h).mean().item() == pytest.approx(alpha, abs=1e-9)
        qs.append(q.item())
    assert qs == sorted(qs)
    (grad,) = torch.autograd.grad(kde_quantile(risks, 0.9), risks)
    # shifting every risk by c shifts the quantile by c; the high quantile leans on the largest risk
    assert grad.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert grad.argmax().item() == 2


def test_gaussian_quantile_median_is_the_mean():
    risks = torch.tensor([0.3, 0.5, 1.2], dtype=torch.float64)
    assert gaussian_quantile(risks, 0.5).item() == pytest.approx(risks.mean().item(), abs=1e-12)
    assert gaussian_quantile(risks, 0.9).item() > risks.mean().item()


def test_eqrm_switches_to_the_quantile_with_a_fresh_small_lr_adam():
    alg = build("EQRM", {"eqrm_burnin_iters": 1, "eqrm_lr": 1e-6, "eqrm_quantile": 0.9})
    first = alg.optimizer
    alg.train_step(batches(seed=0))
    out = alg.train_step(batches(seed=1))
    assert alg.optimizer is not first and alg.optimizer.param_groups[0]["lr"] == 1e-6
    assert out["loss"] > out["mean_risk"]  # a high quantile of the risks exceeds their mean


def test_eqrm_rejects_bad_settings():
    with pytest.raises(ShiftbenchError, match="eqrm_dist"):
        build("EQRM", {"eqrm_dist": "beta"})
    with pytest.raises(ShiftbenchError, match="eqrm_quantile"):
        build("EQRM", {"eqrm_quantile": 1.0})


DG_ALGORITHMS = ["IRM", "VREx", "EQRM", "GroupDRO", "Mixup", "MLDG", "Fish", "CORAL", "MMD",
                 "CausIRL_CORAL", "CausIRL_MMD", "ANDMask", "SANDMask", "IGA"]


@pytest.mark.parametrize("name", DG_ALGORITHMS)
def test_dg_algorithms_ignore_unlabeled_and_are_deterministic(name):
    runs = []
    for unlabeled in (None, [torch.randn(8, 5, dtype=torch.float64)]):
        alg = build(name, {"eqrm_burnin_iters": 1} if name == "EQRM" else {})
        torch.manual_seed(5)
        np.random.seed(5)  # Mixup and CausIRL draw from numpy's generator, as DomainBed
        for step in range(2):
            alg.train_step(batches(seed=step), unlabeled)
        runs.append([p.detach().clone() for p in alg.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("name", ["GroupDRO", "EQRM"])
def test_per_domain_forward_under_the_domainbed_protocol(name):
    """DomainBed runs one forward pass per domain (BatchNorm sees each domain alone)."""
    from shiftbench.hparams_registry import DatasetInfo, default_hparams

    ds = DatasetInfo("PACS", (3, 224, 224), 7)
    assert default_hparams(name, ds)["per_domain_forward"] is False
    assert default_hparams(name, ds, protocol="domainbed")["per_domain_forward"] is True
    for per_domain, expected in ((False, [24]), (True, [8, 8, 8])):
        alg = build(name, {"per_domain_forward": per_domain})
        sizes = []
        alg.network.register_forward_hook(lambda m, i, o, s=sizes: s.append(len(i[0])))
        alg.update(batches())
        assert sizes == expected


def test_eqrm_kde_and_domainbeds_kde_agree_in_value_not_in_gradient():
    """`kde` (exact implicit-function gradient) and `kde_domainbed` (DomainBed's bisection,
    differentiated through the bracket ends) estimate the same quantile. `kde_domainbed`'s value
    and gradient against DomainBed's own output: test_domainbed_parity.py."""
    from shiftbench.algorithms.dg_invariance import kde_quantile_domainbed

    risks = torch.tensor([0.3, 0.9, 0.5, 1.7, 0.4], requires_grad=True)
    q = kde_quantile_domainbed(risks, 0.75)
    assert q.dtype == torch.float64  # DomainBed's alpha buffer is float64
    assert math.isclose(q.item(), kde_quantile(risks.double(), 0.75).item(), rel_tol=1e-6)
    (g,) = torch.autograd.grad(q, risks)
    (g_ift,) = torch.autograd.grad(kde_quantile(risks, 0.75), risks)
    assert not torch.allclose(g.float(), g_ift, rtol=1e-3)


def test_eqrm_domainbed_burnin_is_a_float_draw_as_domainbed():
    from shiftbench.hparams_registry import random_hparams

    draws = [random_hparams("EQRM", "RotatedMNIST", s, protocol="domainbed")["eqrm_burnin_iters"]
             for s in range(1, 6)]
    assert all(isinstance(d, float) and 10 ** 2.5 <= d <= 10 ** 3.5 for d in draws)
    alg = build("EQRM", {"eqrm_burnin_iters": 1.5, "eqrm_dist": "kde_domainbed"})
    opt = alg.optimizer
    for _ in range(3):
        alg.train_step(batches())
    assert alg.optimizer is opt  # t never equals 1.5: no Adam reset, as DomainBed
