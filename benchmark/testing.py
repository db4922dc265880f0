"""Conformance checks for plug-in authors (as scikit-learn's `check_estimator` and
`parametrize_with_checks`).

    from shiftbench.testing import check_algorithm, check_dataset, parametrize_with_checks

    check_algorithm(MyAlgorithm)   # every setting it declares, vector and image inputs, CPU
    check_dataset(MyDataset, data_dir="/data")

    @parametrize_with_checks([MyAlgorithm, MyDataset])   # one pytest item per named check
    def test_conformance(check):
        check()

`algorithm_checks(cls)` / `dataset_checks(cls)` list the named checks (`Check.id`, e.g.
`MyAlgorithm:predict[uda-vector]`).

`check_algorithm` constructs the algorithm for each setting it declares (`SETTINGS`), runs two
updates on tiny random data shaped as that setting's batches, and checks that the losses are
finite floats, `predict` is deterministic and side-effect free in eval mode, the full state
(model + optimizers) round-trips into a fresh instance, `adapt` works where the setting adapts
at test time; then it trains a 3-step trial through the trainer on `DebugVector` and checks the
records. `check_dataset` builds the dataset and checks its environments, shapes, labels and
names, then trains ERM on it for 2 steps. Both raise `AssertionError` naming the algorithm or
dataset, the setting and what failed. Classification algorithms and datasets are checked here;
other task types bring their own checks.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from shiftbench.setting import get_setting

SHAPES = {"vector": ((8,), 3), "image": ((3, 28, 28), 2)}


@contextlib.contextmanager
def _registered(registry, obj: type) -> Iterator[str]:
    """`obj`'s name in `registry`, registering it for the duration when it is not registered."""
    name = next((n for n, o in registry.items() if o is obj), None)
    if name is not None:
        yield name
        return
    name = obj.__name__
    if name in registry:
        raise AssertionError(f"another {registry.kind} is registered as {name!r}")
    with registry.scratch():
        registry.register(name)(obj)
        yield name


def _batches(shape, num_classes: int, n_domains: int, setting, bs: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_labeled = n_domains + (1 if setting.few_shot_target else 0)
    minibatches = [(torch.randn((bs, *shape), generator=g),
                    torch.randint(num_classes, (bs,), generator=g)) for _ in range(n_labeled)]
    unlabeled = [torch.randn((bs, *shape), generator=g)] if setting.unlabeled_target else None
    return minibatches, unlabeled


def _build(cls: type, setting, kind: str):
    from shiftbench.hparams import DatasetInfo

    torch.manual_seed(0)
    shape, num_classes = SHAPES[kind]
    ds = DatasetInfo("Debug", shape, num_classes)
    hparams = {k: hp.default for k, hp in cls.hparam_space(ds).items()}
    hparams["batch_size"] = 6
    if kind == "vector":
        hparams.update(mlp_width=16, mlp_depth=3)
    return cls(shape, num_classes, 2, hparams, setting=setting, total_steps=10), shape, num_classes


def _updated(cls: type, setting, kind: str):
    """A fresh instance after two updates on tiny data, with the values the updates returned."""
    alg, shape, num_classes = _build(cls, setting, kind)
    values = [alg.train_step(*_batches(shape, num_classes, 2, setting, seed=step))
              for step in range(2)]
    return alg, values, shape, num_classes


@functools.lru_cache(maxsize=1)  # the checks of one (class, setting, kind) share one run
def _updated_once(cls: type, setting_name: str, kind: str):
    return _updated(cls, get_setting(setting_name), kind)


def _trained(cls: type, setting, kind: str):
    """A copy of the shared instance after two updates (each check may change its copy)."""
    alg, _, shape, num_classes = _updated_once(cls, setting.name, kind)
    return copy.deepcopy(alg), shape, num_classes


def _probe(shape) -> torch.Tensor:
    return torch.randn((5, *shape), generator=torch.Generator().manual_seed(9))


def check_update(cls: type, setting: str, kind: str = "vector") -> None:
    """Two updates return dicts of finite float losses and are counted."""
    setting = get_setting(setting)
    where = f"{cls.__name__} ({setting.name}, {kind} inputs)"
    alg, updates, _, _ = _updated(cls, setting, kind)
    for values in updates:
        assert isinstance(values, dict), f"{where}: update must return a dict, got {values!r}"
        for k, v in values.items():
            assert isinstance(k, str) and isinstance(v, float) and math.isfinite(v), \
                f"{where}: update returned {k!r}={v!r}; values must be finite floats"
    assert int(alg.num_updates) == 2, f"{where}: train_step must count its updates"


def check_predict(cls: type, setting: str, kind: str = "vector") -> None:
    """`predict` in eval mode: the right shape, deterministic, and leaves the state alone."""
    setting = get_setting(setting)
    where = f"{cls.__name__} ({setting.name}, {kind} inputs)"
    alg, shape, num_classes = _trained(cls, setting, kind)
    x = _probe(shape)
    alg.eval()
    before = copy.deepcopy(alg.state_dict())
    with torch.no_grad():
        logits = alg.predict(x)
        again = alg.predict(x)
    assert logits.shape == (5, num_classes), \
        f"{where}: predict returned shape {tuple(logits.shape)}, expected (5, {num_classes})"
    assert torch.equal(logits, again), f"{where}: predict must be deterministic in eval mode"
    after = alg.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), f"{where}: predict changed the state"


