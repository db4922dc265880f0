"""Building a trial: check and canonicalise its spec once, then load the data, make the splits and
construct the algorithm for its `Setting`.

`normalize(spec)` returns a new, canonical `TrialSpec` (setting and environment names resolved to
our spellings and indices, every value checked, the hparams resolvable) and marks it; calling it
again on its result returns it unchanged, so each trial is validated exactly once wherever it
enters (the CLI, the Python API, a sweep worker reading its job file).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from shiftbench.algorithms import AlgorithmBase, create_algorithm, get_algorithm_class, list_algorithms
from shiftbench.algorithms.base import algorithm_for_task_type
from shiftbench.datasets import get_dataset_class
from shiftbench.datasets.base import MultiDomainDataset
from shiftbench.datasets.segmentation import task_type_of
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import DatasetInfo, check_protocol
from shiftbench.hparams_registry import resolve_hparams
from shiftbench.seeds import seed_everything
from shiftbench.setting import Setting, check_supports, get_setting
from shiftbench.splits import EnvSplits, apply_fixed_splits, make_splits
from shiftbench.trial_record import INDUCTIVE, TrialSpec, validate_options

_NORMALIZED = "_shiftbench_normalized"
_HPARAMS = "_shiftbench_hparams"  # the hparams `normalize` resolved (not a field: not identity)


def is_normalized(spec: TrialSpec) -> bool:
    return getattr(spec, _NORMALIZED, False)


def normalize(spec: TrialSpec) -> TrialSpec:
    """The checked, canonical copy of `spec`; raises a clear `ShiftbenchError` on bad input.
    Everything that can be checked without loading data is checked here."""
    if is_normalized(spec):
        return spec
    validate_options(spec)
    dataset_cls = get_dataset_class(spec.dataset)
    task_type = task_type_of(dataset_cls)
    spec = dataclasses.replace(spec, algorithm=algorithm_for_task_type(spec.algorithm, task_type))
    algorithm_cls = get_algorithm_class(spec.algorithm)
    setting = get_setting(spec.task)
    protocol = check_protocol(spec.protocol)
    if setting.name not in algorithm_cls.SETTINGS:
        check_supports(spec.algorithm, algorithm_cls.SETTINGS, setting.name,
                       list_algorithms(setting=setting.name))
    if task_type not in algorithm_cls.TASK_TYPES:
        raise ShiftbenchError(
            f"algorithm {spec.algorithm} trains on {'/'.join(algorithm_cls.TASK_TYPES)} datasets, "
            f"but {spec.dataset} is a {task_type} dataset; algorithms for it: "
            + ", ".join(list_algorithms(setting=setting.name, task_type=task_type)))
    if not spec.test_envs:
        raise ShiftbenchError("--test-envs needs at least one environment")
    test_envs = sorted({dataset_cls.env_index(e) for e in spec.test_envs})
    n_envs = len(dataset_cls.ENVIRONMENTS)
    if len(test_envs) >= n_envs:
        raise ShiftbenchError(
            f"--test-envs {test_envs} leaves no training environment; {spec.dataset} has {n_envs}")
    source_envs = None
    if spec.source_envs is not None:
        if not spec.source_envs:
            raise ShiftbenchError("--source-envs needs at least one environment (or none given: "
                                  "every environment not in --test-envs)")
        source_envs = sorted({dataset_cls.env_index(e) for e in spec.source_envs})
        both = sorted(set(source_envs) & set(test_envs))
        if both:
            names = ", ".join(f"{i} ({dataset_cls.ENVIRONMENTS[i]})" for i in both)
            raise ShiftbenchError(f"environment(s) {names} given in both --source-envs "
                                  f"{source_envs} and --test-envs {test_envs}")
    da_mode = spec.da_mode
    if spec.transductive:
        if not setting.unlabeled_target:
            raise ShiftbenchError(
                f"--da-mode transductive needs a setting with an unlabeled target split (uda, "
                f"ssda); --task {setting.name} has none: use --da-mode inductive")
        if spec.uda_holdout_fraction is not None:
            raise ShiftbenchError(
                f"--uda-holdout-fraction {spec.uda_holdout_fraction} applies to --da-mode "
                "inductive; --da-mode transductive adapts on the whole target domain")
    elif setting.unlabeled_target:
        da_mode = INDUCTIVE  # records say which mode produced them
    if spec.image_cache and not dataset_cls.IMAGE_CACHE:
        from shiftbench.datasets.folder import IMAGE_FOLDER_DATASETS

        raise ShiftbenchError(f"--image-cache: dataset {spec.dataset} has no preprocessed image "
                              "cache; datasets with one: "
                              + ", ".join(c.__name__ for c in IMAGE_FOLDER_DATASETS))
    hparams = resolve_hparams(spec.algorithm, dataset_info(spec.dataset, dataset_cls),
                              spec.hparams_seed, spec.hparams, protocol=protocol)
    weights_sha256 = None
    if hparams.get("weights"):  # a file that does not fit is refused here, before any write
        from shiftbench.networks import check_weights
        from shiftbench.trial_record import file_sha256

        check_weights(hparams, tuple(dataset_cls.INPUT_SHAPE))
        weights_sha256 = file_sha256(hparams["weights"])
    out = dataclasses.replace(spec, task=setting.name, protocol=protocol, test_envs=test_envs,
                              source_envs=source_envs, weights_sha256=weights_sha256,
                              da_mode=da_mode)
    setattr(out, _NORMALIZED, True)
    setattr(out, _HPARAMS, hparams)  # resolved once: build_trial uses them
    return out


def dataset_info(name: str, dataset_cls: type) -> DatasetInfo:
    return DatasetInfo(name, tuple(dataset_cls.INPUT_SHAPE), int(dataset_cls.NUM_CLASSES))


@dataclass
class Trial:
    """Everything built for one run, before the training loop."""

    args: TrialSpec
    dataset: MultiDomainDataset
    splits: list[EnvSplits]
    hparams: dict[str, Any]
    algorithm: AlgorithmBase
    device: torch.device
    n_steps: int
    checkpoint_freq: int
    train_envs: list[int]  # the source environments, the only ones trained on
    unused_envs: list[int]  # neither source nor test: evaluated and recorded, never trained on

    @property
    def setting(self) -> Setting:
        return self.args.setting


def pick_device(requested: str | None) -> torch.device:
    """`--device` checked against this machine (default: $SHIFTBENCH_DEVICE, which the
    multi_gpu launcher sets to `cuda` so a job that gets no GPU fails instead of running on the
    CPU; else CUDA when available, else the CPU)."""
    label = "--device"
    if not requested and os.environ.get("SHIFTBENCH_DEVICE", "").strip():
        requested = os.environ["SHIFTBENCH_DEVICE"].strip()
        label = "SHIFTBENCH_DEVICE (set by the launcher that asked for a GPU)"
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ShiftbenchError(f"{label} {requested!r} is not a device; valid: cpu, cuda, cuda:N "
                              "(or mps, xpu where this torch supports them)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else \
                "no usable GPU (no driver, or CUDA_VISIBLE_DEVICES hides them)"
            raise ShiftbenchError(
                f"{label} {requested}: CUDA is not available ({why}; CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use --device cpu, or leave "
                "--device out to pick one")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ShiftbenchError(f"{label} {requested}: only {torch.cuda.device_count()} CUDA "
                                  "device(s) are visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ShiftbenchError(f"--device {requested}: MPS is not available on this machine")
    return device


def autocast(trial: Trial):
    """Mixed precision for every forward pass of the trial: bfloat16 autocast with
    `--precision bf16` (as AMP on GPUs; parameters and optimizer state stay float32)."""
    return torch.autocast(trial.device.type, dtype=torch.bfloat16,
                          enabled=trial.args.precision == "bf16")


def build_trial(spec: TrialSpec) -> Trial:
    """Data, splits, hparams and the algorithm of a trial (nothing trained yet)."""
    spec = normalize(spec)
    dataset_cls = get_dataset_class(spec.dataset)
    hparams = dict(getattr(spec, _HPARAMS))
    seed_everything(spec.seed)
    options = {"image_cache": True} if spec.image_cache else {}
    dataset = dataset_cls(spec.data_dir, spec.test_envs, hparams, **options)
    check_dataset(dataset, spec.dataset)
    env_labels = [_labels_of(env) for env in dataset.datasets]
    splits = make_splits(env_labels, spec.test_envs, spec.trial_seed, spec.holdout_fraction,
                         spec.setting, spec.resolved_uda_fraction(), spec.target_shots,
                         dataset.num_classes, transductive=spec.transductive)
    splits = apply_fixed_splits(splits, dataset.datasets, spec.test_envs, spec.setting,
                                transductive=spec.transductive)
    train_envs = (list(spec.source_envs) if spec.source_envs is not None
                  else [i for i in range(len(dataset)) if i not in spec.test_envs])
    unused_envs = [i for i in range(len(dataset)) if i not in train_envs and i not in spec.test_envs]
    for i in train_envs:
        if len(splits[i].in_) == 0:
            raise ShiftbenchError(f"training environment {i} ({dataset.environments[i]}) is empty")
    device = pick_device(spec.device)
    n_steps = spec.steps or dataset.N_STEPS
    algorithm = create_algorithm(
        spec.algorithm, dataset.input_shape, dataset.num_classes, len(train_envs), hparams,
        dataset_info(spec.dataset, dataset_cls), spec.protocol, setting=spec.setting,
        total_steps=n_steps).to(device)
    return Trial(spec, dataset, splits, hparams, algorithm, device, n_steps,
                 spec.checkpoint_freq or dataset.CHECKPOINT_FREQ, train_envs, unused_envs)


def _labels_of(env) -> torch.Tensor:
    if hasattr(env, "y"):
        return env.y
    if hasattr(env, "targets"):
        return torch.as_tensor(env.targets, dtype=torch.long)
    return torch.as_tensor([int(env[i][1]) for i in range(len(env))], dtype=torch.long)


def check_dataset(dataset: MultiDomainDataset, name: str) -> None:
    """The dataset built the environments it declares, none empty."""
    if len(dataset.datasets) != len(dataset.ENVIRONMENTS):
        raise ShiftbenchError(
            f"dataset {name} built {len(dataset.datasets)} environments but declares "
            f"{len(dataset.ENVIRONMENTS)} ({', '.join(dataset.ENVIRONMENTS)})")
    for env, env_name in zip(dataset.datasets, dataset.ENVIRONMENTS):
        if len(env) == 0:
            raise ShiftbenchError(f"environment {env_name!r} of dataset {name} is empty")
