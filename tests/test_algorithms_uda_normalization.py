"""Invariants of AdaBN and GAM (methods.md sections 22.1 DGP-B and 22.2)."""

from __future__ import annotations

import copy

import pytest
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.uda_normalization import estimate_bn_statistics, gaussian_kl, weight_drift


def _affine_shift_problem(seed=0, n=1500, d=8, k=3):
    """DGP-B: Gaussian classes in R^8; target = a * x + b per dimension (a > 0)."""
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=g)
    a = 0.4 + 2.1 * torch.rand(d, generator=g)
    b = 3.0 * torch.randn(d, generator=g)

    def sample(m):
        y = torch.randint(0, k, (m,), generator=g)
        return means[y] + torch.randn(m, d, generator=g), y

    xs, ys = sample(n)
    xt_train, _ = sample(n)
    xt_test, yt_test = sample(2000)
    xs_test, ys_test = sample(2000)
    return (xs, ys), a * xt_train + b, (a * xt_test + b, yt_test), (xs_test, ys_test)


def _acc(alg, x, y):
    alg.eval()
    with torch.no_grad():
        return (alg.predict(x).argmax(1) == y).float().mean().item()


def _train(name, source, target_pool, steps=80, bs=64, **hp):
    torch.manual_seed(0)
    alg = create_algorithm(name, (8,), 3, 1, {"mlp_width": 16, **hp}, dataset=None,
                           setting="uda", total_steps=steps)
    g = torch.Generator().manual_seed(1)
    xs, ys = source
    batches = lambda: target_pool.split(256)  # noqa: E731
    interval = alg.round_interval()
    for step in range(steps):
        if interval and step % interval == 0:
            alg.on_round(batches)
        i = torch.randint(0, len(xs), (bs,), generator=g)
        j = torch.randint(0, len(target_pool), (bs,), generator=g)
        alg.train()
        alg.train_step([(xs[i], ys[i])], [target_pool[j]])
    return alg


def test_adabn_recovers_source_accuracy_under_per_dimension_affine_shift():
    source, pool, (xt, yt), (xs, ys) = _affine_shift_problem()
    erm = _train("ERM", source, pool)
    adabn = _train("AdaBN", source, pool)
    assert bool(adabn.finalised)
    target_acc = _acc(adabn, xt, yt)
    on_source = copy.deepcopy(adabn)  # same weights, statistics of the source pool instead
    estimate_bn_statistics(on_source.network, lambda: source[0].split(256))
    source_acc = _acc(on_source, xs, ys)
    assert source_acc > 0.85
    assert abs(target_acc - source_acc) <= 0.03, (target_acc, source_acc)
    assert _acc(erm, xt, yt) < source_acc - 0.1  # the shift does hurt without adaptation


def test_adabn_statistics_are_exact_and_weights_unchanged():
    torch.manual_seed(0)
    alg = create_algorithm("AdaBN", (4,), 3, 1, {"mlp_width": 6}, dataset=None, setting="uda", total_steps=3)
    pool = (3 * torch.randn(50, 4) + 2).double().float()
    weights = {k: v.clone() for k, v in alg.named_parameters()}
    alg.num_updates.fill_(2)
    out = alg.on_round(lambda: pool.split(7))
    assert out["adabn_target_examples"] == 50.0
    assert all(torch.equal(v, dict(alg.named_parameters())[k]) for k, v in weights.items())
    input_bn, linear, hidden_bn = alg.featurizer[0], alg.featurizer[1].net[0], alg.featurizer[1].net[1]
    p64 = pool.double()
    assert torch.allclose(input_bn.running_mean.double(), p64.mean(0), atol=1e-5)
    assert torch.allclose(input_bn.running_var.double(), p64.var(0), atol=1e-4)
    with torch.no_grad():
        h = linear(input_bn.eval()(pool)).double()  # later layers see target-normalised inputs
    assert torch.allclose(hidden_bn.running_mean.double(), h.mean(0), atol=1e-5)
    assert torch.allclose(hidden_bn.running_var.double(), h.var(0), atol=1e-4)
    # the last step of the budget leaves weights and statistics alone
    stats = {k: v.clone() for k, v in alg.state_dict().items()}
    alg.train_step([(torch.randn(5, 4), torch.randint(0, 3, (5,)))], [torch.randn(5, 4)])
    assert all(torch.equal(v, alg.state_dict()[k]) for k, v in stats.items() if k != "num_updates")


