"""Mechanism invariants of the online self-training methods and the tensor augmentations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shiftbench.algorithms import augment, create_algorithm
from shiftbench.algorithms.components import EMA
from shiftbench.algorithms.self_training import (
    dacs_mix,
    ema_warmup_decay,
    linear_ramp,
    masked_pseudo_label_loss,
    sigmoid_ramp,
)
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams_registry import DatasetInfo

VEC = DatasetInfo("Debug", (8,), 3)


def _alg(name, **hp):
    torch.manual_seed(0)
    hparams = {"batch_size": 8, "mlp_width": 16, "mlp_depth": 3, **hp}
    alg = create_algorithm(name, (8,), 3, 1, hparams, dataset=VEC, setting="uda", total_steps=20)
    return alg


def _data(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return ([(torch.randn(n, 8, generator=g), torch.randint(3, (n,), generator=g))],
            [torch.randn(n, 8, generator=g) + 1.0])


# ---- augmentations --------------------------------------------------------------------------

def test_augmentations_are_deterministic_under_manual_seed_and_keep_shape():
    x = torch.rand(4, 3, 12, 12)
    for fn in (augment.weak_augment, augment.strong_augment, augment.photometric_augment):
        torch.manual_seed(3)
        a = fn(x)
        torch.manual_seed(3)
        assert torch.equal(a, fn(x)) and a.shape == x.shape
    v = torch.randn(5, 8)
    torch.manual_seed(1)
    a = augment.strong_augment(v)
    torch.manual_seed(1)
    assert torch.equal(a, augment.strong_augment(v)) and not torch.equal(a, v)


def test_shift_is_a_translation_and_identity_at_zero():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float).view(2, 1, 8, 8)
    assert torch.equal(augment.random_shift(x, 0.0), x)
    y = augment.random_shift(x, 0.25, generator=torch.Generator().manual_seed(0))
    # an interior 4x4 block of every output is a contiguous block of the input
    for i in range(2):
        block = y[i, 0, 2:6, 2:6]
        found = any(torch.equal(block, x[i, 0, r:r + 4, c:c + 4]) for r in range(5) for c in range(5))
        assert found


def test_colour_jitter_and_cutout_neutral_settings_and_fill():
    x = torch.rand(3, 3, 10, 10)
    assert torch.equal(augment.color_jitter(x, 0.0), x)
    assert torch.equal(augment.cutout(x, 0.0), x)
    out = augment.cutout(x, 0.5, generator=torch.Generator().manual_seed(0))
    changed = (out != x).any(dim=1)  # (B, H, W)
    for i in range(3):
        assert 0 < changed[i].sum() <= 25  # at most a 5x5 box
        assert torch.allclose(out[i][:, changed[i]], x[i].mean().expand(3, int(changed[i].sum())))
    with pytest.raises(ShiftbenchError, match="image batch"):
        augment.color_jitter(torch.rand(3, 4), 0.1)


def test_box_mask_area_follows_ratio():
    ratio = torch.tensor([0.0, 0.25, 0.5, 1.0])
    m = augment.box_mask((4, 20, 20), ratio, torch.Generator().manual_seed(0))
    assert m.shape == (4, 20, 20)
    assert torch.allclose(m.mean(dim=(1, 2)), ratio, atol=0.03)


# ---- schedules and EMA ----------------------------------------------------------------------

def test_schedules():
    assert linear_ramp(0.05, 0.1, 0.4) == 0.0 and linear_ramp(0.25, 0.1, 0.4) == pytest.approx(0.5)
    assert linear_ramp(0.9, 0.1, 0.4) == 1.0
    assert sigmoid_ramp(0.0, 0.3) == pytest.approx(math.exp(-5)) and sigmoid_ramp(0.3, 0.3) == 1.0
    assert [ema_warmup_decay(t, 0.99) for t in (0, 1, 2)] == pytest.approx([0.0, 0.5, 2 / 3])
    assert ema_warmup_decay(10_000, 0.99) == 0.99


def test_ema_math():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    ema = EMA(student)
    old = ema.module.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema.update(student, 1.0)
    assert torch.equal(ema.module.weight, old)  # alpha = 1: the teacher never changes
    ema.update(student, 0.5)
    assert torch.allclose(ema.module.weight, 0.5 * old + 0.5 * student.weight)
    ema.update(student, 0.0)
    assert torch.equal(ema.module.weight, student.weight)


# ---- pseudo-label losses --------------------------------------------------------------------

def test_masked_pseudo_label_loss_threshold_and_normalisation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.1], [0.0, 3.0]], dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    loss, mask = masked_pseudo_label_loss(logits, probs, 1.0)
    assert loss.item() == 0.0 and mask.sum() == 0
    loss, mask = masked_pseudo_label_loss(logits, probs, 0.8)
    assert mask.tolist() == [1.0, 0.0, 1.0]
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1]), reduction="none")
    assert loss.item() == pytest.approx((ce[0] + ce[2]).item() / 3)  # divided by the full batch


def test_fixmatch_threshold_one_gives_zero_unlabeled_loss():
    alg = _alg("FixMatch", fixmatch_threshold=1.0)
    values = alg.train_step(*_data())
    assert values["unsup_loss"] == 0.0 and values["mask_rate"] == 0.0
    alg = _alg("FixMatch", fixmatch_threshold=0.0)
    values = alg.train_step(*_data())
    assert values["unsup_loss"] > 0 and values["mask_rate"] == 1.0


def test_pseudo_label_weight_is_zero_before_the_ramp():
    alg = _alg("PseudoLabel", pl_threshold=0.0)
    assert alg.train_step(*_data())["pl_weight"] == 0.0
    alg.num_updates.fill_(10)  # progress 0.5 > ramp end 0.4
    assert alg.train_step(*_data())["pl_weight"] == pytest.approx(3.0)


# ---- Mean Teacher and DACS ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["MeanTeacher", "DACS"])
def test_teacher_starts_as_student_copy_and_gets_no_gradient(name):
    alg = _alg(name)
    alg.train_step(*_data())  # alpha_0 = 0: teacher := student
    for t, s in zip(alg.teacher.module.parameters(), alg.network.parameters()):
        assert torch.equal(t, s) and t.grad is None and not t.requires_grad
    before = [p.clone() for p in alg.teacher.module.parameters()]
    alg.train_step(*_data(1))  # alpha_1 = 0.5
    for b, t, s in zip(before, alg.teacher.module.parameters(), alg.network.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * s, atol=1e-6)


def test_mean_teacher_predicts_with_teacher():
    alg = _alg("MeanTeacher")
    alg.train_step(*_data())
    alg.train_step(*_data(1))
    x = torch.randn(4, 8)
    alg.eval()
    assert torch.equal(alg.predict(x), alg.teacher(x))
    assert not torch.equal(alg.predict(x), alg.network(x))


def test_dacs_mix_pastes_source_inside_mask_and_reports_its_area():
    g = torch.Generator().manual_seed(0)
    xs, xt = torch.ones(6, 3, 10, 10), torch.zeros(6, 3, 10, 10)
    ratio = torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7, 0.5])
    x_mix, r = dacs_mix(xs, xt, ratio, g)
    inside = x_mix[:, 0] == 1
    assert torch.equal(x_mix, inside.unsqueeze(1).expand_as(x_mix).float())  # pixels from xs or xt
    assert torch.allclose(r, inside.float().mean(dim=(1, 2)))
    assert torch.allclose(r, ratio, atol=0.05)
    v_mix, rv = dacs_mix(torch.ones(4, 100), torch.zeros(4, 100), torch.full((4,), 0.5), g)
    assert torch.allclose(rv, v_mix.mean(dim=1)) and ((rv > 0.3) & (rv < 0.7)).all()


def test_dacs_target_term_weight_is_the_confident_fraction():
    alg = _alg("DACS", dacs_threshold=1.0)  # no teacher prediction reaches confidence 1
    values = alg.train_step(*_data())
    assert values["confident_fraction"] == 0.0
    alg = _alg("DACS", dacs_threshold=0.0)
    assert alg.train_step(*_data())["confident_fraction"] == 1.0
