"""Image-folder datasets: users' own data and the standard DomainBed benchmarks.

On-disk layout `<root>/<domain>/<class>/<image>`. Two ways to use it:

* `register_image_folder(name, root, image_size)` and `register_arrays(name, x, y, domain)`
  create and register a `MultiDomainDataset` subclass for small user data (decoded once into
  memory); the trainer's `--import mymodule` flag loads the module that calls them.
* `MultipleEnvironmentImageFolder` subclasses (PACS, VLCS, OfficeHome, TerraIncognita,
  DomainNet, Office31, OfficeCaltech, VisDA, SVIRO) decode lazily in DataLoader workers, at 3x224x224
  with ImageNet normalisation and DomainBed's training augmentation; or, with the trial's
  `image_cache` (`--image-cache`), read a memory-mapped uint8 cache
  (`shiftbench.datasets.image_cache`, built by `shiftbench data preprocess` or on first use)
  and augment whole batches of tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from shiftbench.datasets import image_cache as cache_store
from shiftbench.datasets.augment import hue_mode
from shiftbench.datasets.base import (
    MultiDomainDataset,
    register_dataset,
)
from shiftbench.datasets.lookup import count_images
from shiftbench.datasets.lookup import images as _images
from shiftbench.datasets.lookup import subdirs as _subdirs
from shiftbench.errors import IMAGE_ERRORS, ShiftbenchError, image_error

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scan_domain(domain_dir: Path, classes: Sequence[str] | None = None,
                ) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples [(path, label)], class names) of one `<domain>/<class>/<image>` folder.

    With `classes`, labels index that list (a class folder outside it is an error); otherwise
    the domain's own sorted class folders define the labels.
    """
    found = _subdirs(domain_dir)
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ShiftbenchError(f"{domain_dir}: class folder(s) {', '.join(unknown)} are not among "
                              f"the dataset's classes ({', '.join(names)})")
    index = {c: i for i, c in enumerate(names)}
    samples = [(str(p), index[c]) for c in found for p in _images(domain_dir / c)]
    return samples, names


# --------------------------------------------------------------------------------------------
# Lazy environments (standard benchmarks)


