"""Mechanism tests for ARM-CML (algorithms/dg_adaptive.py)."""

from __future__ import annotations

import pytest
import torch
from dg_testing import batches, build

from shiftbench.algorithms import create_algorithm
from shiftbench.hparams_registry import default_hparams


def _image_arm(train_context=True, bs=4):
    torch.manual_seed(0)
    alg = create_algorithm("ARM", (2, 8, 8), 3, 2, {"batch_size": bs, "cnn_width": 8,
                                                     "arm_train_context": train_context},
                           setting="dg", total_steps=5).double()
    return alg


def _image_batches(bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 2, 8, 8, generator=g, dtype=torch.float64), torch.randint(3, (bs,), generator=g))
            for _ in range(2)]


def test_prediction_sees_the_mean_context_of_its_support_set():
    alg = _image_arm().eval()
    x = torch.randn(8, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = alg.predict(x)
        ctx = alg.context_net(x)
        expected = torch.cat([alg.network(torch.cat([x[i:i + 4], ctx[i:i + 4].mean(0, keepdim=True)
                                                      .expand(4, -1, -1, -1)], 1)) for i in (0, 4)])
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
        # changing one example of the second support set changes the second set's predictions only
        x2 = x.clone()
        x2[6] += 3.0
        out2 = alg.predict(x2)
        assert torch.equal(out2[:4], out[:4])
        assert not torch.allclose(out2[4:6], out[4:6])
        # a batch that is not a multiple of the support size is one support set
        odd = alg.predict(x[:5])
        assert not torch.allclose(odd[:4], out[:4])


def test_the_context_network_learns_in_the_paper_variant_only():
    for train_context in (True, False):
        alg = _image_arm(train_context)
        before = [p.detach().clone() for p in alg.context_net.parameters()]
        for step in range(2):
            alg.train_step(_image_batches(seed=step))
        moved = any(not torch.equal(a, b) for a, b in zip(before, alg.context_net.parameters()))
        assert moved == train_context
        # either way its BatchNorm statistics follow the training batches (DomainBed's too)
        assert alg.context_net[1].running_mean.abs().sum() > 0


def test_training_uses_each_domain_batch_as_a_support_set():
    alg = _image_arm()
    mbs = _image_batches()
    x = torch.cat([b for b, _ in mbs])
    y = torch.cat([t for _, t in mbs])
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(alg.predict(x), y).item()
    torch.manual_seed(1)
    fresh = _image_arm()
    assert fresh.train_step(mbs)["loss"] == pytest.approx(expected, rel=1e-10)


def test_vector_inputs_get_a_context_channel():
    alg = build("ARM", {"batch_size": 8})
    assert alg.featurizer.net[0].in_features == 10  # 5 features + 5 context
    out = alg.train_step(batches())
    assert out["loss"] > 0


def test_protocol_values():
    assert default_hparams("ARM", "PACS")["batch_size"] == 32
    assert default_hparams("ARM", "PACS", protocol="domainbed")["batch_size"] == 8
    assert default_hparams("ARM", "ColoredMNIST", protocol="domainbed")["batch_size"] == 64
    assert default_hparams("ARM", "PACS")["arm_train_context"] is True
    assert default_hparams("ARM", "PACS", protocol="domainbed")["arm_train_context"] is False
