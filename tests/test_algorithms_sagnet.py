"""Mechanism tests for SagNet / SagNetPooled: the randomisations, the three updates, the losses."""

from __future__ import annotations

import math

import pytest
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.algorithms.sagnet import (
    EPS,
    adversarial_style_loss,
    content_randomize,
    style_randomize,
)
from shiftbench.hparams_registry import DatasetInfo

IMG = DatasetInfo("Debug", (3, 16, 16), 3)
VEC = DatasetInfo("Debug", (6,), 3)


def _stats(z):
    flat = z.flatten(2)
    mu, var = flat.mean(-1), flat.var(-1, unbiased=False)
    return mu, var, (flat - mu[..., None]) / (var[..., None] + EPS).sqrt()


def _maps():
    g = torch.Generator().manual_seed(0)
    scale = 1 + 4 * torch.rand((5, 4, 1, 1), generator=g, dtype=torch.float64)
    shift = 3 * torch.randn((5, 4, 1, 1), generator=g, dtype=torch.float64)
    return torch.randn((5, 4, 6, 6), generator=g, dtype=torch.float64) * scale + shift


def test_style_randomization_keeps_content_and_mixes_statistics():
    z, perm, alpha = _maps(), torch.tensor([3, 0, 4, 1, 2]), torch.tensor([0.1, 0.5, 0.9, 0.3, 0.0])
    out = style_randomize(z, perm, alpha.double())
    mu, var, content = _stats(z)
    mu_o, var_o, content_o = _stats(out)
    assert torch.allclose(content_o, content, atol=1e-6)  # content kept
    a = alpha.double()[:, None]
    assert torch.allclose(mu_o, a * mu + (1 - a) * mu[perm], atol=1e-9)
    assert torch.allclose(var_o, a * var + (1 - a) * var[perm], rtol=1e-4)
    assert not torch.allclose(mu_o, mu)  # style changed


def test_content_randomization_keeps_style_and_swaps_content():
    z, perm = _maps().requires_grad_(), torch.tensor([3, 0, 4, 1, 2])
    out = content_randomize(z, perm)
    mu, var, content = _stats(z.detach())
    mu_o, var_o, content_o = _stats(out.detach())
    assert torch.allclose(mu_o, mu, atol=1e-9) and torch.allclose(var_o, var, rtol=1e-4)
    assert torch.allclose(content_o, content[perm], atol=1e-6)
    assert not torch.allclose(content_o, content, atol=1e-2)
    out[0].sum().backward()  # no gradient reaches the sample whose content was borrowed
    assert z.grad[perm[0]].abs().sum() == 0 and z.grad[0].abs().sum() > 0


def test_adversarial_loss_is_minimised_by_uniform_predictions():
    uniform = adversarial_style_loss(torch.zeros(4, 5))
    assert math.isclose(uniform.item(), -math.log(0.2 + 1e-5), rel_tol=1e-6)
    assert adversarial_style_loss(torch.randn(4, 5) * 3) > uniform


def _make(name="SagNet", ds=IMG, **hp):
    torch.manual_seed(0)
    alg = create_algorithm(name, ds.input_shape, 3, 2, {"mlp_width": 16, "mlp_depth": 3, **hp}, dataset=ds,
                           setting="dg", total_steps=10)
    return alg


def _data(ds=IMG):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn((6, *ds.input_shape), generator=g), torch.randint(3, (6,), generator=g))
            for _ in range(2)]


def _snapshot(alg):
    return {k: v.detach().clone() for k, v in alg.named_parameters()}


@pytest.mark.parametrize("active", ["optimizer_style", "optimizer_adv", "optimizer"])
def test_each_step_moves_only_its_parameters(active):
    alg = _make()
    for name in ("optimizer_style", "optimizer_adv", "optimizer"):
        if name != active:
            getattr(alg, name).step = lambda: None
    before = _snapshot(alg)
    alg.update(_data())
    moved = {k for k, v in _snapshot(alg).items() if not torch.equal(before[k], v)}
    if active == "optimizer_style":
        assert moved and all(k.startswith("style_net.") for k in moved)
    elif active == "optimizer_adv":  # GroupNorm affines of the first two conv blocks
        assert moved and moved <= {f"featurizer.bn{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    else:
        assert moved and all(k.startswith(("featurizer.", "classifier.")) for k in moved)
        assert any(k.startswith("featurizer.conv1") for k in moved)


@pytest.mark.parametrize("ds", [IMG, VEC], ids=["image", "vector"])
def test_predict_has_no_randomisation_and_style_net_is_separate(ds):
    alg = _make(ds=ds)
    x = torch.randn((4, *ds.input_shape))
    alg.eval()
    assert torch.equal(alg.predict(x), alg.classifier(alg.featurizer(x)))
    style_ids = {id(p) for p in alg.style_net.parameters()}
    assert not style_ids & {id(p) for p in alg.featurizer.parameters()}
    out = alg.update(_data(ds))
    assert all(math.isfinite(v) for v in out.values())


def test_pooled_variant_runs_and_randomises_vectors():
    alg = _make("SagNetPooled", ds=VEC)
    before = _snapshot(alg)
    alg.update(_data(VEC))
    assert all(not torch.equal(before[k], v) for k, v in _snapshot(alg).items())
    z = torch.randn(5, 8, dtype=torch.float64) * 3 + 1
    out = style_randomize(z, torch.tensor([1, 2, 3, 4, 0]), torch.full((5,), 0.5, dtype=torch.float64))
    norm = (z - z.mean(1, keepdim=True)) / (z.var(1, keepdim=True, unbiased=False) + EPS).sqrt()
    norm_o = (out - out.mean(1, keepdim=True)) / (out.var(1, keepdim=True, unbiased=False) + EPS).sqrt()
    assert torch.allclose(norm, norm_o, atol=1e-5)


def test_sagnet_under_the_domainbed_protocol_is_domainbeds_pooled_form():
    from shiftbench.algorithms.base import create_algorithm
    from shiftbench.algorithms.sagnet import SagNetPooled
    from shiftbench.hparams_registry import DatasetInfo, random_hparams

    ds = DatasetInfo("RotatedMNIST", (1, 28, 28), 10)
    draws = [random_hparams("SagNet", ds, s, protocol="domainbed")["sag_w_adv"] for s in range(1, 40)]
    assert max(draws) > 1.0 and min(draws) >= 0.01 and max(draws) <= 10.0  # 10^U(-2, 1)
    assert max(random_hparams("SagNet", ds, s)["sag_w_adv"] for s in range(1, 40)) <= 1.0
    small = DatasetInfo("Debug", (3, 16, 16), 3)
    alg = create_algorithm("SagNet", small.input_shape, 3, 2, {}, dataset=small, protocol="domainbed")
    pooled = SagNetPooled(small.input_shape, 3, 2, alg.hparams | {"sag_form": "pooled"})
    assert type(alg).__name__ == "SagNet" and alg.pooled and not hasattr(alg, "style_net")
    assert alg.state_dict().keys() == pooled.state_dict().keys()  # DomainBed's form, by the switch
    assert alg.optimizers().keys() == pooled.optimizers().keys() == {"optimizer_f", "optimizer_c",
                                                                    "optimizer_s"}
    official = create_algorithm("SagNet", small.input_shape, 3, 2, {}, dataset=small)
    assert isinstance(official.classifier[0], torch.nn.Dropout) and official.classifier[0].p == 0.5
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in official.style_net)
