"""Mechanism tests for MTL (domain embeddings) and Transfer (adversarial classifier in a ball)."""

from __future__ import annotations

import pytest
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.dg_domain_transfer import _flat
from shiftbench.hparams_registry import DatasetInfo

IMG = DatasetInfo("Debug", (3, 16, 16), 3)
VEC = DatasetInfo("Debug", (6,), 3)


def _make(name, ds=VEC, **hp):
    torch.manual_seed(0)
    alg = create_algorithm(name, ds.input_shape, 3, 2, {"mlp_width": 16, "mlp_depth": 3, **hp}, dataset=ds,
                           setting="dg", total_steps=10)
    return alg


def _data(ds=VEC, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((8, *ds.input_shape), generator=g) + i, torch.randint(3, (8,), generator=g))
            for i in range(2)]


def test_mtl_embeddings_follow_the_ema_rule():
    alg = _make("MTL", mtl_ema=0.5)
    mbs1, mbs2 = _data(seed=1), _data(seed=2)
    with torch.no_grad():
        m1 = [alg.featurizer(x).mean(0) for x, _ in mbs1]
    alg.update(mbs1)
    for e in range(2):
        assert torch.allclose(alg.embeddings[e], 0.5 * m1[e])
    with torch.no_grad():
        m2 = [alg.featurizer(x).mean(0) for x, _ in mbs2]
    alg.update(mbs2)
    for e in range(2):
        assert torch.allclose(alg.embeddings[e], 0.5 * m2[e] + 0.25 * m1[e], atol=1e-6)


def test_mtl_predict_uses_the_test_batch_marginal_without_noise():
    alg = _make("MTL")
    alg.update(_data())
    alg.eval()
    x = torch.randn(6, 6)
    emb_before = alg.embeddings.clone()
    with torch.no_grad():
        z = alg.featurizer(x)
        expected = alg.classifier(torch.cat([z, z.mean(0).expand(6, -1)], 1))
        assert torch.equal(alg.predict(x), expected)
        assert torch.equal(alg.predict(x), alg.predict(x))
        # a different batch marginal changes the prediction of the same example
        assert not torch.allclose(alg.predict(torch.cat([x[:1], x[1:] + 5]))[0], expected[0])
    assert torch.equal(alg.embeddings, emb_before)


@pytest.mark.parametrize("ds", [VEC, IMG], ids=["vector", "image"])
def test_transfer_t_lambda_zero_equals_erm(ds):
    mbs = _data(ds)
    erm, alg = _make("ERM", ds), _make("Transfer", ds, t_lambda=0.0)
    erm.update(mbs)
    alg.update(mbs)
    got = list(alg.featurizer.parameters()) + list(alg.classifier.parameters())
    for (k, p), q in zip(erm.network.named_parameters(), got):
        assert torch.equal(p, q), k


def test_transfer_adversary_stays_in_ball_and_raises_the_gap():
    alg = _make("Transfer", delta=0.5, lr_d=0.5, d_steps_per_g=5)
    mbs = _data()
    out = alg.update(mbs)
    dist = (_flat(alg.adv_classifier) - _flat(alg.classifier)).norm()
    assert dist <= 0.5 + 1e-5 and dist > 0.1
    with torch.no_grad():
        feats = [alg.featurizer(x) for x, _ in mbs]
        labels = [y for _, y in mbs]
        adv = alg.gap(feats, labels)
        alg.adv_classifier.load_state_dict(alg.classifier.state_dict())
        plain = alg.gap(feats, labels)
    assert adv > plain
    assert out["gap"] > 0 and out["gap_phi"] >= 0


def test_transfer_gap_step_moves_only_the_featurizer():
    alg = _make("Transfer", d_steps_per_g=0)
    alg.optimizer.step = lambda: None  # isolate the gap step
    before_c = [p.detach().clone() for p in alg.classifier.parameters()]
    before_f = [p.detach().clone() for p in alg.featurizer.parameters()]
    alg.update(_data())
    assert all(torch.equal(b, p) for b, p in zip(before_c, alg.classifier.parameters()))
    assert any(not torch.equal(b, p) for b, p in zip(before_f, alg.featurizer.parameters()))


def test_transfer_domainbed_protocol_shares_adam_and_draws_gda():
    from shiftbench.hparams_registry import default_hparams, random_hparams

    assert "gda" not in default_hparams("Transfer", VEC)
    assert default_hparams("Transfer", VEC, protocol="domainbed")["gda"] is False
    assert all(random_hparams("Transfer", VEC, s, protocol="domainbed")["gda"] is True
               for s in range(1, 6))
    alg = create_algorithm("Transfer", (6,), 3, 2, {"mlp_width": 16, "mlp_depth": 3}, dataset=VEC,
                           protocol="domainbed")
    assert alg.gap_optimizer is alg.optimizer and alg.hparams["transfer_domainbed_steps"]
    calls = []
    alg.featurizer.register_forward_hook(lambda m, i, o, c=calls: c.append(1))
    alg.update(_data())
    # ERM step (1) + gap step (2 domains) + every one of the 10 ascent steps (2 domains each)
    assert len(calls) == 1 + 2 + 10 * 2


def test_transfer_with_domainbeds_gda_never_trains_phi_or_w():
    """DomainBed's gda=True makes the ERM optimizer an SGD over w' alone (reproduced as is)."""
    alg = create_algorithm("Transfer", (6,), 3, 2, {"mlp_width": 16, "mlp_depth": 3, "gda": True},
                           dataset=VEC, protocol="domainbed")
    before = _flat(alg.featurizer).clone(), _flat(alg.classifier).clone()
    alg.update(_data())
    assert torch.equal(before[0], _flat(alg.featurizer))
    assert torch.equal(before[1], _flat(alg.classifier))


def test_mtl_domainbed_variant_sums_domains_and_reads_noise():
    """DomainBed's MTL: sum over domains, the embedding fed to the classifier replaced by
    N(0, 1) noise drawn from torch's generator (its in-place `.normal_()`)."""
    alg = _make("MTL", mtl_variant="domainbed", mtl_ema=0.5)
    data = _data()
    torch.manual_seed(5)
    out = alg.update(data)
    alg2 = _make("MTL", mtl_variant="domainbed", mtl_ema=0.5)
    torch.manual_seed(5)
    with torch.no_grad():
        expected = sum(torch.nn.functional.cross_entropy(
            alg2.classifier(torch.cat([z, torch.randn(z.shape)], 1)), y)
            for z, y in ((alg2.featurizer(x), y) for x, y in data))
    assert abs(out["loss"] - expected.item()) < 1e-5
    assert torch.allclose(alg.embeddings[0], 0.5 * alg2.featurizer(data[0][0]).mean(0), atol=1e-6)
