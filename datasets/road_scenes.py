"""GTA5, Cityscapes and SYNTHIA-RAND-CITYSCAPES: the real segmentation adaptation benchmarks.

Label encodings (from the Cityscapes label table of cityscapesScripts and the SYNTHIA README):

* Cityscapes `gtFine/<split>/<city>/*_gtFine_labelIds.png`: 8-bit label ids 0-33 (and -1 for the
  licence plate, never stored in labelIds files); 19 of them have a train id 0-18, the rest are
  ignored (255).
* GTA5 `labels/*.png`: the same Cityscapes label ids (8-bit, paletted), mapped the same way.
* SYNTHIA-RAND-CITYSCAPES `GT/LABELS/*.png`: 16-bit RGB, the SYNTHIA class id in the first (R)
  channel: 0 void, 1 sky, 2 building, 3 road, 4 sidewalk, 5 fence, 6 vegetation, 7 pole, 8 car,
  9 traffic sign, 10 pedestrian, 11 bicycle, 12 motorcycle, 13 parking slot, 14 road work,
  15 traffic light, 16 terrain, 17 rider, 18 truck, 19 bus, 20 train, 21 wall, 22 lane marking.

Evaluation subsets: 19 classes (GTA5 -> Cityscapes), 16 classes = 19 minus terrain, truck and
train (SYNTHIA has none of them), 13 classes = 16 minus wall, fence and pole. A dataset with k
classes relabels every domain to 0..k-1 over its subset; everything else is 255.

Images and labels are resized to `INPUT_SHAPE` (bilinear / nearest) when read; the Cityscapes
environment holds the `train` and then the `val` images of the chosen cities, and the engine's
seeded splits decide which images are unlabeled target data and which evaluate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from shiftbench.datasets.base import register_dataset
from shiftbench.datasets.segmentation import IGNORE_INDEX, SegmentationDataset
from shiftbench.errors import ShiftbenchError

# (name, label id, train id) - the Cityscapes label table.
CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9),
    ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14),
    ("bus", 28, 15), ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16),
    ("motorcycle", 32, 17), ("bicycle", 33, 18), ("license plate", -1, 255),
)
CLASSES_19 = tuple(name for name, _, train in sorted(
    (t for t in CITYSCAPES_LABELS if t[2] != 255), key=lambda t: t[2]))
CLASSES_16 = tuple(c for c in CLASSES_19 if c not in ("terrain", "truck", "train"))
CLASSES_13 = tuple(c for c in CLASSES_16 if c not in ("wall", "fence", "pole"))
# SYNTHIA class id -> Cityscapes train id (19-class numbering).
SYNTHIA_TO_TRAIN19 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
                      10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def label_table(raw_to_train19: dict[int, int], classes: Sequence[str]) -> np.ndarray:
    """Lookup table raw id -> index in `classes` (255 for ids outside it)."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for raw, train in raw_to_train19.items():
        name = CLASSES_19[train]
        if raw >= 0 and name in classes:
            table[raw] = classes.index(name)
    return table


CITYSCAPES_TO_TRAIN19 = {lid: train for _, lid, train in CITYSCAPES_LABELS if train != 255}


