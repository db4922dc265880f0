"""Small synthetic datasets for tests: learnable, deterministic, instant to build."""

from __future__ import annotations

import torch

from shiftbench.datasets.base import MultiDomainDataset, TensorDomain, register_dataset


def _gaussian_domains(shape: tuple[int, ...], n_envs: int, n_per_env: int, n_classes: int,
                      seed: int) -> list[TensorDomain]:
    """Class-dependent means plus a per-domain shift, so the label is learnable and domains differ."""
    g = torch.Generator().manual_seed(seed)
    class_means = torch.randn((n_classes, *shape), generator=g)
    domains = []
    for e in range(n_envs):
        shift = 0.5 * torch.randn(shape, generator=g)
        y = torch.arange(n_per_env) % n_classes
        y = y[torch.randperm(n_per_env, generator=g)]
        x = class_means[y] + shift + 0.5 * torch.randn((n_per_env, *shape), generator=g)
        domains.append(TensorDomain(x, y, name=str(e)))
    return domains


@register_dataset
class Debug28(MultiDomainDataset):
    """3 domains x 48 examples of 3x28x28 noise around class means; 2 classes."""

    ENVIRONMENTS = ("0", "1", "2")
    INPUT_SHAPE = (3, 28, 28)
    NUM_CLASSES = 2
    N_STEPS = 5
    CHECKPOINT_FREQ = 2
    SOURCE = "synthetic (tests)"

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        self.datasets = _gaussian_domains(self.INPUT_SHAPE, 3, 48, 2, seed=28)


@register_dataset
class DebugVector(MultiDomainDataset):
    """3 domains x 60 examples of 8-d vectors around class means; 3 classes."""

    ENVIRONMENTS = ("0", "1", "2")
    INPUT_SHAPE = (8,)
    NUM_CLASSES = 3
    N_STEPS = 5
    CHECKPOINT_FREQ = 2
    SOURCE = "synthetic (tests)"

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        self.datasets = _gaussian_domains(self.INPUT_SHAPE, 3, 60, 3, seed=8)
