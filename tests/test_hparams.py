"""Hyperparameter defaults, random search and overrides."""

from __future__ import annotations

import pytest

from shiftbench.errors import ShiftbenchError
from shiftbench.hparams_registry import (
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