def test_adabn_source_statistics_baseline_has_the_same_weights_and_source_statistics():
    source, pool, (xt, yt), _ = _affine_shift_problem()
    adabn = _train("AdaBN", source, pool)
    baseline = _train("AdaBN", source, pool, eval_statistics="source")
    assert bool(baseline.finalised)
    params = dict(baseline.named_parameters())
    assert all(torch.equal(v, params[k]) for k, v in adabn.named_parameters())  # paired: same weights
    input_bn = baseline.featurizer[0]
    xs = source[0]
    # source statistics (an EMA over the last source batches), nowhere near the target's
    assert torch.allclose(input_bn.running_mean, xs.mean(0), atol=0.35)
    assert (input_bn.running_mean - pool.mean(0)).abs().max() > 1.0
    assert not torch.allclose(adabn.featurizer[0].running_mean, input_bn.running_mean, atol=0.35)
    assert _acc(adabn, xt, yt) > _acc(baseline, xt, yt) + 0.1


def test_adabn_source_steps_do_not_touch_running_statistics():
    torch.manual_seed(0)
    alg = create_algorithm("AdaBN", (4,), 3, 1, {"mlp_width": 6}, dataset=None, setting="uda", total_steps=10)
    before = alg.featurizer[0].running_mean.clone()
    target = torch.full((8, 4), 5.0) + torch.randn(8, 4)
    alg.train_step([(torch.randn(8, 4) - 5.0, torch.randint(0, 3, (8,)))], [target])
    expected = 0.9 * before + 0.1 * target.mean(0)  # only the target batch moved them
    assert torch.allclose(alg.featurizer[0].running_mean, expected, atol=1e-5)


def test_gaussian_kl_zero_for_equal_moments():
    x = torch.randn(64, 5, dtype=torch.float64)
    assert gaussian_kl(x, x.clone()).item() == pytest.approx(0.0, abs=1e-12)
    perm = x[torch.randperm(64)]
    assert gaussian_kl(perm, x).item() == pytest.approx(0.0, abs=1e-12)
    assert gaussian_kl(x + 1.0, x) > 0 and gaussian_kl(2.0 * x, x) > 0
    maps = torch.randn(6, 3, 4, 4)
    assert gaussian_kl(maps, maps).item() == pytest.approx(0.0, abs=1e-6)


def test_gam_phase_switch_drift_and_frozen_source():
    torch.manual_seed(0)
    alg = create_algorithm("GAM", (5,), 3, 1, {"mlp_width": 8}, dataset=None, setting="uda", total_steps=4)
    g = torch.Generator().manual_seed(0)

    def batch():
        return ([(torch.randn(6, 5, generator=g), torch.randint(0, 3, (6,), generator=g))],
                [torch.randn(6, 5, generator=g)])

    for _ in range(2):
        assert alg.train_step(*batch())["phase"] == 1.0
    frozen = copy.deepcopy(alg.source_net)
    discs = copy.deepcopy(alg.discriminators)
    alg.start_adaptation()
    assert weight_drift(alg.target_net, alg.source_net).item() == 0.0
    alg.adapting.fill_(False)
    out = alg.train_step(*batch())
    assert out["phase"] == 2.0 and out["drift"] == 0.0  # computed before the first T-step
    alg.train_step(*batch())
    assert all(torch.equal(a, b) for a, b in zip(frozen.parameters(), alg.source_net.parameters()))
    assert weight_drift(alg.target_net, alg.source_net).item() > 0
    assert any(not torch.equal(a, b) for a, b in zip(discs.parameters(),
                                                      alg.discriminators.parameters()))
    assert [d[0].in_features for d in alg.discriminators] == [8, 3]  # one per matched layer
    x = torch.randn(4, 5)
    assert torch.equal(alg.predict(x), alg.target_net(x))
