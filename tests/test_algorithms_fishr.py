"""Mechanism tests for Fishr (algorithms/fishr.py): the torch.func penalty against a slow loop."""

from __future__ import annotations

import pytest
import torch
from dg_testing import assert_erm_update, batches, build

from shiftbench.algorithms.fishr import fishr_distance, gradient_variances, per_sample_grads
from shiftbench.errors import ShiftbenchError


def _loop_variances(alg, mbs, create_graph=False):
    """E x P gradient variances, one autograd.grad call per sample (the definition, slowly)."""
    head = alg.classifier
    names = sorted(n for n, _ in head.named_parameters())
    params = dict(head.named_parameters())
    out = []
    for x, y in mbs:
        rows = []
        features = alg.featurizer(x)
        for i in range(len(x)):
            loss = torch.nn.functional.cross_entropy(head(features[i:i + 1]), y[i:i + 1])
            g = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
            rows.append(torch.cat([t.flatten() for t in g]))
        g = torch.stack(rows)
        mean = sum(rows) / len(rows)
        out.append(sum((r - mean) ** 2 for r in rows) / len(rows))
        assert torch.allclose(g.var(0, unbiased=False), out[-1])
    return torch.stack(out)


def _loop_penalty(v):
    e, p = v.shape
    mean = v.sum(0) / e
    return sum(((v[i] - mean) ** 2).sum() / p for i in range(e)) / e


def test_vmap_per_sample_grads_equal_the_loop_and_carry_second_order_gradients():
    alg = build("Fishr", {"nonlinear_classifier": True, "mlp_width": 16})
    mbs = batches(bs=5, seed=3)
    x = torch.cat([b for b, _ in mbs])
    y = torch.cat([t for _, t in mbs])
    fast = gradient_variances(per_sample_grads(alg.classifier, alg.featurizer(x), y), [5, 5, 5])
    slow = _loop_variances(alg, mbs, create_graph=True)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-14)
    # the penalty's gradient w.r.t. the featurizer and the head matches the loop's
    params = list(alg.network.parameters())
    g_fast = torch.autograd.grad(fishr_distance(fast), params)
    g_slow = torch.autograd.grad(_loop_penalty(slow), params)
    assert any(g.abs().sum() > 0 for g in g_fast[:2])  # it reaches the featurizer
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-14)


def test_penalty_and_its_moving_average_over_two_updates():
    ema = 0.8
    alg = build("Fishr", {"ema": ema, "penalty_anneal_iters": 0, "lambda": 10.0})
    mbs1, mbs2 = batches(seed=1), batches(seed=2)
    v1 = _loop_variances(alg, mbs1).detach()
    out1 = alg.train_step(mbs1)
    # at the first update the corrected average is the variance itself
    assert out1["penalty"] == pytest.approx(_loop_penalty(v1).item(), rel=1e-9) and out1["penalty"] > 0
    assert out1["loss"] == pytest.approx(out1["nll"] + 10.0 * out1["penalty"], rel=1e-10)
    v2 = _loop_variances(alg, mbs2).detach()
    out2 = alg.train_step(mbs2)
    averaged = (ema * (1 - ema) * v1 + (1 - ema) * v2) / (1 - ema)
    assert out2["penalty"] == pytest.approx(_loop_penalty(averaged).item(), rel=1e-9)
    assert out2["penalty"] != pytest.approx(_loop_penalty(v2).item(), rel=1e-3)


def test_anneal_weight_zero_then_lambda_and_adam_reset():
    alg = build("Fishr", {"lambda": 100.0, "penalty_anneal_iters": 2})
    opts = []
    for step in range(4):
        out = alg.train_step(batches(seed=step))
        opts.append(alg.optimizer)
        weight = 0.0 if step < 2 else 100.0
        assert out["loss"] == pytest.approx(out["nll"] + weight * out["penalty"], rel=1e-10)
    assert opts[0] is opts[1] and opts[1] is not opts[2] and opts[2] is opts[3]


def test_reduces_to_erm_at_zero_weight():
    assert_erm_update("Fishr", {"lambda": 0.0, "penalty_anneal_iters": 0})
    assert_erm_update("Fishr", {"penalty_anneal_iters": 100})


def test_moving_average_survives_a_state_round_trip():
    alg = build("Fishr", {"penalty_anneal_iters": 0})
    alg.train_step(batches(seed=1))
    fresh = build("Fishr", {"penalty_anneal_iters": 0})
    fresh.load_full_state(alg.full_state())
    assert torch.equal(fresh.variance_ema, alg.variance_ema) and alg.variance_ema.abs().sum() > 0
    assert fresh.train_step(batches(seed=2)) == alg.train_step(batches(seed=2))


def test_rejects_a_wrong_number_of_domains_and_bad_ema():
    alg = build("Fishr")
    with pytest.raises(ShiftbenchError, match="one batch per training domain"):
        alg.train_step(batches(domains=2))
    with pytest.raises(ShiftbenchError, match="ema"):
        build("Fishr", {"ema": 1.0})
