"""Mechanism and ERM-reduction tests for GroupDRO (dg_robust.py) and Mixup (dg_mixup.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dg_testing import assert_erm_update, batches, build

from shiftbench.algorithms.dg_mixup import random_domain_pairs


def test_groupdro_weights_move_toward_the_worst_domain():
    alg = build("GroupDRO", {"groupdro_eta": 0.5})
    mbs = batches(seed=2)
    with torch.no_grad():
        risks = torch.stack([F.cross_entropy(alg.predict(x), y) for x, y in mbs])
    alg.train_step(mbs)
    expected = torch.softmax(0.5 * risks, dim=0)  # uniform q times exp(eta R), renormalised
    torch.testing.assert_close(alg.q, expected, rtol=1e-10, atol=1e-12)
    assert alg.q.argmax() == risks.argmax() and alg.q.max() > 1 / 3
    for _ in range(3):  # each update raises the weight of the domain that is currently worst
        with torch.no_grad():
            worst = torch.stack([F.cross_entropy(alg.predict(x), y) for x, y in mbs]).argmax()
        q_prev = alg.q[worst].item()
        alg.train_step(mbs)
        assert alg.q[worst].item() > q_prev and abs(alg.q.sum().item() - 1.0) < 1e-12
    assert "q" in alg.state_dict()  # survives checkpoints


def test_groupdro_eta_zero_is_erm():
    assert_erm_update("GroupDRO", {"groupdro_eta": 0.0})


def test_mixup_with_lambda_one_is_erm(monkeypatch):
    from shiftbench.algorithms.dg_mixup import Mixup

    monkeypatch.setattr(Mixup, "sample_lambda", lambda self: 1.0)
    assert_erm_update("Mixup", {})


def test_mixup_labels_mix_with_the_same_lambda_as_the_inputs(monkeypatch):
    alg = build("Mixup", {}, domains=2)
    monkeypatch.setattr(type(alg), "sample_lambda", lambda self: 0.3)
    mbs = batches(domains=2, seed=5)
    seen = []
    original = alg.predict

    def recording_predict(x):
        seen.append(x.detach().clone())
        return original(x)

    alg.predict = recording_predict
    torch.manual_seed(7)
    order = torch.randperm(2).tolist()
    with torch.no_grad():
        expected = 0.0
        for k in range(2):
            (xi, yi), (xj, yj) = mbs[order[k]], mbs[order[(k + 1) % 2]]
            logits = original(0.3 * xi + 0.7 * xj)
            expected += 0.3 * F.cross_entropy(logits, yi) + 0.7 * F.cross_entropy(logits, yj)
    torch.manual_seed(7)
    out = alg.train_step(mbs)
    assert out["loss"] == pytest.approx(expected.item() / 2, rel=1e-12)
    first_i, first_j = mbs[order[0]][0], mbs[order[1]][0]
    torch.testing.assert_close(seen[0], 0.3 * first_i + 0.7 * first_j)


def test_random_domain_pairs_is_a_cycle_and_truncates():
    sizes = (4, 6, 5)
    mbs = [(torch.full((n, 2), float(d)), torch.full((n,), d)) for d, n in enumerate(sizes)]
    pairs = random_domain_pairs(mbs)
    firsts = sorted(int(a[1][0]) for a, _ in pairs)
    seconds = sorted(int(b[1][0]) for _, b in pairs)
    assert firsts == seconds == [0, 1, 2]
    for (xi, yi), (xj, yj) in pairs:
        di, dj = int(yi[0]), int(yj[0])
        assert di != dj
        assert len(xi) == len(xj) == len(yi) == len(yj) == min(sizes[di], sizes[dj])
