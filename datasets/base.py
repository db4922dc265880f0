"""The multi-domain dataset type and the dataset registry."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from shiftbench.datasets.availability import AVAILABILITY, register_availability  # noqa: F401
from shiftbench.datasets.lookup import environment_index
from shiftbench.errors import ShiftbenchError
from shiftbench.registry import Registry


def resolve_inside(root: str | os.PathLike, relative: str, listed_in: str | os.PathLike,
                   ) -> Path:
    """`root / relative` for a path read from a manifest or list file, refusing any that
    leaves `root`: absolute paths, `..` components, or symlinks that resolve outside it."""
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts or relative.startswith(("/", "\\")):
        raise ShiftbenchError(f"{listed_in}: path {relative!r} is not inside {root} (absolute "
                              "paths and '..' are not allowed in list files)")
    base = Path(root).resolve()
    path = (Path(root) / rel).resolve()
    if path != base and base not in path.parents:
        raise ShiftbenchError(f"{listed_in}: {relative!r} resolves to {path}, outside {base} "
                              "(a symlink out of the data directory is not allowed)")
    return path


class CollatedBatch(list):
    """A batch a dataset built whole in `__getitems__`: a list of (input, label) pairs (what
    `default_collate` expects) that also keeps the batch tensors `x` `[B, ...]` and `y` `[B]`,
    which `shiftbench.data.collate` returns as they are instead of stacking the pairs."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__(zip(x.unbind(0), y.tolist()))
        self.x, self.y = x, y


class TensorDomain(Dataset):
    """One environment held in memory as tensors.

    `x` is float (used as is) or uint8 (scaled to [0, 1] when a batch is taken); `y` holds
    integer class labels. The trainer samples batches with `batch(index)` by indexing, with no
    per-example `__getitem__` and collate.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, name: str = ""):
        if len(x) != len(y):
            raise ShiftbenchError(f"environment {name!r}: {len(x)} inputs but {len(y)} labels")
        self.x, self.y, self.name = x, y.long(), name

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """DomainBed's `TensorDataset.tensors`."""
        return self.x, self.y

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x, self.y[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch(torch.as_tensor([i]))
        return x[0], y[0]


class MultiDomainDataset:
    """A dataset made of named environments (domains) sharing one label space.

    Subclasses set the class attributes and fill `self.datasets` (one torch `Dataset` per
    environment, in `ENVIRONMENTS` order, each yielding `(x, y)`). Environments that fit in
    memory should be `TensorDomain`s, which the trainer batches by indexing.
    The constructor signature `(root, test_envs, hparams)` is DomainBed's.
    """

    ENVIRONMENTS: Sequence[str] = ()
    INPUT_SHAPE: tuple[int, ...] = ()
    NUM_CLASSES: int = 0
    N_STEPS: int = 5001
    CHECKPOINT_FREQ: int = 100
    N_WORKERS: int | None = None  # None: chosen from the machine for lazily decoded datasets
    # True: the constructor takes `image_cache=True` (the spec's `image_cache`: read a
    # preprocessed cache instead of decoding files).
    IMAGE_CACHE: bool = False
    CLASSES: Sequence[str] | None = None
    # Free-form metadata shown by `shiftbench list datasets`.
    SOURCE: str = ""

    def __init__(self, root: str | None, test_envs: Sequence[int], hparams: dict[str, Any]):
        self.root, self.test_envs, self.hparams = root, list(test_envs), hparams
        self.datasets: list[Dataset] = []
        self.input_shape = tuple(self.INPUT_SHAPE)
        self.num_classes = int(self.NUM_CLASSES)

    @property
    def environments(self) -> list[str]:
        return list(self.ENVIRONMENTS)

    def __getitem__(self, index: int) -> Dataset:
        return self.datasets[index]

    def __len__(self) -> int:
        return len(self.datasets)

    @classmethod
    def env_index(cls, env: int | str) -> int:
        """An environment's index from its index or its name."""
        return environment_index(cls.__name__, cls.ENVIRONMENTS, env)


def _dataset_modules() -> dict[str, str]:
    from shiftbench.catalog import dataset_index

    return {name: entry.module for name, entry in dataset_index().items()}


# Datasets outside this package that the index knows (the demo's) are imported on first lookup.
DATASETS: Registry[type[MultiDomainDataset]] = Registry("dataset", "shiftbench.datasets",
                                                        index=_dataset_modules)


def register_dataset(cls: type[MultiDomainDataset] | None = None, *, name: str | None = None):
    """Class decorator: `@register_dataset` or `@register_dataset(name="MyData")`."""

    def decorator(c: type[MultiDomainDataset]) -> type[MultiDomainDataset]:
        if not c.ENVIRONMENTS or not c.INPUT_SHAPE or not c.NUM_CLASSES:
            raise ShiftbenchError(
                f"dataset {c.__name__} must set ENVIRONMENTS, INPUT_SHAPE and NUM_CLASSES"
            )
        DATASETS.register(name or c.__name__)(c)
        return c

    return decorator(cls) if cls is not None else decorator


def get_dataset_class(name: str) -> type[MultiDomainDataset]:
    return DATASETS.lookup(name)


def list_datasets(pattern: str = "*") -> list[str]:
    DATASETS.load_index()
    DATASETS.load_entry_points()
    return DATASETS.names(pattern)


def num_environments(name: str) -> int:
    return len(get_dataset_class(name).ENVIRONMENTS)
