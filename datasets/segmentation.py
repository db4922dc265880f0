"""The dense-prediction (semantic segmentation) dataset type.

A segmentation dataset is a `MultiDomainDataset` with `TASK_TYPE = "segmentation"`: every
environment yields `(image, label map)` pairs, the image a float `[3, H, W]` tensor in [0, 1], the
label map an int64 `[H, W]` tensor of class ids in `[0, NUM_CLASSES)` or `IGNORE_INDEX` (255) for
pixels that are not evaluated and carry no training signal. Batches are `[B, 3, H, W]` and
`[B, H, W]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shiftbench.datasets.base import MultiDomainDataset, TensorDomain
from shiftbench.errors import ShiftbenchError

IGNORE_INDEX = 255
TASK_TYPES = ("classification", "segmentation")


def task_type_of(dataset: MultiDomainDataset | type) -> str:
    """The task type a dataset (class or instance) declares; classification when it declares none."""
    return getattr(dataset, "TASK_TYPE", "classification")


class SegmentationDataset(MultiDomainDataset):
    """Base class of the segmentation datasets (`CLASSES` names every class id, in order)."""

    TASK_TYPE = "segmentation"
    IGNORE_INDEX = IGNORE_INDEX


class LabelMapDomain(TensorDomain):
    """One environment of images with label maps, held in memory.

    `x` is uint8 `[N, 3, H, W]` (scaled to [0, 1] when batched), `y` uint8 `[N, H, W]` (class id
    or 255), widened to int64 only per batch so the maps take one byte per pixel in memory.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, name: str = ""):
        if len(x) != len(y):
            raise ShiftbenchError(f"environment {name!r}: {len(x)} images but {len(y)} label maps")
        if x.dim() != 4 or y.dim() != 3 or x.shape[-2:] != y.shape[-2:]:
            raise ShiftbenchError(f"environment {name!r}: images {tuple(x.shape)} and label maps "
                                  f"{tuple(y.shape)} must be [N, C, H, W] and [N, H, W]")
        self.x, self.y, self.name = x, y, name

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x, self.y[index].long()


def remap_labels(raw: torch.Tensor, table: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Map raw label ids through a lookup table (`table[id]` = train id or 255); ids beyond the
    table become 255."""
    lut = torch.full((max(256, len(table)),), IGNORE_INDEX, dtype=torch.uint8)
    lut[: len(table)] = torch.as_tensor(list(table), dtype=torch.uint8)
    raw = raw.long()
    out = torch.full(raw.shape, IGNORE_INDEX, dtype=torch.uint8)
    inside = raw < len(lut)
    out[inside] = lut[raw[inside]]
    return out
