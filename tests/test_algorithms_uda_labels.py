"""No target label reaches any `uda` algorithm: training through the trainer on a dataset whose
target labels are permuted gives bit-identical parameters (methods.md section 22.2)."""

from __future__ import annotations

import pytest
import torch

from shiftbench.algorithms import list_algorithms
from shiftbench.datasets.base import DATASETS, TensorDomain
from shiftbench.datasets.debug import DebugVector
from shiftbench.trainer import TrainArgs, train

TARGET = 0


class DebugVectorPermutedTarget(DebugVector):
    """DebugVector with the target environment's labels permuted (inputs unchanged)."""

    SOURCE = "synthetic (tests): DebugVector with permuted target labels"

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        env = self.datasets[TARGET]
        perm = torch.randperm(len(env.y), generator=torch.Generator().manual_seed(5))
        shuffled = env.y[perm]
        assert not torch.equal(shuffled, env.y)
        self.datasets[TARGET] = TensorDomain(env.x, shuffled, name=env.name)


@pytest.fixture(autouse=True)
def _permuted_dataset(monkeypatch):
    """Registered for the duration of each test only (the registry is process-wide)."""
    monkeypatch.setitem(DATASETS._items, "DebugVectorPermutedTarget", DebugVectorPermutedTarget)


def _trained_state(tmp_path, dataset: str, algorithm: str, task: str = "uda"):
    out = tmp_path / dataset
    records = train(TrainArgs(dataset=dataset, algorithm=algorithm, test_envs=[TARGET], task=task,
                              steps=4, checkpoint_freq=10, output_dir=str(out), target_shots=2,
                              hparams='{"batch_size": 8, "mlp_width": 16}'),
                    log=lambda m: None, progress=False)
    if task == "uda":
        assert records[-1]["label_sources"] == ["source_labeled", "target_unlabeled"]
    saved = torch.load(out / "model.pkl", map_location="cpu", weights_only=True)
    return saved["model_dict"]


@pytest.mark.parametrize("algorithm", list_algorithms(setting="uda", task_type="classification"))
def test_permuted_target_labels_leave_parameters_identical(tmp_path, algorithm):
    plain = _trained_state(tmp_path, "DebugVector", algorithm)
    permuted = _trained_state(tmp_path, "DebugVectorPermutedTarget", algorithm)
    assert plain.keys() == permuted.keys()
    for key in plain:
        assert torch.equal(plain[key], permuted[key]), f"{algorithm}: {key} depends on target labels"


def test_control_labels_do_reach_ssda_algorithms(tmp_path):
    """The comparison can fail: in ssda the few labeled target examples carry their labels."""
    plain = _trained_state(tmp_path, "DebugVector", "ERM", task="ssda")
    permuted = _trained_state(tmp_path, "DebugVectorPermutedTarget", "ERM", task="ssda")
    assert any(not torch.equal(plain[k], permuted[k]) for k in plain)
