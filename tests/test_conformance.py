"""Registry-wide conformance (the analogue of scikit-learn's check_estimator).

Every registered algorithm, in every setting it declares, is constructed, updated and evaluated
on tiny data on the CPU, directly and through the trainer.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from shiftbench.algorithms import ALGORITHM_REGISTRY, create_algorithm, get_algorithm_class
from shiftbench.hparams_registry import DatasetInfo
from shiftbench.trainer import TrainArgs, train

CASES = [(name, setting) for name, cls in ALGORITHM_REGISTRY.items() for setting in cls.SETTINGS
         if "classification" in cls.TASK_TYPES]  # segmentation: test_algorithms_segmentation.py
SHAPES = {"vector": ((8,), 3), "image": ((3, 28, 28), 2)}


def _batches(shape, num_classes, n_domains, setting, bs=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_labeled = n_domains + (1 if setting in ("ssda", "sda") else 0)
    minibatches = [(torch.randn((bs, *shape), generator=g),
                    torch.randint(num_classes, (bs,), generator=g)) for _ in range(n_labeled)]
    unlabeled = ([torch.randn((bs, *shape), generator=g)] if setting in ("uda", "ssda") else None)
    return minibatches, unlabeled


def _build(name, setting, kind):
    torch.manual_seed(0)
    shape, num_classes = SHAPES[kind]
    ds = DatasetInfo("Debug", shape, num_classes)
    hparams = {"batch_size": 6}
    if kind == "vector":
        hparams.update(mlp_width=16, mlp_depth=3)
    alg = create_algorithm(name, shape, num_classes, 2, hparams, dataset=ds, setting=setting, total_steps=10)
    return alg, shape, num_classes


@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize("name,setting", CASES)
def test_update_predict_state(name, setting, kind):
    alg, shape, num_classes = _build(name, setting, kind)
    for step in range(2):
        minibatches, unlabeled = _batches(shape, num_classes, 2, setting, seed=step)
        values = alg.train_step(minibatches, unlabeled)
        assert isinstance(values, dict)
        for k, v in values.items():
            assert isinstance(k, str) and isinstance(v, float) and math.isfinite(v), (k, v)
    assert int(alg.num_updates) == 2
    x = torch.randn((5, *shape), generator=torch.Generator().manual_seed(9))
    alg.eval()
    before = copy.deepcopy(alg.state_dict())
    with torch.no_grad():
        logits = alg.predict(x)
        again = alg.predict(x)
    assert logits.shape == (5, num_classes)
    assert torch.equal(logits, again), "predict must be deterministic in eval mode"
    after = alg.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "predict changed the state"
    # the full state (model + optimizers) round-trips into a fresh instance
    fresh, _, _ = _build(name, setting, kind)
    fresh.load_full_state(copy.deepcopy(alg.full_state()))
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh.predict(x), logits)
    if setting == "tta":
        adapted = alg.adapt(x)
        assert adapted.shape == (5, num_classes)
        alg.reset_adaptation()


@pytest.mark.parametrize("name,setting", CASES)
def test_through_the_trainer(tmp_path, name, setting):
    cls = get_algorithm_class(name)
    assert cls.PAPER, f"{name} must cite its paper (PAPER)"
    assert cls.__doc__ and len(cls.__doc__.strip()) > 20, f"{name} needs a docstring"
    records = train(TrainArgs(dataset="DebugVector", algorithm=name, test_envs=[0], task=setting,
                              steps=3, checkpoint_freq=2, output_dir=str(tmp_path / "o"),
                              hparams='{"batch_size": 6, "mlp_width": 16}', target_shots=2),
                    log=lambda m: None, progress=False)
    assert [r["step"] for r in records] == [0, 2]
    last = records[-1]
    assert 0.0 <= last["env0_in_acc"] <= 1.0 and "env1_out_acc" in last
    if setting in ("uda", "ssda"):
        assert "env0_uda_acc" in last
        assert math.isfinite(last["env0_uda_dev"])  # what --selection dev reads
    if setting in ("ssda", "sda"):
        assert "env0_lab_acc" in last and "env0_lab_val_acc" in last
    assert last["args"]["task"] == setting
