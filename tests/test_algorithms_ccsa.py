"""Mechanism tests for CCSA: the CSA loss, pair selection, alpha = 0 equals ERM."""

from __future__ import annotations

import pytest
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.ccsa import ccsa_pairs, csa_loss
from shiftbench.hparams_registry import DatasetInfo

VEC = DatasetInfo("Debug", (6,), 3)
IMG = DatasetInfo("Debug", (3, 16, 16), 3)


def test_csa_loss_formula_by_hand():
    e_a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    e_b = torch.tensor([[3.0, 4.0], [0.3, 0.4], [3.0, 4.0]])  # distances 5, 0.5, 5
    same = torch.tensor([1.0, 0.0, 0.0])
    # same pair: 5^2 = 25; different pairs: max(0, 1 - 0.5)^2 = 0.25 and max(0, 1 - 5)^2 = 0
    assert torch.isclose(csa_loss(e_a, e_b, same, 1.0), torch.tensor((25 + 0.25 + 0) / 3))
    # zero when same-class pairs coincide and different-class pairs are >= m apart
    assert csa_loss(e_a[:1], e_a[:1], torch.ones(1), 1.0) < 1e-7
    assert csa_loss(e_a[:1], e_b[:1], torch.zeros(1), 1.0) == 0
    # a larger margin never lowers the loss
    assert csa_loss(e_a, e_b, same, 2.0) >= csa_loss(e_a, e_b, same, 1.0)


def test_pair_selection_counts():
    torch.manual_seed(0)
    y_a = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    y_b = torch.tensor([0, 1, 2, 2, 1, 0])
    i, j, same = ccsa_pairs(y_a, y_b, 3)
    n_pos = int((y_a[:, None] == y_b[None, :]).sum())
    assert int(same.sum()) == n_pos  # all positives kept
    assert len(same) - n_pos == min(3 * n_pos, y_a.numel() * y_b.numel() - n_pos)
    assert torch.equal(same.bool(), y_a[i] == y_b[j])
    assert len({(a, b) for a, b in zip(i.tolist(), j.tolist())}) == len(i)  # no repeats
    i1, j1, s1 = ccsa_pairs(y_a, y_b, 1)
    assert len(s1) == 2 * n_pos
    # not enough negatives: all of them
    i2, j2, s2 = ccsa_pairs(torch.tensor([0, 0, 1]), torch.tensor([0, 0]), 3)
    assert int(s2.sum()) == 4 and len(s2) == 6


def _make(name, task, ds, **hp):
    torch.manual_seed(0)
    alg = create_algorithm(name, ds.input_shape, 3, 2, {"mlp_width": 16, "mlp_depth": 3, **hp}, dataset=ds,
                           setting=task, total_steps=10)
    return alg


def _batches(task, ds, n=8):
    g = torch.Generator().manual_seed(1)
    k = 3 if task == "sda" else 2
    return [(torch.randn((n if i < 2 else 3, *ds.input_shape), generator=g),
             torch.randint(3, (n if i < 2 else 3,), generator=g)) for i in range(k)]


@pytest.mark.parametrize("task", ["dg", "sda"])
@pytest.mark.parametrize("ds", [VEC, IMG], ids=["vector", "image"])
def test_alpha_zero_equals_erm(task, ds):
    mbs = _batches(task, ds)
    erm, alg = _make("ERM", task, ds), _make("CCSA", task, ds, ccsa_alpha=0.0)
    erm.update(mbs)
    alg.update(mbs)
    for (k, p), (k2, q) in zip(erm.network.named_parameters(), alg.network.named_parameters()):
        assert k == k2 and torch.equal(p, q), k


def test_pairs_are_cross_domain_in_each_setting():
    mbs = _batches("sda", VEC)
    alg = _make("CCSA", "sda", VEC)
    out = alg.update(mbs)
    y_src, y_tgt = torch.cat([mbs[0][1], mbs[1][1]]), mbs[2][1]
    n_pos = int((y_src[:, None] == y_tgt[None, :]).sum())
    assert out["positive_pairs"] == n_pos  # source x target only
    dg = _make("CCSA", "dg", VEC)
    out = dg.update(mbs[:2])
    assert out["positive_pairs"] == int((mbs[0][1][:, None] == mbs[1][1][None, :]).sum())


def test_csa_lowers_same_to_different_distance_ratio():
    """The mechanism metric: same-class / different-class cross-domain distance, vs alpha = 0."""
    mbs = _batches("sda", VEC)
    y_src, y_tgt = torch.cat([mbs[0][1], mbs[1][1]]), mbs[2][1]
    same = y_src[:, None] == y_tgt[None, :]
    ratios = []
    for alpha in (0.0, 0.5):
        alg = _make("CCSA", "sda", VEC, ccsa_alpha=alpha, lr=1e-2)
        for _ in range(20):
            alg.update(mbs)
        with torch.no_grad():
            d = torch.cdist(alg.featurizer(torch.cat([mbs[0][0], mbs[1][0]])), alg.featurizer(mbs[2][0]))
        ratios.append((d[same].mean() / d[~same].mean()).item())
    assert ratios[1] < 0.7 * ratios[0], ratios


def test_a_batch_without_same_class_pairs_keeps_its_negatives():
    i, j, same = ccsa_pairs(torch.tensor([0, 0, 1]), torch.tensor([2, 2, 3]), 3)
    assert len(same) == 3 and same.sum() == 0
    y_a, y_b = torch.tensor([0, 0, 1]), torch.tensor([2, 2, 3])
    assert bool((y_a[i] != y_b[j]).all())
    e = torch.zeros(3, 4)  # coincident embeddings: every negative pair violates the margin
    assert csa_loss(e[i], e[j], same, margin=1.0).item() > 0.9
