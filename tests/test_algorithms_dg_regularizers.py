"""Mechanism tests for RSC, SD and SelfReg."""

from __future__ import annotations

import math

import pytest
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.dg_regularizers import within_class_permutation
from shiftbench.hparams_registry import DatasetInfo

IMG = DatasetInfo("Debug", (3, 16, 16), 3)
VEC = DatasetInfo("Debug", (6,), 3)


def _make(name, ds=VEC, **hp):
    torch.manual_seed(0)
    alg = create_algorithm(name, ds.input_shape, 3, 2, {"mlp_width": 16, "mlp_depth": 3, **hp}, dataset=ds,
                           setting="dg", total_steps=10)
    return alg


def _data(ds=VEC, n=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn((n, *ds.input_shape), generator=g), torch.randint(3, (n,), generator=g))
            for _ in range(2)]


def test_rsc_mutes_top_gradient_features_of_challenged_samples():
    alg = _make("RSC", rsc_f_drop_factor=0.25, rsc_b_drop_factor=0.5)
    z = torch.randn(20, 16)
    y = torch.randint(3, (20,))
    mask_f, mask_b, mask = alg.masks(z, y)
    # the gradient of the true-class logit wrt z is the classifier row of the true class
    g = alg.classifier.weight.detach()[y]
    muted = ~mask_f
    assert torch.equal(muted.sum(1), torch.full((20,), 4))  # top 25% of 16 dimensions
    for i in range(20):
        assert g[i][muted[i]].min() >= g[i][~muted[i]].max()
    challenged = ~mask_b[:, 0]
    assert challenged.sum() == 10  # half of the samples
    assert torch.equal(mask.bool(), mask_f | mask_b)
    assert (mask[~challenged] == 1).all()


def test_rsc_updates():
    alg = _make("RSC", ds=IMG)
    out = alg.update(_data(IMG))
    assert 0 < out["muted_fraction"] < 0.5 and math.isfinite(out["loss"])


@pytest.mark.parametrize("ds", [VEC, IMG], ids=["vector", "image"])
def test_sd_zero_equals_erm_and_penalty(ds):
    erm, sd = _make("ERM", ds), _make("SD", ds, sd_reg=0.0)
    mbs = _data(ds)
    with torch.no_grad():
        logits = sd.predict(torch.cat([x for x, _ in mbs]))
    out = sd.update(mbs)
    assert math.isclose(out["penalty"], (logits ** 2).mean().item(), rel_tol=1e-6)
    erm.update(mbs)
    for (k, p), (_, q) in zip(erm.network.named_parameters(), sd.network.named_parameters()):
        assert torch.equal(p, q), k


def test_sd_penalty_shrinks_logits():
    mbs = _data()
    norms = []
    for reg in (0.0, 1.0):
        alg = _make("SD", sd_reg=reg, lr=1e-2)
        for _ in range(30):
            alg.update(mbs)
        with torch.no_grad():
            norms.append(alg.predict(torch.cat([x for x, _ in mbs])).pow(2).mean().item())
    assert norms[1] < 0.5 * norms[0]


def test_selfreg_partners_share_the_class():
    y = torch.tensor([0, 1, 0, 2, 1, 1, 0, 2, 2, 2])
    for _ in range(5):
        perm = within_class_permutation(y)
        assert sorted(perm.tolist()) == list(range(10))
        assert torch.equal(y[perm], y)


@pytest.mark.parametrize("ds", [VEC, IMG], ids=["vector", "image"])
def test_selfreg_projector_is_fixed_as_domainbed_unless_asked(ds):
    alg = _make("SelfReg", ds)
    before = [p.detach().clone() for p in alg.projector.parameters()]
    stats = alg.projector[1].running_mean.clone()
    out = alg.update(_data(ds))
    assert all(math.isfinite(v) for v in out.values()) and out["l_ind"] > 0
    assert all(torch.equal(b, p) for b, p in zip(before, alg.projector.parameters()))
    assert not torch.equal(stats, alg.projector[1].running_mean)  # BN statistics still move
    alg = _make("SelfReg", ds, selfreg_train_projector=True)
    before = [p.detach().clone() for p in alg.projector.parameters()]
    alg.update(_data(ds))
    assert any(not torch.equal(b, p) for b, p in zip(before, alg.projector.parameters()))


def test_selfreg_partners_are_drawn_as_domainbeds_run_by_run():
    from shiftbench.algorithms.dg_regularizers import class_run_partners

    y = torch.tensor([1, 1, 2, 2, 2])  # first label != 0: DomainBed's empty leading run
    torch.manual_seed(0)
    a, b = class_run_partners(y)
    torch.manual_seed(0)
    want = []
    for start, end in ((0, 0), (0, 2), (2, 5)):
        want.append((torch.randperm(end - start) + start, torch.randperm(end - start) + start))
    assert torch.equal(a, torch.cat([w[0] for w in want]))
    assert torch.equal(b, torch.cat([w[1] for w in want]))
    assert torch.equal(y[a], y) and torch.equal(y[b], y)
