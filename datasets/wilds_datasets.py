"""WILDS Camelyon17 and FMoW as multi-domain datasets, read through the `wilds` package (optional).

As in DomainBed, the environments are the values of one metadata field, sorted: the hospital of
a Camelyon17 patch (5 hospitals, tumour vs normal tissue, 96x96 patches) and the region of an
FMoW satellite image (6 regions including "Other", 62 land-use classes). Images are resized to
224x224 and normalised with ImageNet statistics; training environments get DomainBed's WILDS
augmentation (resize, then RandomResizedCrop(224, scale 0.7-1), flip, colour jitter, random
grayscale) when `data_augmentation` is set. WILDS' own train/val/test splits are not used:
the trainer splits each environment as for every other dataset (DomainBed's protocol).

`<data-dir>` is WILDS' `root_dir`: the loaders read `<data-dir>/camelyon17_v1.0/` and
`<data-dir>/fmow_v1.1/` and never download (`shiftbench data download WILDSCamelyon` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from shiftbench.datasets.base import MultiDomainDataset, register_dataset
from shiftbench.errors import ShiftbenchError


def _wilds():
    import os

    os.environ.setdefault("OUTDATED_IGNORE", "1")  # wilds' import-time version check goes online
    try:
        import wilds
    except ImportError:
        raise ShiftbenchError("the WILDS datasets are read by the `wilds` package: pip install "
                              "wilds (or pip install 'shiftbench[wilds]')") from None
    return wilds


def wilds_transform(augment: bool, size: int = 224):
    """DomainBed's WILDS transforms: resize to `size`, (augment), tensor, ImageNet normalisation."""
    from torchvision import transforms as T

    from shiftbench.datasets.folder import IMAGENET_MEAN, IMAGENET_STD

    steps: list[Any] = [T.Resize((size, size))]
    if augment:
        steps += [T.RandomResizedCrop(size, scale=(0.7, 1.0)), T.RandomHorizontalFlip(),
                  T.ColorJitter(0.3, 0.3, 0.3, 0.3), T.RandomGrayscale()]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class WILDSDomain(Dataset):
    """The examples of a WILDS dataset whose metadata field equals one value, decoded lazily."""

    def __init__(self, dataset, indices: torch.Tensor, transform, name: str = ""):
        self.dataset, self.indices, self.transform, self.name = dataset, indices, transform, name
        self.targets = dataset.y_array[indices].tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[i])
        try:
            image = self.dataset.get_input(index)
        except OSError as e:
            raise ShiftbenchError(f"{self.name}: cannot read example {index} of "
                                  f"{type(self.dataset).__name__}: {e}") from e
        if not hasattr(image, "convert"):
            from PIL import Image

            image = Image.fromarray(image)
        return self.transform(image.convert("RGB")), int(self.targets[i])


class WILDSImageDataset(MultiDomainDataset):
    """A WILDS image dataset split into environments by the metadata field `METADATA`."""

    WILDS_NAME = ""
    FOLDER = ""
    METADATA = ""
    INPUT_SHAPE = (3, 224, 224)

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        dataset = self.open(root)
        field = dataset.metadata_fields.index(self.METADATA)
        column = dataset.metadata_array[:, field]
        values = sorted(set(column.tolist()))
        if len(values) != len(self.ENVIRONMENTS):
            raise ShiftbenchError(f"{type(self).__name__}: the {self.METADATA} metadata of "
                                  f"{Path(root) / self.FOLDER} has {len(values)} values "
                                  f"{values}, expected {len(self.ENVIRONMENTS)}")
        augment = bool(hparams.get("data_augmentation", False))
        self.datasets = [
            WILDSDomain(dataset, torch.where(column == v)[0],
                        wilds_transform(augment and i not in self.test_envs), name=env)
            for i, (v, env) in enumerate(zip(values, self.ENVIRONMENTS))]

    @classmethod
    def open(cls, root: str | None):
        """The `wilds` dataset under `root`, with an error saying how to get it when absent."""
        folder = Path(root or ".") / cls.FOLDER
        how = f"shiftbench data download {cls.__name__} --data-dir {root or 'DIR'}"
        if not root or not folder.is_dir():
            raise ShiftbenchError(f"{cls.__name__}: {folder} does not exist; get it with `{how}` "
                                  "(needs the wilds package)")
        wilds = _wilds()
        try:
            return wilds.get_dataset(dataset=cls.WILDS_NAME, root_dir=str(root), download=False)
        except (FileNotFoundError, OSError, ValueError, KeyError) as e:
            raise ShiftbenchError(f"{cls.__name__}: cannot read {folder} with wilds "
                                  f"({type(e).__name__}: {e}); the folder is incomplete or "
                                  f"damaged: remove it, then run `{how}`") from e


@register_dataset
class WILDSCamelyon(WILDSImageDataset):
    """Bandi et al. 2018 / Koh et al. 2021 (WILDS Camelyon17): tumour vs normal lymph-node
    patches from five hospitals."""

    ENVIRONMENTS = ("hospital_0", "hospital_1", "hospital_2", "hospital_3", "hospital_4")
    NUM_CLASSES = 2
    CHECKPOINT_FREQ = 300
    WILDS_NAME = "camelyon17"
    FOLDER = "camelyon17_v1.0"
    METADATA = "hospital"
    SOURCE = "WILDS Camelyon17 v1.0 (through the wilds package); CC0"


@register_dataset
class WILDSFMoW(WILDSImageDataset):
    """Christie et al. 2018 / Koh et al. 2021 (WILDS FMoW): land use from satellite images,
    by region."""

    ENVIRONMENTS = ("region_0", "region_1", "region_2", "region_3", "region_4", "region_5")
    NUM_CLASSES = 62
    CHECKPOINT_FREQ = 300
    WILDS_NAME = "fmow"
    FOLDER = "fmow_v1.1"
    METADATA = "region"
    SOURCE = "WILDS FMoW v1.1 (through the wilds package)"


WILDS_DATASETS: Sequence[type[WILDSImageDataset]] = (WILDSCamelyon, WILDSFMoW)
