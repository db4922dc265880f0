"""timm backbones: selection by hparam/flag, training at 224 px, local weights, offline errors,
and DomainBed's torchvision ResNet kept as it was."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch

from shiftbench import networks
from shiftbench.backbones import TimmBackbone
from shiftbench.cli import main
from shiftbench.datasets.custom import register_arrays
from shiftbench.errors import ShiftbenchError

timm = pytest.importorskip("timm")


def _images(size: int, n_per_domain: int = 6):
    g = np.random.default_rng(0)
    n = 3 * n_per_domain
    x = g.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    y = np.arange(n) % 2
    x[y == 1, 0] //= 2  # a learnable cue
    return register_arrays(f"Img{size}_{uuid.uuid4().hex[:8]}", x, y,
                           np.repeat(["a", "b", "c"], n_per_domain), steps=2, checkpoint_freq=1)


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_vit_trains_on_224px_fixture(tmp_path):
    cls = _images(224, 5)
    out = tmp_path / "run"
    hparams = {"backbone": "vit_small_patch16_224", "pretrained": False, "batch_size": 2}
    assert main(["train", "--dataset", cls.__name__, "--output-dir", str(out),
                 "--skip-model-save", "--hparams", json.dumps(hparams)]) == 0
    records = _records(out)
    assert records[-1]["step"] == 1 and records[-1]["hparams"]["backbone"] == hparams["backbone"]
    net = networks.Featurizer((3, 224, 224), hparams)
    assert isinstance(net, TimmBackbone) and net.n_outputs == 384  # ViT-S/16 width


def test_local_weights_file_is_loaded(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("test_efficientnet", num_classes=0)
    path = tmp_path / "my_weights.pth"
    torch.save(reference.state_dict(), path)
    net = networks.Featurizer((3, 64, 64), {"backbone": "test_efficientnet", "weights": str(path),
                                            "pretrained": False})
    loaded = net.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    fresh = networks.Featurizer((3, 64, 64), {"backbone": "test_efficientnet",
                                              "pretrained": False})
    assert not torch.equal(fresh.network.conv_stem.weight, reference.conv_stem.weight)
    cls = _images(64, 4)  # the flag, end to end
    out = tmp_path / "run"
    assert main(["train", "--dataset", cls.__name__, "--output-dir", str(out),
                 "--skip-model-save", "--backbone", "test_efficientnet", "--weights", str(path),
                 "--hparams", '{"batch_size": 2}']) == 0
    hp = _records(out)[-1]["hparams"]
    assert hp["backbone"] == "test_efficientnet" and hp["weights"] == str(path)
    with pytest.raises(ShiftbenchError, match="no such file"):
        networks.Featurizer((3, 64, 64), {"backbone": "test_efficientnet",
                                          "weights": str(tmp_path / "missing.pth")})


def test_offline_pretrained_error_names_file_and_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ShiftbenchError) as info:
        networks.Featurizer((3, 64, 64), {"backbone": "test_efficientnet", "pretrained": True})
    msg = str(info.value)
    assert "https://huggingface.co/timm/test_efficientnet" in msg
    assert str(tmp_path / "hub" / "models--timm--test_efficientnet") in msg
    assert "--weights PATH" in msg and '"pretrained": false' in msg


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ShiftbenchError, match="close: vit_small_patch16_224"):
        networks.Featurizer((3, 224, 224), {"backbone": "vit_smal_patch16_224"})


def test_freeze_bn_and_dropout_on_timm_backbones():
    net = networks.Featurizer((3, 64, 64), {"backbone": "test_efficientnet", "pretrained": False,
                                            "freeze_bn": True, "resnet_dropout": 0.5})
    net.train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    net(torch.randn(4, 3, 64, 64))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))
    assert net.dropout.p == 0.5
    with pytest.raises(ShiftbenchError, match="has none"):  # BN-adapting methods need BN
        networks.Featurizer((3, 224, 224), {"backbone": "test_vit", "pretrained": False},
                            norm="batch")


def test_protocol_defaults():
    """shiftbench: DomainBed's paper network (torchvision ResNet-50); domainbed: DomainBed main's
    `resnet50_augmix` (timm resnet50.ram_in1k), with the same pooled 2048-d features."""
    import torchvision

    from shiftbench.hparams_registry import resolve_hparams

    hp = resolve_hparams("ERM", "PACS", protocol="shiftbench")
    assert hp["backbone"] == "resnet50" and hp["weights"] == ""
    net = networks.Featurizer((3, 224, 224), {**hp, "pretrained": False})
    assert type(net) is networks.ResNet and isinstance(net.network, torchvision.models.ResNet)
    assert net.n_outputs == 2048
    small = networks.Featurizer((3, 224, 224), {**hp, "pretrained": False, "resnet18": True})
    assert small.n_outputs == 512
    hp = resolve_hparams("ERM", "PACS", protocol="domainbed")
    net = networks.Featurizer((3, 224, 224), {**hp, "pretrained": False})
    assert isinstance(net, TimmBackbone) and net.model_name == "resnet50.ram_in1k"
    assert net.n_outputs == 2048


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "regnetx_002"])
def test_timm_stages_reproduce_forward_and_feed_mixstyle(name):
    from shiftbench.algorithms import create_algorithm
    from shiftbench.hparams_registry import default_hparams

    hp = {**default_hparams("MixStyle", "PACS"), "backbone": name, "pretrained": False,
          "batch_size": 2}
    net = networks.Featurizer((3, 64, 64), hp)
    stages = net.stages()
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    y = x
    for stage in stages:
        y = stage(y)
    assert torch.allclose(y, net(x), atol=1e-5)
    alg = create_algorithm("MixStyle", (3, 64, 64), 3, 2, hp)
    batches = [(torch.randn(2, 3, 64, 64), torch.tensor([0, 1])) for _ in range(2)]
    assert set(alg.train_step(batches)) >= {"loss"}


def test_vit_has_no_stages():
    net = networks.Featurizer((3, 224, 224), {"backbone": "test_vit", "pretrained": False})
    with pytest.raises(TypeError, match="MixStyle and SagNet need one"):
        net.stages()
