"""Mechanism tests for CAD / CondCAD: the bottleneck loss by hand, its direction, lambda = 0."""

from __future__ import annotations

import math

import pytest
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.dg_contrastive import BASE_TEMPERATURE, bottleneck_loss
from shiftbench.hparams_registry import DatasetInfo

IMG = DatasetInfo("Debug", (3, 16, 16), 3)
VEC = DatasetInfo("Debug", (6,), 3)


def _by_hand(z, y, d, tau, conditional, flipped):
    n, losses = len(z), []
    for i in range(n):
        if not conditional and not any(y[j] == y[i] and j != i for j in range(n)):
            continue
        support = [j for j in range(n) if j != i and (not conditional or y[j] == y[i])]
        target = [j for j in support if (d[j] != d[i]) == flipped]
        if not target:
            continue
        w = {j: math.exp(float(z[i] @ z[j]) / tau) for j in support}
        p = sum(w[j] for j in target) / sum(w.values())
        losses.append((-1 if flipped else 1) * math.log(p) * tau / BASE_TEMPERATURE)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("flipped", [True, False])
def test_bottleneck_loss_matches_hand_computation(conditional, flipped):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 0, 1, 2, 0])
    d = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    got = bottleneck_loss(z, y, d, 0.5, conditional, flipped).item()
    assert math.isclose(got, _by_hand(z, y, d, 0.5, conditional, flipped), rel_tol=1e-9)


def test_domain_revealing_features_cost_more():
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    d = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    revealing = torch.stack([d.double() * 2 - 1, y.double()], 1)
    hiding = torch.stack([torch.tensor([1., -1, -1, 1, 1, -1, -1, 1]), y.double()], 1)
    for cond in (False, True):
        worse = bottleneck_loss(revealing, y, d, 0.1, cond, True)
        assert worse > bottleneck_loss(hiding, y, d, 0.1, cond, True)


def _make(name, ds, **hp):
    torch.manual_seed(0)
    alg = create_algorithm(name, ds.input_shape, 3, 2, {"mlp_width": 16, "mlp_depth": 3, **hp}, dataset=ds,
                           setting="dg", total_steps=10)
    return alg


@pytest.mark.parametrize("name", ["CAD", "CondCAD"])
@pytest.mark.parametrize("ds", [VEC, IMG], ids=["vector", "image"])
def test_lambda_zero_equals_erm(name, ds):
    g = torch.Generator().manual_seed(1)
    mbs = [(torch.randn((8, *ds.input_shape), generator=g), torch.randint(3, (8,), generator=g))
           for _ in range(2)]
    erm, alg = _make("ERM", ds), _make(name, ds, cad_lambda=0.0)
    erm.update(mbs)
    out = alg.update(mbs)
    assert math.isfinite(out["bottleneck"])
    for (k, p), (_, q) in zip(erm.network.named_parameters(), alg.network.named_parameters()):
        assert torch.equal(p, q), k


def test_projection_and_normalisation_options_train():
    g = torch.Generator().manual_seed(1)
    mbs = [(torch.randn((8, 6), generator=g), torch.randint(3, (8,), generator=g)) for _ in range(2)]
    alg = _make("CondCAD", VEC, cad_project=True, cad_normalize=True)
    before = [p.detach().clone() for p in alg.project.parameters()]
    out = alg.update(mbs)
    assert math.isfinite(out["loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, alg.project.parameters()))
