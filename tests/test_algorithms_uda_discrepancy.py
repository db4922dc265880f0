"""Invariants of DAN (MK-MMD), MCC, MCD and MDD (methods.md section 22.2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.uda_discrepancy import classifier_discrepancy, mcc_loss, mk_mmd
from shiftbench.errors import ShiftbenchError


def _make(name, steps=10, task="uda", **hp):
    torch.manual_seed(0)
    alg = create_algorithm(name, (5,), 3, 1, {"mlp_width": 8, **hp}, dataset=None,
                           setting=task, total_steps=steps)
    return alg


def _batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return ([(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))],
            [torch.randn(n, 5, generator=g)])


@pytest.mark.parametrize("estimator", ["quadratic", "linear"])
def test_mk_mmd_zero_for_identical_samples_and_grows_with_shift(estimator):
    x = torch.randn(40, 4, dtype=torch.float64)
    assert abs(mk_mmd(x, x.clone(), estimator).item()) < 1e-12
    near, far = mk_mmd(x, x + 0.5, estimator), mk_mmd(x, x + 3.0, estimator)
    assert far > near > 0


def test_mk_mmd_quadratic_is_nonnegative_and_checks_estimator():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        a, b = torch.randn(10, 3, generator=g), torch.randn(12, 3, generator=g)
        assert mk_mmd(a, b) >= 0
    with pytest.raises(ShiftbenchError, match="quadratic"):
        mk_mmd(a, b, "cubic")
    with pytest.raises(ShiftbenchError, match="mmd_estimator"):
        _make("DAN", mmd_estimator="cubic")


def test_mcc_loss_limits():
    k = 4
    assert mcc_loss(torch.zeros(8, k), 2.5).item() == pytest.approx((k - 1) / k)
    one_hot = 1000.0 * torch.eye(k).repeat(2, 1)  # confident and over distinct classes
    assert mcc_loss(one_hot, 2.5).item() == pytest.approx(0.0, abs=1e-6)
    z = torch.randn(8, k, requires_grad=True)
    mcc_loss(z, 2.5).backward()  # weights are detached: the gradient is finite and flows
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("name,hp", [("MCC", {"mcc_weight": 0.0}), ("DAN", {"mmd_weight": 0.0})])
def test_zero_weight_reduces_to_erm(name, hp):
    mbs, unl = _batch()
    alg, erm = _make(name, **hp), _make("ERM")
    alg.train_step(mbs, unl)
    erm.train_step(mbs, unl)
    mine = list(alg.featurizer.parameters()) + list(alg.classifier.parameters())
    for a, b in zip(erm.network.parameters(), mine):
        assert torch.allclose(a, b, atol=1e-6)


def test_dan_warmup_follows_dann_schedule():
    """With `mmd_warmup` the MMD weight is w * (2 / (1 + exp(-10 p)) - 1): 0 at the first step."""
    from shiftbench.algorithms.components import dann_schedule

    mbs, unl = _batch()
    f, logits = torch.randn(12, 8), torch.randn(12, 3)
    ramped, fixed = _make("DAN", steps=10), _make("DAN", steps=10, mmd_warmup=False)
    assert ramped.penalty(f, logits, 6)["mmd"].item() == 0.0
    full = fixed.penalty(f, logits, 6)["mmd"].item()
    assert full > 0
    for _ in range(4):
        ramped.train_step(mbs, unl)
    expected = full * dann_schedule(ramped.progress)
    assert ramped.penalty(f, logits, 6)["mmd"].item() == pytest.approx(expected, rel=1e-6)


def test_mcd_discrepancy_zero_for_identical_classifiers():
    logits = torch.randn(7, 3)
    assert classifier_discrepancy(logits, logits.clone()).item() == 0.0
    alg = _make("MCD")
    alg.heads[1].load_state_dict(alg.heads[0].state_dict())
    assert alg._discrepancy(torch.randn(5, 8)).item() == 0.0


def test_mcd_three_steps_move_only_their_parameters():
    alg = _make("MCD", num_k=3)
    calls = []

    def watch(opt, name):
        step = opt.step

        def wrapped(*a, **k):
            g = [p.detach().clone() for p in alg.featurizer.parameters()]
            h = [p.detach().clone() for p in alg.heads.parameters()]
            out = step(*a, **k)
            g_moved = any(not torch.equal(x, p) for x, p in zip(g, alg.featurizer.parameters()))
            h_moved = any(not torch.equal(x, p) for x, p in zip(h, alg.heads.parameters()))
            calls.append((name, g_moved, h_moved))
            return out
        opt.step = wrapped

    watch(alg.optimizer, "G")
    watch(alg.head_optimizer, "F")
    alg.train_step(*_batch())
    # A: G and F step; B: F only (G untouched); C: G only, num_k times (F untouched)
    assert [c[0] for c in calls] == ["G", "F", "F", "G", "G", "G"]
    assert calls[2] == ("F", False, True)
    assert all(c == ("G", True, False) for c in calls[3:])
    assert all(p.requires_grad for p in alg.heads.parameters())


def test_mdd_disparity_matches_its_formula_and_reverses_into_features():
    alg = _make("MDD", mdd_margin=3.0)
    alg.num_updates.fill_(10)  # lambda = grl_max * ~1
    f = torch.randn(8, 8, requires_grad=True)
    logits = alg.classifier(f)
    value = alg.penalty(f, logits, 5)["mdd"]
    adv = alg.adv_classifier(f)
    pred = logits.argmax(1)
    p_t = F.softmax(adv[5:], 1).gather(1, pred[5:, None])[:, 0]
    expected = 3.0 * F.cross_entropy(adv[:5], pred[:5]) - torch.log(1 - p_t).mean()
    assert torch.isclose(value, expected, atol=1e-5)
    w = alg.adv_classifier.weight
    g_head, g_feat = torch.autograd.grad(value, (w, f), retain_graph=True)
    g_head2, g_feat2 = torch.autograd.grad(expected, (w, f))
    assert torch.allclose(g_head, g_head2, atol=1e-6)  # the head descends the disparity
    lam = alg.hparams["grl_max"] * 0.9999
    # the features get the reversed, scaled gradient of the adversarial term (plus none via argmax)
    assert torch.allclose(g_feat, -lam * g_feat2, atol=1e-5)


def test_mcc_in_ssda_uses_the_few_labeled_target_batch():
    alg = _make("MCC", task="ssda")
    mbs, unl = _batch()
    mbs.append((torch.randn(3, 5), torch.tensor([0, 1, 2])))
    x, y = torch.cat([m[0] for m in mbs]), torch.cat([m[1] for m in mbs])
    with torch.no_grad():
        pooled = F.cross_entropy(alg.predict(x), y).item()
    out = alg.train_step(mbs, unl)
    assert out["cls_loss"] == pytest.approx(pooled, rel=1e-5) and out["mcc"] >= 0


@pytest.mark.parametrize("name", ["DAN", "MCC", "MCD", "MDD"])
def test_need_target_batches(name):
    with pytest.raises(ShiftbenchError, match="unlabeled"):
        _make(name).train_step(_batch()[0], None)


def test_mk_mmd_kernel_is_exp_of_minus_d2_over_two_sigma2():
    """One example per side, one multiplier m: MMD^2 = 2 - 2 exp(-d^2 / (2 m s2)), s2 = d^2."""
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    for m in (0.5, 1.0, 2.0):
        expected = 2 - 2 * math.exp(-25.0 / (2 * m * 25.0))
        assert math.isclose(mk_mmd(a, b, multipliers=(m,)).item(), expected, rel_tol=1e-6)