def check_full_state(cls: type, setting: str, kind: str = "vector") -> None:
    """`full_state()` (model + optimizers) loaded into a fresh instance predicts the same."""
    setting = get_setting(setting)
    where = f"{cls.__name__} ({setting.name}, {kind} inputs)"
    alg, shape, _ = _trained(cls, setting, kind)
    x = _probe(shape)
    alg.eval()
    with torch.no_grad():
        logits = alg.predict(x)
    fresh, _, _ = _build(cls, setting, kind)
    fresh.load_full_state(copy.deepcopy(alg.full_state()))
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh.predict(x), logits), \
            f"{where}: full_state() does not round-trip into a fresh instance"


def check_adapt(cls: type, setting: str, kind: str = "vector") -> None:
    """Where the setting adapts at test time: `adapt` gives logits, `reset_adaptation` works."""
    setting = get_setting(setting)
    where = f"{cls.__name__} ({setting.name}, {kind} inputs)"
    alg, shape, num_classes = _trained(cls, setting, kind)
    alg.eval()
    adapted = alg.adapt(_probe(shape))
    assert adapted.shape == (5, num_classes), f"{where}: adapt returned {tuple(adapted.shape)}"
    alg.reset_adaptation()


def check_update_predict_state(cls: type, setting: str, kind: str = "vector") -> None:
    """`check_update`, `check_predict`, `check_full_state` and (where it applies) `check_adapt`."""
    for check in (check_update, check_predict, check_full_state):
        check(cls, setting, kind)
    if get_setting(setting).adapts_at_test:
        check_adapt(cls, setting, kind)


def check_documented(cls: type) -> None:
    """The algorithm cites its paper (`PAPER`) and has a docstring."""
    assert cls.PAPER, f"{cls.__name__} must cite its paper (PAPER)"
    assert cls.__doc__ and len(cls.__doc__.strip()) > 20, f"{cls.__name__} needs a docstring"


