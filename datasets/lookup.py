"""Where the built-in datasets' files are looked for, and an environment's index from its name,
without importing torch.

The loaders (mnist, digits, digit_files, folder) and `shiftbench data list` (which must answer
without torch) share these functions, so that the listing reports exactly what a loader would
find; datasets, the command line and sweeps share `environment_index`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")
IDX_NAMES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
# Where Debian's dataset-fashion-mnist package installs the Fashion-MNIST idx files.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
# Where Debian's opencv-doc package installs OpenCV's sample sheet of handwritten digits.
OPENCV_DIGITS_PATHS = ("/usr/share/doc/opencv-doc/examples/data/digits.png",
                       "/usr/share/opencv4/samples/data/digits.png")
N_SYNTH = 5000  # the Digits dataset's synthesised font digits


def environment_index(dataset: str, names: Sequence[str], env: int | str) -> int:
    """The index of environment `env` (its index, or its name) of `dataset`, whose environments
    are `names`; a clear error naming the valid choices otherwise."""
    from shiftbench.errors import ShiftbenchError, UnknownNameError

    names = list(names)
    if isinstance(env, str) and not env.lstrip("-").isdigit():
        if env not in names:
            raise UnknownNameError(f"environment of {dataset}", env, names)
        return names.index(env)
    index = int(env)
    if not 0 <= index < len(names):
        raise ShiftbenchError(f"test environment {index} is out of range for {dataset}, which "
                              f"has {len(names)} environments: "
                              + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
    return index


# --------------------------------------------------------------------------------------------
# Image folders


def subdirs(path: Path) -> list[str]:
    """The sorted visible sub-folders of `path`."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def images(path: Path) -> list[Path]:
    """Every visible image file below `path`, sorted."""
    return sorted(p for p in path.rglob("*") if p.is_file() and
                  p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def count_images(path: Path, domain_folders: Sequence[str] | None, subpath: str = ""
                 ) -> dict[str, int] | None:
    """Images per domain folder of a dataset folder (`domain_folders`, or every sub-folder),
    each under `<domain>/<subpath>`; None when the dataset folder is absent. Counted as the
    loaders read them (`shiftbench.datasets.folder.scan_domain`): the images of each class
    folder, a class folder that is a symbolic link included."""
    if not path.is_dir():
        return None
    folders = [f for f in domain_folders if (path / f).is_dir()] if domain_folders \
        else subdirs(path)
    return {f: domain_image_count(path / f / subpath) for f in folders}


def domain_image_count(domain: Path) -> int:
    """The images of `<domain>/<class>/...` over its class folders (as `scan_domain` finds)."""
    if not domain.is_dir():
        return 0
    return sum(len(images(domain / c)) for c in subdirs(domain))


# --------------------------------------------------------------------------------------------
# MNIST-format idx files and OpenCV's digit sheet


def find_idx_in(folders: Sequence[Path]) -> dict[str, Path] | None:
    """The four idx files (each plain or gzipped) in the first folder that holds all four."""
    for folder in folders:
        found = {}
        for key, name in IDX_NAMES.items():
            for candidate in (folder / name, folder / (name + ".gz")):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(IDX_NAMES):
            return found
    return None


def find_mnist_idx(data_dir: str | None) -> dict[str, Path] | None:
    """MNIST's four idx files under `data_dir` (torchvision's `MNIST/raw`, `raw`, the folder
    itself, or `MNIST`), else None."""
    if not data_dir:
        return None
    root = Path(data_dir)
    return find_idx_in((root / "MNIST" / "raw", root / "raw", root, root / "MNIST"))


def find_fashion_idx(data_dir: str | None) -> dict[str, Path] | None:
    """Fashion-MNIST's idx files: `<data_dir>/FashionMNIST/raw` (torchvision),
    `<data_dir>/FashionMNIST`, `<data_dir>/fashion-mnist`, then the Debian package's folder.
    (Not `<data_dir>` itself: the file names are MNIST's.)"""
    folders = []
    if data_dir:
        root = Path(data_dir)
        folders += [root / "FashionMNIST" / "raw", root / "FashionMNIST", root / "fashion-mnist"]
    folders.append(Path(FASHION_MNIST_SYSTEM_DIR))
    return find_idx_in(folders)


def find_opencv_digits(data_dir: str | None) -> Path | None:
    """`<data_dir>/digits.png`, else the opencv-doc locations, else None."""
    candidates = [Path(data_dir) / "digits.png"] if data_dir else []
    candidates += [Path(p) for p in OPENCV_DIGITS_PATHS]
    return next((p for p in candidates if p.is_file()), None)


# --------------------------------------------------------------------------------------------
# The digit releases of DigitFive


def first_folder(data_dir: str | None, folders: Sequence[str],
                 names: Sequence[Sequence[str]]) -> dict[str, Path] | None:
    """In the first folder holding one of each group of alternative names: {first name: path}."""
    if not data_dir:
        return None
    for folder in folders:
        found = {}
        for group in names:
            hit = next((Path(data_dir, folder, n) for n in group
                        if Path(data_dir, folder, n).is_file()), None)
            if hit is None:
                break
            found[group[0]] = hit
        if len(found) == len(names):
            return found
    return None


def find_mnist_m(data_dir: str | None) -> dict[str, Path] | None:
    """MNIST-M's two label files, with its two image folders beside them."""
    found = first_folder(data_dir, ("mnist_m", "."), (("mnist_m_train_labels.txt",),
                                                      ("mnist_m_test_labels.txt",)))
    if found is None:
        return None
    root = found["mnist_m_train_labels.txt"].parent
    if not (root / "mnist_m_train").is_dir() or not (root / "mnist_m_test").is_dir():
        return None
    return found


@dataclass(frozen=True)
class DigitRelease:
    """One digit domain's published files: what is looked for (for messages), from where."""

    name: str
    files: str
    url: str
    licence: str
    find: Callable[[str | None], dict[str, Path] | None]


DIGIT_RELEASES: dict[str, DigitRelease] = {d.name: d for d in (
    DigitRelease("mnist", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
                 "http://yann.lecun.com/exdb/mnist/ (or torchvision.datasets.MNIST)",
                 "CC BY-SA 3.0", find_mnist_idx),
    DigitRelease("mnist_m", "mnist_m/mnist_m_{train,test}/ + mnist_m_{train,test}_labels.txt",
                 "http://yaroslav.ganin.net/ (MNIST-M, Ganin & Lempitsky 2015)",
                 "research use (BSDS500 photo crops)", find_mnist_m),
    DigitRelease("svhn", "SVHN/{train,test}_32x32.mat",
                 "http://ufldl.stanford.edu/housenumbers/ (format 2)", "non-commercial use only",
                 lambda d: first_folder(d, ("SVHN", "svhn", "."), (("train_32x32.mat",),
                                                                  ("test_32x32.mat",)))),
    DigitRelease("syn", "SynthDigits/synth_{train,test}_32x32.mat",
                 "http://yaroslav.ganin.net/ (SynNumbers / SynthDigits, Ganin & Lempitsky 2015)",
                 "research use", lambda d: first_folder(
                     d, ("SynthDigits", "syn", "."), (("synth_train_32x32.mat",),
                                                      ("synth_test_32x32.mat",)))),
    DigitRelease("usps", "USPS/usps.bz2 + USPS/usps.t.bz2 (libsvm)",
                 "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps",
                 "no explicit licence (research use)",
                 lambda d: first_folder(d, ("USPS", "usps", "."), (("usps.bz2", "usps"),
                                                                  ("usps.t.bz2", "usps.t")))),
)}
