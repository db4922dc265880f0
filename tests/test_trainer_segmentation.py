"""Segmentation through the trainer: mIoU / per-class IoU records, task-type checks, no target
label reaching a segmentation `uda` algorithm, test-time adaptation on label maps."""

from __future__ import annotations

import pytest
import torch

from shiftbench.datasets.base import DATASETS
from shiftbench.datasets.segmentation import LabelMapDomain
from shiftbench.datasets.streets import CLASSES, ENVIRONMENTS, SyntheticStreets, generate
from shiftbench.errors import ShiftbenchError
from shiftbench.trainer import TrainArgs, train

HP = '{"seg_width": 4, "batch_size": 2}'


class TinyStreets(SyntheticStreets):
    """Ten images per SyntheticStreets domain; `PERMUTE` shuffles the target's label maps."""

    PERMUTE = False

    def __init__(self, root, test_envs, hparams):
        self.root, self.test_envs, self.hparams = root, list(test_envs), hparams
        self.input_shape, self.num_classes = tuple(self.INPUT_SHAPE), self.NUM_CLASSES
        self.datasets = []
        for i, env in enumerate(ENVIRONMENTS):
            x, y = (torch.from_numpy(a) for a in generate(env, 10, seed=5))
            if self.PERMUTE and i == 1:
                y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
            self.datasets.append(LabelMapDomain(x, y, env))


class TinyStreetsPermuted(TinyStreets):
    PERMUTE = True


@pytest.fixture(autouse=True)
def _tiny(monkeypatch):
    monkeypatch.setitem(DATASETS._items, "TinyStreets", TinyStreets)
    monkeypatch.setitem(DATASETS._items, "TinyStreetsPermuted", TinyStreetsPermuted)


def _train(tmp_path, algorithm, task="uda", dataset="TinyStreets", test_envs=(1,), **kw):
    args = TrainArgs(dataset=dataset, algorithm=algorithm, task=task, test_envs=list(test_envs),
                     steps=3, checkpoint_freq=2, hparams=HP, output_dir=str(tmp_path / dataset), **kw)
    return train(args, log=lambda m: None, progress=False)


def test_records_hold_miou_and_per_class_iou(tmp_path):
    records = _train(tmp_path, "SegDACS")
    last = records[-1]
    for key in ("env1_in_miou", "env1_out_miou", "env0_out_miou", "env1_uda_entropy",
                "env1_uda_marginal_entropy"):
        assert 0 <= last[key] <= (5 if "entropy" in key else 1), key
    per_class = [k for k in last if k.startswith("env1_in_iou_")]
    assert per_class and all(k[len("env1_in_iou_"):] in CLASSES for k in per_class)
    assert not any(k.endswith("_acc") for k in last)  # no classification accuracy is recorded


def test_task_type_mismatch_is_a_clear_error(tmp_path):
    # (ERM would resolve to SegSourceOnly, its segmentation form; DAN has none)
    with pytest.raises(ShiftbenchError, match="segmentation dataset; algorithms for it: .*SegDACS"):
        _train(tmp_path, "DAN")
    with pytest.raises(ShiftbenchError, match="trains on segmentation datasets"):
        train(TrainArgs(dataset="Digits", algorithm="SegSourceOnly", task="dg", test_envs=[0],
                        output_dir=str(tmp_path / "d")), log=lambda m: None, progress=False)


@pytest.mark.parametrize("algorithm", ["SegDACS", "SegCBST"])
def test_target_label_maps_never_reach_the_algorithm(tmp_path, algorithm):
    def state(dataset):
        _train(tmp_path, algorithm, dataset=dataset)
        return torch.load(tmp_path / dataset / "model.pkl", weights_only=True)["model_dict"]

    a, b = state("TinyStreets"), state("TinyStreetsPermuted")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_test_time_adaptation_scores_the_adapted_stream(tmp_path):
    last = _train(tmp_path, "SegTent", task="tta")[-1]
    assert 0 <= last["env1_in_miou"] <= 1 and last["tta_mode"] == "continual"


def test_a_method_name_resolves_to_its_segmentation_form(tmp_path):
    """`--algorithm DACS` on a segmentation dataset trains SegDACS (its SAME_METHOD_AS), records
    that name, and the same command again finds the finished trial instead of refusing it."""
    from shiftbench.algorithms.base import algorithm_for_task_type

    assert algorithm_for_task_type("DACS", "segmentation") == "SegDACS"
    assert algorithm_for_task_type("CBST", "segmentation") == "SegCBST"  # not SegCRSTLRENT
    assert algorithm_for_task_type("DACS", "classification") == "DACS"
    assert algorithm_for_task_type("MMD", "segmentation") == "MMD"  # no form: refused later
    first = _train(tmp_path, "DACS", source_envs=[0])
    assert first[-1]["args"]["algorithm"] == "SegDACS"
    assert _train(tmp_path, "DACS", source_envs=[0]) == first
    with pytest.raises(ShiftbenchError, match="segmentation dataset; algorithms for it: SegSourceOnly"):
        _train(tmp_path / "mmd", "MMD", task="dg")