def train_transform(size: int = 224):
    """DomainBed's training augmentation, then ImageNet normalisation."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.7, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.3, 0.3, 0.3, 0.3),
        T.RandomGrayscale(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(size: int = 224):
    """Resize to a square and normalise with ImageNet statistics."""
    from torchvision import transforms as T

    return T.Compose([T.Resize((size, size)), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageFolderDomain(Dataset):
    """One environment of image files, decoded (PIL, RGB) when an item is read.

    `targets` holds every label so that splits need no decoding; `classes` the class names.
    """

    def __init__(self, samples: list[tuple[str, int]], classes: Sequence[str], transform,
                 name: str = ""):
        self.samples, self.classes, self.transform, self.name = samples, list(classes), \
            transform, name
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (*IMAGE_ERRORS, Image.DecompressionBombError) as e:
            raise image_error(path, e) from e
        return self.transform(image), label


class MultipleEnvironmentImageFolder(MultiDomainDataset):
    """Environments are the sorted sub-folders of `<data_dir>/<DATA_SUBDIR>` (DomainBed's rule).

    Classes are the sorted union of the class folders over all environments, so a label means
    the same class everywhere even if a domain lacks a class. `DOMAIN_SUBPATH` is appended to
    each domain folder (Office-31 keeps its classes under `<domain>/images/`).
    """

    DATA_SUBDIR = ""
    DOMAIN_SUBPATH = ""
    # Explicit domain folders, in ENVIRONMENTS order (default: every sub-folder, sorted).
    DOMAIN_FOLDERS: tuple[str, ...] | None = None
    INPUT_SHAPE = (3, 224, 224)
    CHECKPOINT_FREQ = 300
    URL = ""
    LICENSE = ""

    IMAGE_CACHE = True

    def __init__(self, root, test_envs, hparams, image_cache: bool = False):
        """`image_cache=True` (the spec's `image_cache`): read the preprocessed cache, building
        a missing one first; False: decode the image files lazily."""
        super().__init__(root, test_envs, hparams)
        cache_store.refuse_mode_variable()
        base, classes, env_samples = self.scan(root)
        self.classes = classes
        self.num_classes = len(classes)
        augment = bool(hparams.get("data_augmentation", False))
        size = self.INPUT_SHAPE[-1]
        name = type(self).__name__
        self.datasets = []
        for i, (env, samples) in enumerate(zip(self.ENVIRONMENTS, env_samples)):
            train_env = augment and i not in self.test_envs
            found = None
            if image_cache and samples:
                found = cache_store.ensure_cache(name, env, samples, base, size)
            if found is not None:
                self.datasets.append(cache_store.CachedImageDomain(
                    found[0], samples, classes, train_env, size, name=env, hue=hue_mode(hparams)))
            else:
                tf = train_transform(size) if train_env else eval_transform(size)
                self.datasets.append(ImageFolderDomain(samples, classes, tf, name=env))

    @classmethod
    def scan(cls, root: str | None) -> tuple[Path, list[str], list[list[tuple[str, int]]]]:
        """(dataset folder, classes, [(path, label)] of each environment), checking the layout."""
        base = cls.locate(root)
        folders = list(cls.DOMAIN_FOLDERS) if cls.DOMAIN_FOLDERS else _subdirs(base)
        if len(folders) != len(cls.ENVIRONMENTS):
            raise ShiftbenchError(
                f"{cls.__name__}: expected {len(cls.ENVIRONMENTS)} domain folders in "
                f"{base} ({', '.join(cls.ENVIRONMENTS)}), found {len(folders)}: "
                f"{', '.join(folders) or '(none)'}")
        dirs = [base / f / cls.DOMAIN_SUBPATH for f in folders]
        classes = sorted(set().union(*(_subdirs(d) for d in dirs if d.is_dir())))
        if cls.NUM_CLASSES and len(classes) != cls.NUM_CLASSES:
            raise ShiftbenchError(f"{cls.__name__}: expected {cls.NUM_CLASSES} class "
                                  f"folders under {base}, found {len(classes)}")
        env_samples = []
        for d in dirs:
            if not d.is_dir():
                raise ShiftbenchError(f"{cls.__name__}: missing folder {d}")
            env_samples.append(scan_domain(d, classes)[0])
        return base, classes, env_samples

    @classmethod
    def preprocess(cls, root: str | None, num_workers: int | None = None, log=print,
                   ) -> list[Path]:
        """Build (or find) the memory-mapped cache of every environment; returns its files."""
        import time

        base, _, env_samples = cls.scan(root)
        size = cls.INPUT_SHAPE[-1]
        paths = []
        for env, samples in zip(cls.ENVIRONMENTS, env_samples):
            t0 = time.time()
            found = cache_store.find_cache(cls.__name__, env, samples, base, size)
            if found is not None:
                log(f"{cls.__name__}/{env}: {len(samples)} images, cache up to date "
                    f"({found[0]})")
                paths.append(found[0])
                continue
            path = cache_store.ensure_cache(cls.__name__, env, samples, base, size, num_workers)[0]
            log(f"{cls.__name__}/{env}: {len(samples)} images preprocessed in "
                f"{time.time() - t0:.1f} s -> {path}")
            paths.append(path)
        return paths

    @classmethod
    def locate(cls, root: str | None) -> Path:
        """`<root>/<DATA_SUBDIR>`, with an error that says where to get the data."""
        if not root:
            raise ShiftbenchError(f"{cls.__name__} needs --data-dir (the folder that holds "
                                  f"{cls.DATA_SUBDIR}/); get it with `shiftbench data download "
                                  f"{cls.__name__} --data-dir DIR` (source: {cls.URL})")
        path = Path(root) / cls.DATA_SUBDIR
        if not path.is_dir():
            raise ShiftbenchError(f"{cls.__name__}: {path} does not exist; get it with "
                                  f"`shiftbench data download {cls.__name__} --data-dir {root}` "
                                  f"(source: {cls.URL})")
        return path

    @classmethod
    def count(cls, root: str) -> dict[str, int] | None:
        """Images per domain folder, or None when the dataset is absent."""
        return count_images(Path(root) / cls.DATA_SUBDIR, cls.DOMAIN_FOLDERS, cls.DOMAIN_SUBPATH)


@register_dataset
class PACS(MultipleEnvironmentImageFolder):
    """Li et al. 2017: art_painting, cartoon, photo, sketch; 7 classes; 9,991 images."""

    ENVIRONMENTS = ("A", "C", "P", "S")
    NUM_CLASSES = 7
    DATA_SUBDIR = "PACS"
    URL = "https://domaingeneralization.github.io/ (DomainBed: scripts/download.py)"
    LICENSE = "research use; images from the web, no explicit licence"
    SOURCE = "Li et al. 2017, PACS"


@register_dataset
class VLCS(MultipleEnvironmentImageFolder):
    """Fang et al. 2013: Caltech101, LabelMe, SUN09, VOC2007; 5 classes; 10,729 images."""

    ENVIRONMENTS = ("C", "L", "S", "V")
    NUM_CLASSES = 5
    DATA_SUBDIR = "VLCS"
    URL = "DomainBed scripts/download.py (VLCS.tar.gz), built from VOC2007/Caltech101/SUN09/LabelMe"
    LICENSE = "per source dataset (VOC, Caltech101, SUN09, LabelMe terms)"
    SOURCE = "Fang et al. 2013, VLCS"


@register_dataset
class OfficeHome(MultipleEnvironmentImageFolder):
    """Venkateswara et al. 2017: Art, Clipart, Product, Real World; 65 classes; 15,588 images."""

    ENVIRONMENTS = ("A", "C", "P", "R")
    NUM_CLASSES = 65
    DATA_SUBDIR = "office_home"
    URL = "https://www.hemanthdv.org/officeHomeDataset.html"
    LICENSE = "non-commercial research and educational use only"
    SOURCE = "Venkateswara et al. 2017, Office-Home"


@register_dataset
class TerraIncognita(MultipleEnvironmentImageFolder):
    """Beery et al. 2018: camera-trap locations 100, 38, 43, 46; 10 classes; 24,788 images."""

    ENVIRONMENTS = ("L100", "L38", "L43", "L46")
    NUM_CLASSES = 10
    DATA_SUBDIR = "terra_incognita"
    URL = "https://lila.science/datasets/caltech-camera-traps (DomainBed scripts/download.py)"
    LICENSE = "Community Data License Agreement (permissive)"
    SOURCE = "Beery et al. 2018, Caltech Camera Traps subset"


@register_dataset
class DomainNet(MultipleEnvironmentImageFolder):
    """Peng et al. 2019: clipart, infograph, painting, quickdraw, real, sketch; 345 classes."""

    ENVIRONMENTS = ("clip", "info", "paint", "quick", "real", "sketch")
    NUM_CLASSES = 345
    CHECKPOINT_FREQ = 1000
    DATA_SUBDIR = "domain_net"
    URL = "http://ai.bu.edu/M3SDA/"
    LICENSE = "fair use for research; images from the web"
    SOURCE = "Peng et al. 2019, DomainNet"


@register_dataset
class Office31(MultipleEnvironmentImageFolder):
    """Saenko et al. 2010: amazon, dslr, webcam (classes under `<domain>/images/`); 31 classes."""

    ENVIRONMENTS = ("A", "D", "W")
    NUM_CLASSES = 31
    DATA_SUBDIR = "office31"
    DOMAIN_SUBPATH = "images"
    URL = "https://faculty.cc.gatech.edu/~judy/domainadapt/ (domain_adaptation_images.tar.gz)"
    LICENSE = "research use"
    SOURCE = "Saenko et al. 2010, Office-31"


@register_dataset
class OfficeCaltech(MultipleEnvironmentImageFolder):
    """Gong et al. 2012: amazon, caltech, dslr, webcam; the 10 classes shared with Caltech-256."""

    ENVIRONMENTS = ("A", "C", "D", "W")
    NUM_CLASSES = 10
    DATA_SUBDIR = "office_caltech_10"
    URL = "https://github.com/jindongwang/transferlearning/tree/master/data (Office-Caltech10)"
    LICENSE = "research use"
    SOURCE = "Gong et al. 2012, Office-Caltech-10"


@register_dataset
class VisDA(MultipleEnvironmentImageFolder):
    """Peng et al. 2017 (VisDA-2017 classification): synthetic renderings (`train/`) and real
    COCO crops (`validation/`); 12 classes. The unlabeled `test/` folder is not used."""

    ENVIRONMENTS = ("synthetic", "real")
    DOMAIN_FOLDERS = ("train", "validation")
    NUM_CLASSES = 12
    DATA_SUBDIR = "visda"
    URL = "https://github.com/VisionLearningGroup/taskcv-2017-public (classification)"
    LICENSE = "research use (COCO images under their own terms)"
    SOURCE = "Peng et al. 2017, VisDA-2017"


@register_dataset
class SVIRO(MultipleEnvironmentImageFolder):
    """Dias Da Cruz et al. 2020 (SVIRO, DomainBed's grayscale rectangle classification subset):
    rear seats of ten vehicle models (aclass, escape, hilux, i3, lexus, tesla, tiguan, tucson,
    x5, zoe) as domains, `sviro/<vehicle>/<class>/<image>`; 7 classes of seat occupancy."""

    ENVIRONMENTS = ("aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5",
                    "zoe")
    NUM_CLASSES = 7
    DATA_SUBDIR = "sviro"
    URL = "https://sviro.kl.dfki.de (DomainBed scripts/download.py: SVIRO_DOMAINBED)"
    LICENSE = "CC BY-NC-SA 4.0"
    SOURCE = "Dias Da Cruz et al. 2020, SVIRO"


IMAGE_FOLDER_DATASETS = (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, Office31,
                         OfficeCaltech, VisDA, SVIRO)