def check_through_trainer(cls: type, setting: str, output_dir: str | None = None) -> list[dict]:
    """A 3-step trial of the algorithm on DebugVector through the trainer; returns its records."""
    from shiftbench.algorithms import ALGORITHM_REGISTRY
    from shiftbench.trainer import TrainArgs, train

    setting = get_setting(setting)
    where = f"{cls.__name__} ({setting.name}, through the trainer)"
    check_documented(cls)
    with _registered(ALGORITHM_REGISTRY, cls) as name, _directory(output_dir) as out:
        records = train(TrainArgs(dataset="DebugVector", algorithm=name, test_envs=[0],
                                  task=setting.name, steps=3, checkpoint_freq=2, output_dir=out,
                                  hparams='{"batch_size": 6, "mlp_width": 16}', target_shots=2),
                        log=lambda m: None, progress=False)
    start = records[0].get("adaptation_start")  # a phased method also checkpoints its source end
    expected = sorted({0, 2} | ({start - 1} if start and 0 < start <= 3 else set()))
    assert [r["step"] for r in records] == expected, f"{where}: records at steps {records}"
    last = records[-1]
    assert 0.0 <= last["env0_in_acc"] <= 1.0 and "env1_out_acc" in last, f"{where}: {last}"
    if setting.unlabeled_target:
        assert "env0_uda_acc" in last, f"{where}: the unlabeled target split was not scored"
        assert math.isfinite(last["env0_uda_dev"]), f"{where}: no DEV risk recorded"
    if setting.few_shot_target:
        assert "env0_lab_acc" in last and "env0_lab_val_acc" in last, f"{where}: {sorted(last)}"
    assert last["args"]["task"] == setting.name
    return records


@contextlib.contextmanager
def _directory(path: str | None) -> Iterator[str]:
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="shiftbench-check-") as tmp:
        yield f"{tmp}/trial"


@dataclass(frozen=True)
class Check:
    """One named conformance check of one class; call it to run it (raises `AssertionError`)."""

    subject: str  # the class's name
    name: str  # e.g. "predict[uda-vector]"
    run: Callable[[], Any]

    def __call__(self) -> Any:
        return self.run()

    @property
    def id(self) -> str:
        return f"{self.subject}:{self.name}"


def algorithm_checks(cls: type, settings: Sequence[str] | None = None,
                     kinds: Sequence[str] = tuple(SHAPES), through_trainer: bool = True
                     ) -> list[Check]:
    """The named checks of an algorithm class, in each of `settings` (default: all it declares)
    and for each input kind; classification algorithms (other task types bring their own)."""
    name = cls.__name__
    checks = [Check(name, "documented", functools.partial(check_documented, cls))]
    for setting in settings or cls.SETTINGS:
        if setting not in cls.SETTINGS:
            raise ValueError(f"{name} does not declare setting {setting!r}")
        steps = [check_update, check_predict, check_full_state]
        if get_setting(setting).adapts_at_test:
            steps.append(check_adapt)
        for kind in kinds:
            checks += [Check(name, f"{f.__name__.removeprefix('check_')}[{setting}-{kind}]",
                             functools.partial(f, cls, setting, kind)) for f in steps]
        if through_trainer:
            checks.append(Check(name, f"through_trainer[{setting}]",
                                functools.partial(check_through_trainer, cls, setting)))
    return checks


def check_algorithm(cls: type, settings: Sequence[str] | None = None,
                    kinds: Sequence[str] = tuple(SHAPES), through_trainer: bool = True) -> None:
    """Every check of `algorithm_checks`, one after the other."""
    for check in algorithm_checks(cls, settings, kinds, through_trainer):
        check()


def check_dataset_declaration(cls: type) -> None:
    """What the class declares: environments, classes, input shape, step counts, env_index."""
    from shiftbench.datasets.base import MultiDomainDataset

    name = cls.__name__
    assert issubclass(cls, MultiDomainDataset), f"{name} must subclass MultiDomainDataset"
    assert len(cls.ENVIRONMENTS) >= 2, f"{name} needs at least 2 ENVIRONMENTS"
    assert len(set(cls.ENVIRONMENTS)) == len(cls.ENVIRONMENTS), f"{name}: duplicate environment names"
    assert cls.NUM_CLASSES >= 2 and cls.INPUT_SHAPE, f"{name}: set NUM_CLASSES and INPUT_SHAPE"
    assert cls.N_STEPS >= 1 and cls.CHECKPOINT_FREQ >= 1, f"{name}: N_STEPS, CHECKPOINT_FREQ >= 1"
    for i, env in enumerate(cls.ENVIRONMENTS):
        assert cls.env_index(env) == i and cls.env_index(i) == i, f"{name}: env_index({env!r})"


