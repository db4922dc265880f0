"""Batches for training and evaluation.

Training batches are a pure function of `(seed, role, environment, step)`: the indices of step t
are drawn with replacement (as DomainBed's InfiniteDataLoader) from a generator seeded by
`seed_hash(seed, role, env, t)`, and so are the random augmentation draws of that batch (torch's
generator is seeded with `seed_hash(seed, role, env, t, "augment")` while the batch is loaded,
in whichever loader worker loads it). A resumed trial therefore draws exactly the batches an
uninterrupted one would, with no loader state to save, and two algorithms given the same `seed`
(a sweep's paired seeding) train on identical batches, augmentation included, whatever else
they draw from torch's generator. In-memory environments (`TensorDomain`) are batched by
indexing tensors; other datasets go through a DataLoader whose workers decode the same indices.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from shiftbench.datasets.base import CollatedBatch, TensorDomain
from shiftbench.seeds import seed_hash


def default_num_workers() -> int:
    """Loader workers for lazily decoded datasets: the cores we have, less one, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def step_indices(n: int, batch_size: int, seed: int, role: str, env: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed_hash(seed, role, env, step))
    return torch.randint(n, (batch_size,), generator=g)


def collate(batch):
    """`default_collate`, except that a batch the dataset already collated
    (`CollatedBatch`, from `__getitems__`) is returned as its tensors, without a copy."""
    if isinstance(batch, CollatedBatch):
        return batch.x, batch.y
    return default_collate(batch)


class StepIndices(list):
    """A batch's dataset indices, carrying the seed of its augmentation draws."""

    def __init__(self, indices: list[int], seed: int):
        super().__init__(indices)
        self.seed = seed


class SeededBatches(Dataset):
    """`dataset` loaded a batch at a time with torch's generator seeded by the batch's
    `StepIndices.seed` (and restored afterwards), so its random augmentations depend on the
    batch alone."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return self.dataset[i]

    def __getitems__(self, indices: list[int]):
        with torch.random.fork_rng(devices=[]):
            seed = getattr(indices, "seed", None)
            if seed is not None:
                torch.manual_seed(seed)
            getitems = getattr(self.dataset, "__getitems__", None)
            if getitems is not None:
                return getitems(list(indices))
            return [self.dataset[i] for i in indices]


class _StepSampler(Sampler):
    """Yields the index list of each step from `start_step` on (for DataLoader workers)."""

    def __init__(self, split: torch.Tensor, batch_size: int, seed: int, role: str, env: int,
                 start_step: int):
        self.split, self.batch_size = split, batch_size
        self.seed, self.role, self.env, self.start_step = seed, role, env, start_step

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            pick = step_indices(len(self.split), self.batch_size, self.seed, self.role, self.env,
                                step)
            yield StepIndices(self.split[pick].tolist(),
                              seed_hash(self.seed, self.role, self.env, step, "augment"))
            step += 1


class BatchStream:
    """An endless stream of training batches from one split of one environment."""

    def __init__(self, dataset: Dataset, split: torch.Tensor, batch_size: int, seed: int,
                 role: str, env: int, start_step: int, num_workers: int | None = None):
        if len(split) == 0:
            raise ValueError(f"empty {role} split for environment {env}")
        self.dataset, self.split, self.batch_size = dataset, split, batch_size
        self.seed, self.role, self.env = seed, role, env
        self.step = start_step
        self._iter = None
        if not isinstance(dataset, TensorDomain):
            workers = default_num_workers() if num_workers is None else num_workers
            loader = DataLoader(SeededBatches(dataset), batch_sampler=_StepSampler(
                split, batch_size, seed, role, env, start_step), num_workers=workers,
                collate_fn=collate, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
            self._iter = iter(loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iter is not None:
            batch = next(self._iter)
        else:
            pick = step_indices(len(self.split), self.batch_size, self.seed, self.role, self.env,
                                self.step)
            batch = self.dataset.batch(self.split[pick])
        self.step += 1
        return batch


def eval_batches(dataset: Dataset, split: torch.Tensor, batch_size: int,
                 num_workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over a split, in order."""
    if isinstance(dataset, TensorDomain):
        for start in range(0, len(split), batch_size):
            yield dataset.batch(split[start:start + batch_size])
        return
    workers = default_num_workers() if num_workers is None else num_workers
    yield from DataLoader(Subset(dataset, split.tolist()), batch_size=batch_size, shuffle=False,
                          num_workers=workers, collate_fn=collate)


def accuracy_counts(logits: torch.Tensor, y: torch.Tensor) -> int:
    """Number of correct predictions (a single logit column is a binary classifier)."""
    if logits.shape[1] == 1:
        pred = (logits[:, 0] > 0).long()
    else:
        pred = logits.argmax(1)
    return int((pred == y).sum())
