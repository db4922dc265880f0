"""Unsupervised validation scores (entropy, IM, SND, DEV) and their record keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from results_helpers import make_record

from shiftbench.results.selection import select
from shiftbench.scores import (
    dev_risk,
    information_maximization,
    marginal_entropy,
    prediction_entropy,
    soft_neighborhood_density,
    validator_scores,
)


def test_entropy_and_information_maximization_extremes():
    uniform = torch.zeros(10, 4)
    assert prediction_entropy(uniform) == pytest.approx(math.log(4))
    assert marginal_entropy(uniform) == pytest.approx(math.log(4))
    assert information_maximization(uniform) == pytest.approx(0.0)
    confident = 50.0 * torch.eye(4).repeat(3, 1)  # confident and balanced over the classes
    assert prediction_entropy(confident) == pytest.approx(0.0, abs=1e-6)
    assert information_maximization(confident) == pytest.approx(math.log(4), abs=1e-6)
    collapsed = 50.0 * torch.eye(4)[[0] * 12]  # confident but one class only
    assert information_maximization(collapsed) == pytest.approx(0.0, abs=1e-6)


def test_snd_matches_a_direct_computation():
    logits = torch.randn(30, 5, generator=torch.Generator().manual_seed(0)) * 3
    p = np.exp(logits.numpy().astype(float))
    p /= p.sum(1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    sim = p @ p.T / 0.05
    expected = []
    for i in range(len(p)):
        row = np.delete(sim[i], i)
        q = np.exp(row - row.max())
        q /= q.sum()
        expected.append(-(q * np.log(q)).sum())
    assert soft_neighborhood_density(logits) == pytest.approx(np.mean(expected), rel=1e-9)
    with pytest.raises(ValueError):
        soft_neighborhood_density(torch.zeros(1, 3))


def test_dev_reweights_source_validation_loss_towards_the_target():
    rng = np.random.RandomState(0)
    xs = rng.randn(400, 1)
    xv = rng.randn(400, 1)
    loss = (xv[:, 0] > 0).astype(float)  # the model errs on the right half of the source
    same = dev_risk(xs, rng.randn(400, 1), xv, loss)
    shifted = dev_risk(xs, rng.randn(400, 1) + 1.5, xv, loss)
    # true target risks: P(x > 0) = 0.5 without shift, Phi(1.5) = 0.93 with it
    assert same == pytest.approx(0.5, abs=0.1)
    assert shifted > 0.8 and shifted > loss.mean() + 0.3


def test_validator_scores_feed_the_selection_rules():
    good = torch.tensor([[5.0, 0.0], [0.0, 5.0]] * 5)
    bad = torch.zeros(10, 2)
    records = [make_record(step, 0, [1], task="uda", env1_in_acc=acc,
                           **validator_scores(1, logits))
               for step, (logits, acc) in enumerate([(bad, 0.3), (good, 0.8)])]
    assert set(validator_scores(1, good)) == {"env1_uda_entropy", "env1_uda_marginal_entropy",
                                              "env1_uda_snd"}
    for rule in ("entropy", "im"):
        (s,) = select(records, rule)
        assert s.step == 1 and s.test_acc == 0.8
    rng = np.random.RandomState(1)
    keys = validator_scores(0, good, source_features=rng.randn(20, 2),
                            target_features=rng.randn(20, 2),
                            source_val_features=rng.randn(10, 2),
                            source_val_losses=rng.rand(10))
    assert "env0_uda_dev" in keys and math.isfinite(keys["env0_uda_dev"])
