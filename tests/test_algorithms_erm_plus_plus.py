"""Mechanism tests for ERMPlusPlus (algorithms/erm_plus_plus.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from dg_testing import batches, build, params

from shiftbench.algorithms import create_algorithm
from shiftbench.algorithms.erm_plus_plus import LARS


def test_linear_probing_then_full_fine_tuning():
    alg = build("ERMPlusPlus", {"linear_steps": 2, "linear_lr": 1e-2})
    moved = []
    for step in range(5):
        feat = [p.detach().clone() for p in alg.featurizer.parameters()]
        head = [p.detach().clone() for p in alg.classifier.parameters()]
        alg.train_step(batches(seed=step))
        moved.append((any(not torch.equal(a, b) for a, b in zip(feat, alg.featurizer.parameters())),
                      any(not torch.equal(a, b) for a, b in zip(head, alg.classifier.parameters()))))
    # updates 0, 1, 2 (= linear_steps) probe the classifier only
    assert moved == [(False, True)] * 3 + [(True, True)] * 2


def test_the_average_is_a_copy_then_the_uniform_mean_from_start_minus_two():
    alg = build("ERMPlusPlus", {"linear_steps": 0, "sma_start_iter": 3})
    history = []
    for step in range(6):
        alg.train_step(batches(seed=step))
        history.append(params(alg))
        averaged = [p.detach() for p in alg.network_sma.parameters()]
        window = history[1:] if step >= 2 else history[-1:]  # updates sma_start_iter - 2 = 1 onwards
        expected = [sum(h[i] for h in window) / len(window) for i in range(len(averaged))]
        for a, b in zip(averaged, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    x = batches(seed=9)[0][0]
    alg.eval()
    with torch.no_grad():
        assert torch.equal(alg.predict(x), alg.network_sma(x))
        assert not torch.allclose(alg.predict(x), alg.network(x))


def _bn_algorithm(freeze_bn: bool):
    torch.manual_seed(0)
    return create_algorithm("ERMPlusPlus", (3, 32, 32), 3, 2, {"network": "wrn16_2", "freeze_bn": freeze_bn,
                                                              "linear_steps": 0}, setting="dg")


def test_batchnorm_statistics_of_the_average_are_refreshed_unless_frozen():
    g = torch.Generator().manual_seed(0)
    mbs = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(3, (4,), generator=g)) for _ in range(2)]
    x = torch.cat([b for b, _ in mbs])
    alg = _bn_algorithm(False)
    alg.train_step(mbs)
    expected = copy.deepcopy(alg.network).train()
    with torch.no_grad():
        expected(x)  # the refresh: a train-mode forward of the (copied) weights after the update
    got = alg.network_sma.state_dict()
    for name, value in expected.state_dict().items():
        if not name.endswith("num_batches_tracked"):  # a counter, not averaged (as DomainBed)
            torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got["0.bn1.running_mean"],
                              alg.network.state_dict()["0.bn1.running_mean"])
    assert not alg.network_sma.training and alg.training
    frozen = _bn_algorithm(True)
    frozen.train_step(mbs)
    assert torch.equal(frozen.network_sma.state_dict()["0.bn1.running_mean"],
                       frozen.network.state_dict()["0.bn1.running_mean"])


def test_lars_step_against_its_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    opt = LARS([w, b], lr=0.1, weight_decay=0.01, momentum=0.9, trust_coefficient=0.001)
    w0, b0 = w.detach().clone(), b.detach().clone()
    gw, gb = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    u = gw + 0.01 * w0
    u = u * 0.001 * w0.norm() / u.norm()
    torch.testing.assert_close(w.detach(), w0 - 0.1 * u)
    torch.testing.assert_close(b.detach(), b0 - 0.1 * gb)
    w.grad, b.grad = gw.clone(), gb.clone()
    w1 = w.detach().clone()
    opt.step()
    u2 = gw + 0.01 * w1
    u2 = u2 * 0.001 * w1.norm() / u2.norm()
    torch.testing.assert_close(w.detach(), w1 - 0.1 * (0.9 * u + u2))


@pytest.mark.parametrize("lars", [False, True])
def test_trains_with_either_optimizer(lars):
    alg = build("ERMPlusPlus", {"lars": lars, "linear_steps": 0, "lr": 0.05})
    first = alg.train_step(batches(seed=0))["loss"]
    for _ in range(15):
        last = alg.train_step(batches(seed=0))["loss"]
    assert last < first
