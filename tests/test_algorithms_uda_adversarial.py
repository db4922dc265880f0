"""Invariants of CDAN / CDAN+E, BSP and ADDA (methods.md section 22.2)."""

from __future__ import annotations

import copy

import pytest
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.components import grad_reverse
from shiftbench.algorithms.uda_adversarial import entropy_weights, multilinear_map
from shiftbench.errors import ShiftbenchError


def _make(name, steps=10, **hp):
    torch.manual_seed(0)
    alg = create_algorithm(name, (5,), 3, 1, {"mlp_width": 8, **hp}, dataset=None,
                           setting="uda", total_steps=steps)
    return alg


def _batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return ([(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))],
            [torch.randn(n, 5, generator=g)])


def test_multilinear_map_is_the_flattened_outer_product():
    f, g = torch.randn(4, 7), torch.softmax(torch.randn(4, 3), 1)
    t = multilinear_map(f, g)
    assert t.shape == (4, 21)
    assert torch.allclose(t.view(4, 3, 7), g[:, :, None] * f[:, None, :])
    rf, rg = torch.randn(7, 16), torch.randn(3, 16)
    r = multilinear_map(f, g, rf, rg)
    assert r.shape == (4, 16)
    assert torch.allclose(r, (f @ rf) * (g @ rg) / 4.0)


def test_cdan_discriminator_size_and_randomized_map_is_fixed():
    exact = _make("CDAN")
    assert exact.rf is None and exact.discriminator[0].in_features == 8 * 3
    rand = _make("CDAN", multilinear_max=10, randomized_dim=32)
    assert rand.discriminator[0].in_features == 32
    rf, rg = rand.rf.clone(), rand.rg.clone()
    for step in range(3):
        rand.train_step(*_batch(step))
    assert torch.equal(rf, rand.rf) and torch.equal(rg, rand.rg)
    assert "rf" in rand.state_dict() and not rand.rf.requires_grad


def test_entropy_weights_range_and_normalisation():
    logits = torch.cat([torch.zeros(1, 4), torch.tensor([[50.0, 0, 0, 0]]), torch.randn(6, 4)])
    raw = 1 + torch.exp(-torch.special.entr(torch.softmax(logits, 1)).sum(1))
    assert raw.min() >= 1 + 1 / 4 - 1e-6 and raw.max() <= 2 + 1e-6
    w = entropy_weights(logits)
    assert torch.isclose(w.sum(), torch.tensor(8.0))
    assert torch.allclose(w / w.sum(), raw / raw.sum())
    assert w[1] > w[0]  # the confident example weighs more


def test_cdan_prediction_is_detached_in_the_map():
    alg = _make("CDANE")
    f = torch.randn(6, 8, requires_grad=True)
    logits = alg.classifier(f)
    d = alg.discriminator(alg.disc_input(f, logits)).sum()
    d.backward()
    assert all(p.grad is None for p in alg.classifier.parameters())
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_cdan_with_zero_trade_off_is_erm():
    mbs, unl = _batch()
    cdan = _make("CDANE", adv_weight=0.0)
    erm = _make("ERM")
    cdan.train_step(mbs, unl)
    erm.train_step(mbs, unl)
    for a, b in zip(erm.network.parameters(),
                    list(cdan.featurizer.parameters()) + list(cdan.classifier.parameters())):
        assert torch.allclose(a, b, atol=1e-6)


def test_cdan_reversal_makes_features_fool_the_discriminator():
    alg = _make("CDAN")
    mbs, unl = _batch()
    xs, xt = mbs[0][0], unl[0]
    f = alg.featurizer(torch.cat([xs, xt]))
    logits = alg.classifier(f)
    d = alg.discriminator(grad_reverse(alg.disc_input(f, logits), 1.0))[:, 0]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        d, torch.cat([torch.ones(6), torch.zeros(6)]))
    w = alg.featurizer.net[0].weight
    g_rev = torch.autograd.grad(loss, w, retain_graph=True)[0]
    d_plain = alg.discriminator(alg.disc_input(f, logits))[:, 0]
    loss2 = torch.nn.functional.binary_cross_entropy_with_logits(
        d_plain, torch.cat([torch.ones(6), torch.zeros(6)]))
    assert torch.allclose(g_rev, -torch.autograd.grad(loss2, w)[0])


def test_bsp_penalty_is_the_top_singular_values():
    alg = _make("BSP", bsp_weight=1.0, bsp_k=1)
    fs = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    ft = torch.diag(torch.tensor([0.5, 4.0, 0.0]))
    assert torch.isclose(alg.extra_loss(fs, ft)["bsp"], torch.tensor(9.0 + 16.0))
    alg.hparams["bsp_k"] = 2
    assert torch.isclose(alg.extra_loss(fs, ft)["bsp"], torch.tensor(9.0 + 4.0 + 16.0 + 0.25))
    out = alg.train_step(*_batch())
    assert out["bsp"] > 0


def test_bsp_warmup_switches_the_penalty_on_at_its_progress():
    """bsp_warmup = 0.5 of 4 steps: no penalty (and DANN's update) in steps 0-1, the penalty
    from step 2 on; the default 0 penalises from the first step."""
    assert _make("BSP").hparams["bsp_warmup"] == 0.0
    warm = _make("BSP", steps=4, bsp_weight=1.0, bsp_warmup=0.5)
    plain = _make("BSP", steps=4, bsp_weight=0.0)  # the same network with no penalty at all
    for step in range(4):
        out_warm, out_plain = warm.train_step(*_batch(step)), plain.train_step(*_batch(step))
        if step < 2:
            assert out_warm["bsp"] == 0.0 and out_warm["loss"] == out_plain["loss"]
        else:
            assert out_warm["bsp"] > 0
    from shiftbench.algorithms.base import get_algorithm_class
    from shiftbench.hparams import validate_overrides

    with pytest.raises(ShiftbenchError, match=r"'bsp_warmup' must lie in \[0, 1\], got 1.5"):
        validate_overrides(get_algorithm_class("BSP").HPARAMS, {"bsp_warmup": 1.5}, "BSP")


def test_adda_phase_switch_freezes_source_and_copies_encoder():
    alg = _make("ADDA", steps=4, pretrain_fraction=0.5)
    x = torch.randn(5, 5)
    for step in range(2):
        assert alg.train_step(*_batch(step))["phase"] == 1.0
    assert not alg.adapting
    frozen = copy.deepcopy(alg)
    alg.start_adaptation()
    for a, b in zip(alg.target_encoder.parameters(), alg.source_encoder.parameters()):
        assert torch.equal(a, b)  # drift exactly 0 at the switch
    alg.adapting.fill_(False)
    for step in range(2, 4):
        assert alg.train_step(*_batch(step))["phase"] == 2.0
    assert alg.adapting
    for a, b in zip(alg.source_encoder.parameters(), frozen.source_encoder.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(alg.classifier.parameters(), frozen.classifier.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(alg.target_encoder.parameters(),
                                                      frozen.source_encoder.parameters()))
    assert torch.equal(alg.predict(x), alg.classifier(alg.target_encoder(x)))
    assert not torch.equal(alg.predict(x), alg.classifier(alg.source_encoder(x)))


def test_adversaries_need_target_batches():
    alg = _make("CDAN")
    with pytest.raises(ShiftbenchError, match="unlabeled"):
        alg.train_step(_batch()[0], None)
