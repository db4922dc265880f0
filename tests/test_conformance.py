"""Registry-wide conformance through the public checks (`shiftbench.testing`, the analogue of
scikit-learn's check_estimator): every registered algorithm, in every setting it declares, is
constructed, updated and evaluated on tiny data on the CPU, directly and through the trainer;
the built-in offline datasets pass `check_dataset`; and the checks do catch broken plug-ins."""

from __future__ import annotations

import pytest
import torch

from shiftbench.algorithms import ALGORITHM_REGISTRY, get_algorithm_class
from shiftbench.algorithms.erm import ERM
from shiftbench.datasets import get_dataset_class
from shiftbench.datasets.debug import DebugVector
from shiftbench.testing import (
    SHAPES,
    algorithm_checks,
    check_dataset,
    check_through_trainer,
    check_update_predict_state,
    parametrize_with_checks,
)

CASES = [(name, setting) for name, cls in ALGORITHM_REGISTRY.items() for setting in cls.SETTINGS
         if "classification" in cls.TASK_TYPES]  # segmentation: test_algorithms_segmentation.py


@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize("name,setting", CASES)
def test_update_predict_state(name, setting, kind):
    check_update_predict_state(get_algorithm_class(name), setting, kind)


@pytest.mark.parametrize("name,setting", CASES)
def test_through_the_trainer(tmp_path, name, setting):
    check_through_trainer(get_algorithm_class(name), setting, str(tmp_path / "o"))


@pytest.mark.parametrize("name", ["DebugVector", "Debug28"])
def test_builtin_datasets(name):
    check_dataset(get_dataset_class(name))


class NondeterministicPredict(ERM):
    """ERM whose predict draws noise: check_algorithm must refuse it."""

    PAPER = "none (a broken plug-in for the conformance tests)"

    def predict(self, x):
        return super().predict(x) + torch.randn(len(x), self.num_classes)


class CorruptFullState(ERM):
    """ERM whose full state holds zeroed weights: a resumed trial would not continue it."""

    PAPER = "none (a broken plug-in for the conformance tests)"

    def full_state(self):
        state = super().full_state()
        state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
        return state


class LabelOutOfRange(DebugVector):
    """DebugVector with one label past NUM_CLASSES: check_dataset must refuse it."""

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        env = self.datasets[1]
        env.y = env.y.clone()
        env.y[-1] = self.NUM_CLASSES


def test_checks_catch_broken_plugins():
    with pytest.raises(AssertionError, match=r"NondeterministicPredict \(dg, vector inputs\): "
                                             "predict must be deterministic"):
        check_update_predict_state(NondeterministicPredict, "dg")
    with pytest.raises(AssertionError, match="does not round-trip"):
        check_update_predict_state(CorruptFullState, "uda", "image")
    with pytest.raises(AssertionError, match=r"LabelOutOfRange/1\[59\]: label 3 out of range"):
        check_dataset(LabelOutOfRange, through_trainer=False)
    assert "NondeterministicPredict" not in ALGORITHM_REGISTRY


@parametrize_with_checks([ERM, DebugVector])
def test_named_checks_as_a_user_suite_runs_them(check):
    check()


def test_named_checks_fail_one_by_one():
    checks = {c.name: c for c in algorithm_checks(NondeterministicPredict, settings=["dg"],
                                                  kinds=["vector"], through_trainer=False)}
    assert list(checks) == ["documented", "update[dg-vector]", "predict[dg-vector]",
                            "full_state[dg-vector]"]
    checks["update[dg-vector]"]()
    checks["documented"]()
    with pytest.raises(AssertionError, match="predict must be deterministic"):
        checks["predict[dg-vector]"]()
    assert checks["predict[dg-vector]"].id == "NondeterministicPredict:predict[dg-vector]"
