"""Featurizers: shapes, the small-image CNN, and offline pretrained weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from shiftbench import networks
from shiftbench.errors import ShiftbenchError


def test_small_image_cnn():
    net = networks.Featurizer((2, 28, 28), {})
    assert isinstance(net, networks.MNIST_CNN) and net.n_outputs == 128
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 128, 128]
    assert all(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 8
               for m in (net.bn0, net.bn1, net.bn2, net.bn3))
    assert net(torch.randn(3, 2, 28, 28)).shape == (3, 128)
    assert net(torch.randn(3, 2, 32, 32)).shape == (3, 128)


def test_small_image_cnn_width():
    from shiftbench.algorithms import get_algorithm_class
    from shiftbench.hparams_registry import DatasetInfo, resolve_hparams

    net = networks.Featurizer((3, 16, 16), {"cnn_width": 32})
    assert [c.out_channels for c in net.modules() if isinstance(c, torch.nn.Conv2d)] == [
        32, 64, 64, 64]
    assert net.n_outputs == 64 and net(torch.randn(2, 3, 16, 16)).shape == (2, 64)
    with pytest.raises(ShiftbenchError, match="cnn_width must be a positive multiple of 8.*got 20"):
        networks.Featurizer((3, 16, 16), {"cnn_width": 20})
    # An hparam of small-image datasets only, DomainBed's 64 by default; algorithms follow it.
    small = DatasetInfo("DigitsDemo", (3, 16, 16), 10)
    assert resolve_hparams("ERM", small)["cnn_width"] == 64
    assert "cnn_width" not in resolve_hparams("ERM", DatasetInfo("PACS", (3, 224, 224), 7))
    assert "cnn_width" not in resolve_hparams("ERM", DatasetInfo("Vec", (8,), 2))
    hp = resolve_hparams("SagNet", small, 0, '{"cnn_width": 16}')
    model = get_algorithm_class("SagNet")((3, 16, 16), 10, 3, hp)
    assert model.predict(torch.rand(4, 3, 16, 16)).shape == (4, 10)
    assert model.featurizer.n_outputs == 32


def test_mlp_for_vectors():
    net = networks.Featurizer((8,), {"mlp_width": 16, "mlp_depth": 4, "mlp_dropout": 0.0})
    assert net(torch.randn(5, 8)).shape == (5, 16)
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 4


def test_missing_pretrained_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTBENCH_PRETRAINED_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ShiftbenchError, match=r"resnet18-f37072fd\.pth.*pretrained\": false"):
        networks.Featurizer((3, 64, 64), {"resnet18": True, "pretrained": True})


def test_pretrained_weights_from_a_local_file(tmp_path, monkeypatch):
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    monkeypatch.setenv("SHIFTBENCH_PRETRAINED_DIR", str(tmp_path))
    net = networks.Featurizer((3, 64, 64), {"resnet18": True, "pretrained": True,
                                            "freeze_bn": True, "resnet_dropout": 0.0})
    assert net.n_outputs == 512
    assert torch.equal(net.network.conv1.weight, reference.conv1.weight)
    net.train()
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_non_rgb_input_reuses_rgb_filters():
    net = networks.Featurizer((2, 64, 64), {"resnet18": True, "pretrained": False})
    w = net.network.conv1.weight
    assert w.shape[1] == 2


def test_batch_norm_featurizers():
    from torch import nn

    from shiftbench.networks import Featurizer

    hp = {"mlp_width": 8, "mlp_depth": 3, "mlp_dropout": 0.0}
    for shape in ((5,), (3, 28, 28)):
        net = Featurizer(shape, hp, norm="batch")
        assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        assert not any(isinstance(m, nn.GroupNorm) for m in net.modules())
        assert net(torch.randn(4, *shape)).shape == (4, net.n_outputs)
        plain = Featurizer(shape, hp)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    with pytest.raises(ShiftbenchError, match="layer"):
        Featurizer((5,), hp, norm="layer")


@pytest.mark.parametrize("shape,hp", [((3, 28, 28), {"network": "mnist_cnn"}),
                                      ((3, 32, 32), {"network": "wrn16_2"}),
                                      ((6,), {"mlp_width": 16, "mlp_depth": 4, "mlp_dropout": 0.0})])
def test_networks_expose_stages_that_compose_to_the_featurizer(shape, hp):
    from shiftbench.networks import Featurizer

    torch.manual_seed(0)
    f = Featurizer(shape, hp).eval()
    x = torch.randn(2, *shape)
    h = x
    for stage in f.stages():
        h = stage(h)
    assert torch.allclose(h, f(x), atol=1e-6) and len(f.stages()) >= 3


def test_wide_resnet_16_2_is_domainbeds_32x32_featurizer():
    from shiftbench.networks import Featurizer, WideResNet

    f = Featurizer((3, 32, 32), {"network": "wrn16_2"})
    assert isinstance(f, WideResNet) and f.n_outputs == 128
    assert sum(p.numel() for p in f.parameters()) == 691520  # WRN-16-2 without its classifier
    assert f.bn1.momentum == 0.9
    assert f(torch.randn(2, 3, 32, 32)).shape == (2, 128)
