"""Deterministic splits of every environment, fixed by `trial_seed` alone.

For environment i (as DomainBed): shuffle its indices with `seed_hash(trial_seed, i)`; the first
`int(n * holdout_fraction)` are `out` (validation), the rest `in`. For a test environment of a
setting with an unlabeled target split (`Setting.unlabeled_target`), `in` is split again with the
same seed: the first `int(len(in) * uda_holdout_fraction)` become `uda` (handed to the algorithm
without labels). For a setting with a few-shot labeled target split (`Setting.few_shot_target`),
`target_shots` examples per class are then drawn from what remains of `in` into `lab` with
`seed_hash(trial_seed, i, "shots")`. Another `target_shots` examples per class, disjoint from
those, are drawn from what then remains with `seed_hash(trial_seed, i, "val_shots")` into
`lab_val`: the labeled target validation split of the few-label `target` selection rule (never
given to the algorithm). Test accuracy is always measured on what is left of `in`, so it never
includes an example the algorithm saw or that selection validated on.

That is the **inductive** mode (`da_mode="inductive"`, the default of a plain trial). The
**transductive** mode (`transductive=True`; the default of the DA task suites and presets) is how
DA papers run: the algorithm adapts on the whole target domain and is tested on those same
images. For each test environment `uda` is then every index not in `lab`/`lab_val`, and `in` *is*
that same tensor (so `env{t}_in_acc`, what selection reports, equals `env{t}_uda_acc`); `out` is
drawn exactly as in the inductive mode (the same examples at a trial seed) and stays the labeled
target validation split of the oracle rule, although the algorithm saw those images unlabeled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from shiftbench.errors import ShiftbenchError
from shiftbench.seeds import seed_hash
from shiftbench.setting import DG, Setting, get_setting

# The unlabeled target split, named as in DomainBed's record keys (`env{i}_uda_acc`).
UNLABELED_SPLIT = "uda"


@dataclass
class EnvSplits:
    """Index tensors into one environment."""

    in_: torch.Tensor
    out: torch.Tensor
    uda: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    lab: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    lab_val: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def named(self) -> dict[str, torch.Tensor]:
        return {"in": self.in_, "out": self.out, UNLABELED_SPLIT: self.uda, "lab": self.lab,
                "lab_val": self.lab_val}


def _shuffled_split(keys: np.ndarray, n_first: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    keys = keys.copy()
    np.random.RandomState(seed).shuffle(keys)
    return keys[:n_first], keys[n_first:]


def few_shot_indices(labels: torch.Tensor, pool: np.ndarray, shots: int, num_classes: int,
                     seed: int) -> np.ndarray:
    """`shots` indices of each class from `pool` (all of a class if it has fewer)."""
    rs = np.random.RandomState(seed)
    pool_labels = labels[torch.as_tensor(pool, dtype=torch.long)].numpy() if len(pool) else pool
    chosen = []
    for c in range(num_classes):
        members = pool[pool_labels == c]
        if len(members) == 0:
            continue
        chosen.append(rs.choice(members, size=min(shots, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def make_splits(
    env_labels: Sequence[torch.Tensor],
    test_envs: Sequence[int],
    trial_seed: int,
    holdout_fraction: float,
    task: str | Setting = DG,
    uda_holdout_fraction: float = 0.0,
    target_shots: int = 0,
    num_classes: int = 0,
    transductive: bool = False,
) -> list[EnvSplits]:
    """The splits of every environment; identical for every algorithm given the same seeds."""
    setting = get_setting(task)
    if not 0.0 <= holdout_fraction < 1.0:
        raise ShiftbenchError(f"--holdout-fraction must lie in [0, 1), got {holdout_fraction}")
    if not 0.0 <= uda_holdout_fraction < 1.0:
        raise ShiftbenchError(
            f"--uda-holdout-fraction must lie in [0, 1), got {uda_holdout_fraction}")
    splits = []
    for i, labels in enumerate(env_labels):
        n = len(labels)
        keys = np.arange(n, dtype=np.int64)
        seed = seed_hash(trial_seed, i)
        out, in_ = _shuffled_split(keys, int(n * holdout_fraction), seed)
        uda = lab = lab_val = np.zeros(0, dtype=np.int64)
        if i in test_envs and setting.unlabeled_target:
            uda, in_ = _shuffled_split(in_, int(len(in_) * uda_holdout_fraction), seed)
            if len(uda) == 0:
                raise ShiftbenchError(
                    f"--task {setting} needs unlabeled target examples, but environment {i} gets "
                    f"none with --uda-holdout-fraction {uda_holdout_fraction}; use a value in (0, 1)"
                )
        if i in test_envs and setting.few_shot_target:
            if target_shots < 1:
                raise ShiftbenchError(f"--task {setting} needs --target-shots >= 1, got {target_shots}")
            lab = few_shot_indices(labels, in_, target_shots, num_classes,
                                   seed_hash(trial_seed, i, "shots"))
            in_ = np.setdiff1d(in_, lab)
            lab_val = few_shot_indices(labels, in_, target_shots, num_classes,
                                       seed_hash(trial_seed, i, "val_shots"))
            in_ = np.setdiff1d(in_, lab_val)
        if i in test_envs and transductive:
            if not setting.unlabeled_target:
                raise ShiftbenchError(f"the transductive mode needs an unlabeled target split; "
                                      f"--task {setting} has none")
            whole = np.setdiff1d(keys, np.concatenate([lab, lab_val]))
            t = torch.as_tensor(whole, dtype=torch.long)
            splits.append(EnvSplits(t, torch.as_tensor(out, dtype=torch.long), t,
                                    *(torch.as_tensor(a, dtype=torch.long) for a in (lab, lab_val))))
            continue
        splits.append(EnvSplits(*(torch.as_tensor(a, dtype=torch.long)
                                  for a in (in_, out, uda, lab, lab_val))))
    return splits


def apply_fixed_splits(splits: list[EnvSplits], environments: Sequence, test_envs: Sequence[int],
                       task: str | Setting = DG, transductive: bool = False) -> list[EnvSplits]:
    """Replace the seeded splits of a test environment that brings its own (an environment's
    `fixed_splits(unlabeled_target)` returning {"in", "out", "uda"} index arrays, e.g.
    Cityscapes' official train / val under `target_split=official`); those have their own test
    split, so the transductive mode refuses them."""
    setting = get_setting(task)
    for i in test_envs:
        own = getattr(environments[i], "fixed_splits", None)
        fixed = own(setting.unlabeled_target) if own is not None else None
        if fixed is None:
            continue
        if transductive:
            raise ShiftbenchError(f"environment {i} brings its own test split (e.g. target_split="
                                  "official): use --da-mode inductive")
        if setting.few_shot_target:
            raise ShiftbenchError(f"environment {i} brings its own splits (e.g. target_split="
                                  f"official), which --task {setting} (labeled target shots) cannot use")
        splits[i] = EnvSplits(*(torch.as_tensor(fixed[k], dtype=torch.long) for k in ("in", "out", "uda")))
    return splits
