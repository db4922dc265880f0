"""Mechanism tests for URM (algorithms/dg_uniform.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from dg_testing import batches, build, params

from shiftbench.hparams_registry import default_hparams


def test_features_are_bounded_by_the_output_activation():
    x = torch.cat([b for b, _ in batches()]) * 100
    z = build("URM", {"urm_generator_output": "tanh"}).featurizer(x)
    assert z.abs().max() <= 1.0 and z.min() < 0
    assert build("URM", {"urm_generator_output": "relu"}).featurizer(x).min() >= 0.0


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_generator_and_discriminator_losses_as_defined(smoothing):
    lam = 0.15
    alg = build("URM", {"urm_adv_lambda": lam, "urm_discriminator_label_smoothing": smoothing})
    mbs = batches(seed=3)
    x = torch.cat([b for b, _ in mbs])
    y = torch.cat([t for _, t in mbs])
    disc = copy.deepcopy(alg.discriminator)
    with torch.no_grad():
        z = alg.featurizer(x)
        ones = torch.ones(len(z), dtype=z.dtype)
        expected = (F.cross_entropy(alg.classifier(z), y)
                    + lam * F.binary_cross_entropy_with_logits(disc(z)[:, 0], ones)).item()
    torch.manual_seed(11)
    out = alg.train_step(mbs)
    assert out["loss"] == pytest.approx(expected, rel=1e-10)
    # the discriminator step, redone by hand with the same noise draw (tanh: U[-1, 1))
    torch.manual_seed(11)
    noise = 2 * torch.rand(z.shape, dtype=z.dtype) - 1
    real = 1 - smoothing + smoothing * torch.rand(len(z), dtype=z.dtype) if smoothing else ones
    fake = smoothing * torch.rand(len(z), dtype=z.dtype) if smoothing else torch.zeros_like(ones)
    d_loss = (F.binary_cross_entropy_with_logits(disc(noise)[:, 0], real)
              + lam * F.binary_cross_entropy_with_logits(disc(z)[:, 0], fake))
    assert out["disc_loss"] == pytest.approx(d_loss.item(), rel=1e-10)
    opt = torch.optim.Adam(disc.parameters(), lr=alg.hparams["urm_discriminator_lr"])
    d_loss.backward()
    opt.step()
    for a, b in zip(disc.parameters(), alg.discriminator.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_at_zero_weight_the_model_ignores_the_discriminator():
    runs = []
    for d_lr in (1e-3, 1e-1):
        alg = build("URM", {"urm_adv_lambda": 0.0, "urm_discriminator_lr": d_lr})
        for step in range(3):
            torch.manual_seed(step)
            alg.train_step(batches(seed=step))
        runs.append(params(alg))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert not torch.equal(runs[0][0], params(build("URM", {}))[0])


def test_adversarial_term_pushes_features_towards_the_noise():
    """With the discriminator frozen, the generator term alone raises D's 'noise' score of the features."""
    alg = build("URM", {"urm_adv_lambda": 1.0, "lr": 1e-2})
    mbs = batches(seed=4)
    x = torch.cat([b for b, _ in mbs])
    frozen = copy.deepcopy(alg.discriminator)
    before = frozen(alg.featurizer(x)).mean().item()
    alg.discriminator_optimizer.param_groups[0]["lr"] = 0.0
    for _ in range(5):
        alg.train_step(mbs)
    assert frozen(alg.featurizer(x)).mean().item() > before


def test_discriminator_lr_depends_on_the_input_size():
    assert default_hparams("URM", "ColoredMNIST")["urm_discriminator_lr"] == 1e-3
    assert default_hparams("URM", "PACS", protocol="domainbed")["urm_discriminator_lr"] == 5e-5
