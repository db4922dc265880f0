"""Mechanism tests for MixStyle: statistics mixing, detached statistics, p = 0 equals ERM."""

from __future__ import annotations

import pytest
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.mixstyle import mixstyle, parse_layers
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams_registry import DatasetInfo

IMG = DatasetInfo("Debug", (3, 16, 16), 3)
VEC = DatasetInfo("Debug", (6,), 3)


def _maps():
    g = torch.Generator().manual_seed(0)
    scale = 1 + 4 * torch.rand((4, 3, 1, 1), generator=g, dtype=torch.float64)
    return torch.randn((4, 3, 5, 5), generator=g, dtype=torch.float64) * scale + 2


def _mu_sigma(x):
    flat = x.flatten(2)
    return flat.mean(-1), (flat.var(-1, unbiased=False) + 1e-6).sqrt()


def test_statistics_are_mixed():
    x, partner = _maps(), torch.tensor([2, 3, 0, 1])
    lam = torch.tensor([0.2, 0.5, 1.0, 0.0], dtype=torch.float64)
    out = mixstyle(x, partner, lam)
    mu, sigma = _mu_sigma(x)
    mu_o, sigma_o = _mu_sigma(out)
    lam_ = lam[:, None]
    assert torch.allclose(mu_o, lam_ * mu + (1 - lam_) * mu[partner], atol=1e-9)
    assert torch.allclose(sigma_o, lam_ * sigma + (1 - lam_) * sigma[partner], rtol=1e-5)
    assert torch.allclose(out[2], x[2])  # lambda = 1: identity
    assert torch.allclose(mixstyle(x, partner, torch.ones(4)), x)


def test_statistics_are_detached():
    x = _maps().requires_grad_()
    out = mixstyle(x, torch.tensor([2, 3, 0, 1]), torch.full((4,), 0.5))
    out[0].sum().backward()
    assert x.grad[2].abs().sum() == 0  # no gradient into the partner's statistics
    mu, sigma = _mu_sigma(x.detach())
    ratio = (0.5 * sigma[0] + 0.5 * sigma[2]) / sigma[0]
    assert torch.allclose(x.grad[0], ratio[:, None, None].expand(3, 5, 5))


def _make(ds, **hp):
    torch.manual_seed(0)
    alg = create_algorithm("MixStyle" if hp else "ERM", ds.input_shape, 3, 2,
                           {"mlp_width": 16, "mlp_depth": 3, **hp}, dataset=ds, setting="dg", total_steps=10)
    return alg


def _data(ds):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn((6, *ds.input_shape), generator=g), torch.randint(3, (6,), generator=g))
            for _ in range(2)]


@pytest.mark.parametrize("ds", [IMG, VEC], ids=["image", "vector"])
def test_p_zero_equals_erm(ds):
    erm, alg = _make(ds), _make(ds, mixstyle_p=0.0)
    erm.update(_data(ds))
    alg.update(_data(ds))
    for (k, p), (_, q) in zip(erm.network.named_parameters(), alg.network.named_parameters()):
        assert torch.equal(p, q), k


@pytest.mark.parametrize("mix", ["random", "crossdomain"])
def test_mixing_changes_the_update_and_crossdomain_partners(mix):
    ds = IMG
    ref, alg = _make(ds, mixstyle_p=0.0), _make(ds, mixstyle_p=1.0, mixstyle_mix=mix, mixstyle_alpha=0.3)
    ref.update(_data(ds))
    alg.update(_data(ds))
    assert any(not torch.equal(p, q) for p, q in zip(ref.parameters(), alg.parameters()))
    domains = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)
    partners = alg._partners(domains)
    if mix == "crossdomain":
        assert (domains[partners] != domains).all()
    else:
        assert sorted(partners.tolist()) == list(range(15))


def test_layer_spec_validation():
    assert parse_layers("2,1") == [1, 2]
    with pytest.raises(ShiftbenchError, match="mixstyle_layers"):
        parse_layers("a,b")
    with pytest.raises(ShiftbenchError, match="mixstyle_mix"):
        _make(IMG, mixstyle_mix="nope")
