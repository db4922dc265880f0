"""`DigitsDemo`: the built-in Digits domains, downsampled and subsampled so that `shiftbench demo`
fits a whole sweep in minutes on two CPU cores. Registered only when this module is imported
(the demo imports it, and passes `--import shiftbench.demo_data` to its jobs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from shiftbench.datasets import register_dataset
from shiftbench.datasets.base import MultiDomainDataset, TensorDomain
from shiftbench.datasets.digits import Digits, build_digits

DEMO_SIZE = 16  # pixels (Digits: 28)
DEMO_PER_DOMAIN = 800  # examples per domain (Digits: 1,797 to 5,000)


@register_dataset
class DigitsDemo(MultiDomainDataset):
    """Digits' four domains at 16x16 pixels, 800 examples each (a fixed random subset)."""

    ENVIRONMENTS = Digits.ENVIRONMENTS
    INPUT_SHAPE = (3, DEMO_SIZE, DEMO_SIZE)
    NUM_CLASSES = 10
    CLASSES = Digits.CLASSES
    N_STEPS = 200
    CHECKPOINT_FREQ = 100
    SOURCE = f"Digits, downsampled to {DEMO_SIZE}x{DEMO_SIZE}, {DEMO_PER_DOMAIN} per domain"

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        envs = build_digits()
        self.datasets = []
        for i, name in enumerate(self.ENVIRONMENTS):
            x, y = envs[name]
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(100 + i))
            keep = keep[:DEMO_PER_DOMAIN]
            small = F.interpolate(x[keep].float(), size=(DEMO_SIZE, DEMO_SIZE), mode="area")
            if x.dtype == torch.uint8:
                small = small.round().clamp_(0, 255).to(torch.uint8)
            self.datasets.append(TensorDomain(small, y[keep], name=name))


def ensure_registered() -> None:
    """Register DigitsDemo again if something removed it from the registry (tests do)."""
    from shiftbench.datasets.base import DATASETS

    if "DigitsDemo" not in DATASETS:
        register_dataset(DigitsDemo)