class SegmentationFiles(Dataset):
    """(image, label) file pairs decoded on access.

    Evaluation items are resized to `size` = (H, W) (labels too unless `full_labels`); training
    items (`train[i]` true) follow the protocol (`shiftbench.datasets.road_protocol`): resized
    to `train_size` (default `size`), then randomly cropped to `crop` and flipped when `flip`."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], table: np.ndarray, size: tuple[int, int],
                 read_label, name: str = "", train: Sequence[bool] | None = None,
                 train_size: tuple[int, int] | None = None, crop: tuple[int, int] | None = None,
                 flip: bool = False, full_labels: bool = False):
        self.pairs, self.table, self.size, self.read_label = list(pairs), table, size, read_label
        self.name = name
        self.train = np.zeros(len(self.pairs), bool) if train is None else np.asarray(train, bool)
        self.train_size, self.crop, self.flip, self.full_labels = train_size or size, crop, flip, full_labels
        self.fixed: dict[str, np.ndarray] | None = None  # official splits, see `fixed_splits`
        # the engine's splits need only the number of examples
        self.targets = np.zeros(len(self.pairs), np.int64)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        from shiftbench.datasets.road_protocol import random_crop_flip, resize_pair

        image_path, label_path = self.pairs[i]
        with Image.open(image_path) as im:
            x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())
        raw = self.read_label(label_path)
        y = torch.from_numpy(self.table[raw.astype(np.int64).clip(0, 255)])
        x = x.permute(2, 0, 1).float().div_(255)
        if self.train[i]:
            x, y = resize_pair(x, y, self.train_size)
            x, y = random_crop_flip(x, y, self.crop, self.flip)
        else:
            x, _ = resize_pair(x, y[:1, :1], self.size)
            if not self.full_labels:
                _, y = resize_pair(x[:, :1, :1], y, self.size)
        return x, y.long()

    def fixed_splits(self, unlabeled_target: bool) -> dict[str, np.ndarray] | None:
        """The environment's own splits when it is a test environment (the engine's hook), or
        None for the seeded ones: `in` = the evaluation images, `uda` = the training images when
        the setting has an unlabeled target split, `out` empty."""
        if self.fixed is None:
            return None
        return {"in": self.fixed["val"], "out": np.zeros(0, np.int64),
                "uda": self.fixed["train"] if unlabeled_target else np.zeros(0, np.int64)}


def read_label_ids(path: Path) -> np.ndarray:
    """An 8-bit label-id PNG (grey or paletted: the palette index is the id)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise ShiftbenchError(f"{path}: expected an 8-bit label-id PNG, got mode {im.mode}")
        return np.asarray(im, dtype=np.uint8)


def read_synthia_label(path: Path) -> np.ndarray:
    """The SYNTHIA class id: first channel of the 16-bit RGB label PNG."""
    from shiftbench.datasets.png16 import read_png16

    a = read_png16(path)
    if a.ndim != 3 or a.dtype != np.uint16:
        raise ShiftbenchError(f"{path}: expected a 16-bit RGB SYNTHIA label PNG, got "
                              f"{a.dtype} {a.shape}")
    return a[..., 0]


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ShiftbenchError(f"{what} not found: {path} is not a directory (see "
                              "docs/segmentation.md for the expected layout)")
    return path


def gta5_pairs(root: Path) -> list[tuple[Path, Path]]:
    """GTA5: `images/NNNNN.png` with `labels/NNNNN.png` of the same name."""
    images = _require_dir(root / "images", "GTA5 images")
    labels = _require_dir(root / "labels", "GTA5 labels")
    pairs = [(p, labels / p.name) for p in sorted(images.glob("*.png"))]
    return _check_pairs(pairs, "GTA5")


def cityscapes_pairs(root: Path, splits: Sequence[str] = ("train", "val")) -> list[tuple[Path, Path]]:
    """Cityscapes: `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` with
    `gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`."""
    pairs = []
    for split in splits:
        image_dir = _require_dir(root / "leftImg8bit" / split, "Cityscapes leftImg8bit")
        for p in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            stem = p.name[: -len("_leftImg8bit.png")]
            pairs.append((p, root / "gtFine" / split / p.parent.name / f"{stem}_gtFine_labelIds.png"))
    return _check_pairs(pairs, "Cityscapes")


def synthia_pairs(root: Path) -> list[tuple[Path, Path]]:
    """SYNTHIA-RAND-CITYSCAPES: `RGB/NNNNNNN.png` with `GT/LABELS/NNNNNNN.png`."""
    images = _require_dir(root / "RGB", "SYNTHIA RGB")
    labels = _require_dir(root / "GT" / "LABELS", "SYNTHIA GT/LABELS")
    return _check_pairs([(p, labels / p.name) for p in sorted(images.glob("*.png"))], "SYNTHIA")


def _check_pairs(pairs, what: str):
    if not pairs:
        raise ShiftbenchError(f"{what}: no images found")
    missing = [str(lab) for _, lab in pairs if not lab.is_file()]
    if missing:
        raise ShiftbenchError(f"{what}: {len(missing)} label files missing, e.g. {missing[0]}")
    return pairs


