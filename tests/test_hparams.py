"""Hyperparameter defaults, random search and overrides."""

from __future__ import annotations

import pytest

from shiftbench.errors import ShiftbenchError
from shiftbench.hparams_registry import (
    Choice,
    DatasetInfo,
    default_hparams,
    random_hparams,
    resolve_hparams,
)


def test_domainbed_defaults_for_small_and_large_images():
    small = default_hparams("ERM", "RotatedMNIST")
    assert small["lr"] == 1e-3 and small["batch_size"] == 64 and small["weight_decay"] == 0
    large = default_hparams("ERM", DatasetInfo("PACS", (3, 224, 224), 7))
    assert large["lr"] == 5e-5 and large["batch_size"] == 32 and "resnet18" in large
    vec = default_hparams("ERM", "DebugVector")
    assert vec["mlp_width"] == 256 and "resnet18" not in vec


def test_random_draws_are_per_seed_and_in_range():
    a = random_hparams("ERM", "RotatedMNIST", 1)
    assert a == random_hparams("ERM", "RotatedMNIST", 1)
    assert a != random_hparams("ERM", "RotatedMNIST", 2)
    for seed in range(1, 30):
        hp = random_hparams("ERM", "RotatedMNIST", seed)
        assert 10**-4.5 <= hp["lr"] <= 10**-2.5
        assert 8 <= hp["batch_size"] <= 512


def test_hparams_seed_gives_the_same_configuration_in_every_trial():
    """DomainBed issue #69: configuration k must not depend on the trial seed."""
    from shiftbench.trainer import TrainArgs, build_trial

    cfg = [build_trial(TrainArgs(dataset="DebugVector", hparams_seed=3, trial_seed=t,
                                 test_envs=[0])).hparams for t in range(3)]
    assert cfg[0] == cfg[1] == cfg[2]


def test_overrides_are_validated():
    hp = resolve_hparams("ERM", "DebugVector", 0, '{"lr": 1, "batch_size": 5}')
    assert hp["lr"] == 1.0 and isinstance(hp["lr"], float) and hp["batch_size"] == 5
    with pytest.raises(ShiftbenchError, match="must be finite"):
        resolve_hparams("ERM", "DebugVector", 0, {"lr": float("nan")})
    with pytest.raises(ShiftbenchError, match="type bool"):
        resolve_hparams("ERM", "DebugVector", 0, {"nonlinear_classifier": 1})


def test_protocol_is_validated_and_names_the_choices():
    for call in (lambda: default_hparams("ERM", "RotatedMNIST", protocol="dombed"),
                 lambda: random_hparams("ERM", "RotatedMNIST", 1, protocol="dombed"),
                 lambda: resolve_hparams("ERM", "RotatedMNIST", protocol="dombed")):
        with pytest.raises(ShiftbenchError, match="protocol 'dombed'.*domainbed, shiftbench"):
            call()
    with pytest.raises(ShiftbenchError, match="MME is not in DomainBed"):
        default_hparams("MME", "RotatedMNIST", protocol="domainbed")


def test_domainbed_protocol_follows_domainbeds_registry_rules():
    """DomainBed's SMALL_IMAGES are the 28x28 datasets; 32x32 inputs get the large-image lr and
    batch size and WideResNet-16-2."""
    cifar = DatasetInfo("C32", (3, 32, 32), 10)
    assert default_hparams("ERM", cifar)["network"] == "mnist_cnn"
    db = default_hparams("ERM", cifar, protocol="domainbed")
    assert db["network"] == "wrn16_2" and db["lr"] == 5e-5 and db["batch_size"] == 32
    assert default_hparams("ERM", "RotatedMNIST", protocol="domainbed")["network"] == "mnist_cnn"
    domainnet = DatasetInfo("DomainNet", (3, 224, 224), 345)
    for seed in range(1, 20):
        assert 8 <= random_hparams("ERM", domainnet, seed, protocol="domainbed")["batch_size"] < 32
        wd = random_hparams("ERM", "RotatedMNIST", seed, protocol="domainbed")["weight_decay"]
        assert wd == 0.0


def test_choices_are_validated_by_the_registry():
    from shiftbench.hparams_registry import HParam, validate_overrides

    space = {"mode": HParam("a", None, choices=("a", "b"), variant=True)}
    assert validate_overrides(space, {"mode": "b"}) == {"mode": "b"}
    with pytest.raises(ShiftbenchError, match="value for hparam 'mode'.*a, b"):
        validate_overrides(space, {"mode": "c"})
    with pytest.raises(ShiftbenchError, match="must be fixed"):
        HParam("a", Choice(["a", "b"]), variant=True)
    with pytest.raises(ShiftbenchError, match="not among its choices"):
        HParam("z", None, choices=("a", "b"))


def test_domainbed_protocol_uses_domainbed_mains_resnet50_augmix_backbone():
    pacs = DatasetInfo("PACS", (3, 224, 224), 7)
    assert default_hparams("ERM", pacs)["backbone"] == "resnet50"
    db = default_hparams("ERM", pacs, protocol="domainbed")
    assert db["backbone"] == "resnet50.ram_in1k" and db["freeze_bn"] is False
    assert db["resnet_dropout"] == 0.0