def check_dataset_environments(cls: type, data_dir: str | None = None,
                               hparams: dict[str, Any] | None = None) -> None:
    """The built dataset has its declared environments, none empty, with inputs of
    `INPUT_SHAPE` (float) and labels in range."""
    name = cls.__name__
    dataset = cls(data_dir, [0], dict(hparams or {"data_augmentation": False}))
    assert len(dataset.datasets) == len(cls.ENVIRONMENTS), \
        f"{name} built {len(dataset.datasets)} environments, declares {len(cls.ENVIRONMENTS)}"
    for env_name, env in zip(cls.ENVIRONMENTS, dataset.datasets):
        assert len(env) > 0, f"{name}: environment {env_name!r} is empty"
        for i in sorted({0, len(env) - 1}):
            x, y = env[i]
            assert tuple(x.shape) == tuple(cls.INPUT_SHAPE), \
                f"{name}/{env_name}[{i}]: input shape {tuple(x.shape)} != INPUT_SHAPE {cls.INPUT_SHAPE}"
            assert x.dtype.is_floating_point, f"{name}/{env_name}[{i}]: inputs must be float"
            assert 0 <= int(y) < cls.NUM_CLASSES, f"{name}/{env_name}[{i}]: label {int(y)} out of range"


def check_dataset_through_trainer(cls: type, data_dir: str | None = None) -> None:
    """ERM trains on the dataset for 2 steps through the trainer."""
    from shiftbench.datasets import DATASETS
    from shiftbench.trainer import TrainArgs, train

    name = cls.__name__
    with _registered(DATASETS, cls) as key, _directory(None) as out:
        records = train(TrainArgs(dataset=key, algorithm="ERM", test_envs=[0], steps=2,
                                  checkpoint_freq=1, output_dir=out, data_dir=data_dir,
                                  hparams='{"batch_size": 4}'),
                        log=lambda m: None, progress=False)
    assert [r["step"] for r in records] == [0, 1], f"{name}: records at {records}"
    assert 0.0 <= records[-1]["env0_in_acc"] <= 1.0, f"{name}: {records[-1]}"


def dataset_checks(cls: type, data_dir: str | None = None, hparams: dict[str, Any] | None = None,
                   through_trainer: bool = True) -> list[Check]:
    """The named checks of a dataset class."""
    name = cls.__name__
    checks = [Check(name, "declaration", functools.partial(check_dataset_declaration, cls)),
              Check(name, "environments", functools.partial(check_dataset_environments, cls,
                                                            data_dir, hparams))]
    if through_trainer:
        checks.append(Check(name, "through_trainer",
                            functools.partial(check_dataset_through_trainer, cls, data_dir)))
    return checks


def check_dataset(cls: type, data_dir: str | None = None, hparams: dict[str, Any] | None = None,
                  through_trainer: bool = True) -> None:
    """Every check of `dataset_checks`, one after the other."""
    for check in dataset_checks(cls, data_dir, hparams, through_trainer):
        check()


def checks_of(classes: Iterable[type], through_trainer: bool = True) -> list[Check]:
    """The checks of several algorithm and dataset classes."""
    from shiftbench.algorithms.base import AlgorithmBase

    out: list[Check] = []
    for cls in classes:
        out += (algorithm_checks(cls, through_trainer=through_trainer)
                if issubclass(cls, AlgorithmBase) else dataset_checks(cls, through_trainer=through_trainer))
    return out


def parametrize_with_checks(classes: Iterable[type], through_trainer: bool = True):
    """A pytest decorator with one test item per named check of each class (as scikit-learn's
    `parametrize_with_checks`)::

        from shiftbench.testing import parametrize_with_checks

        @parametrize_with_checks([MyAlgorithm, MyDataset])
        def test_shiftbench_conformance(check):
            check()
    """
    import pytest

    checks = checks_of(classes, through_trainer)
    return pytest.mark.parametrize("check", checks, ids=[c.id for c in checks])