class _RoadScenes(SegmentationDataset):
    """Two-domain real benchmark under `--data-dir`: `<root>/<SOURCE_DIR>` and
    `<root>/cityscapes`, read under the protocol hparams of `road_protocol`."""

    INPUT_SHAPE = (3, 512, 1024)
    N_STEPS = 40001
    CHECKPOINT_FREQ = 2000
    N_WORKERS = None
    SOURCE_DIR = ""
    ROAD_PROTOCOL = True

    def __init__(self, root, test_envs, hparams):
        from shiftbench.datasets.road_protocol import parse_size

        super().__init__(root, test_envs, hparams)
        if not root:
            raise ShiftbenchError(f"{type(self).__name__} needs --data-dir holding {self.SOURCE_DIR}/ "
                                  "and cityscapes/")
        base, size = Path(root), tuple(self.INPUT_SHAPE[1:])
        hp = {"source_size": "input", "target_size": "input", "crop_size": "none", "random_flip": False,
              "target_split": "seeded", "eval_labels": "input", **dict(hparams or {})}
        crop, flip = parse_size(hp["crop_size"], "crop_size"), bool(hp["random_flip"])
        official = hp["target_split"] == "official"
        source_pairs, source_table, reader = self.source(base / self.SOURCE_DIR)
        city_table = label_table(CITYSCAPES_TO_TRAIN19, self.CLASSES)
        train_pairs = cityscapes_pairs(base / "cityscapes", ("train",))
        val_pairs = cityscapes_pairs(base / "cityscapes", ("val",))
        n_train = len(train_pairs)
        city = SegmentationFiles(
            train_pairs + val_pairs, city_table, size, read_label_ids, "cityscapes",
            train=[official and i < n_train for i in range(n_train + len(val_pairs))],
            train_size=parse_size(hp["target_size"], "target_size"), crop=crop, flip=flip,
            full_labels=hp["eval_labels"] == "full")
        if official:
            city.fixed = {"train": np.arange(n_train), "val": np.arange(n_train, len(city))}
        self.datasets = [
            SegmentationFiles(source_pairs, source_table, size, reader, self.ENVIRONMENTS[0],
                              train=[crop is not None or hp["source_size"] != "input" or flip]
                              * len(source_pairs),
                              train_size=parse_size(hp["source_size"], "source_size"), crop=crop,
                              flip=flip),
            city,
        ]

    def source(self, path: Path):
        raise NotImplementedError


@register_dataset
class GTA5Cityscapes(_RoadScenes):
    """GTA5 -> Cityscapes, 19 classes (`--data-dir` with GTA5/ and cityscapes/)."""

    ENVIRONMENTS = ("gta5", "cityscapes")
    CLASSES = CLASSES_19
    NUM_CLASSES = 19
    SOURCE_DIR = "GTA5"
    SOURCE = "GTA5 (Richter et al. 2016) and Cityscapes (Cordts et al. 2016), local copies"

    def source(self, path):
        return gta5_pairs(path), label_table(CITYSCAPES_TO_TRAIN19, self.CLASSES), read_label_ids


@register_dataset
class SynthiaCityscapes16(_RoadScenes):
    """SYNTHIA-RAND-CITYSCAPES -> Cityscapes, the 16-class protocol."""

    ENVIRONMENTS = ("synthia", "cityscapes")
    CLASSES = CLASSES_16
    NUM_CLASSES = 16
    SOURCE_DIR = "RAND_CITYSCAPES"
    SOURCE = "SYNTHIA-RAND-CITYSCAPES (Ros et al. 2016) and Cityscapes, local copies"

    def source(self, path):
        return synthia_pairs(path), label_table(SYNTHIA_TO_TRAIN19, self.CLASSES), read_synthia_label


@register_dataset
class SynthiaCityscapes13(SynthiaCityscapes16):
    """SYNTHIA-RAND-CITYSCAPES -> Cityscapes, the 13-class protocol."""

    CLASSES = CLASSES_13
    NUM_CLASSES = 13
