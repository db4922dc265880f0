"""`shiftbench data`: which datasets are available under a data directory, and where to get them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError


def dataset_status(data_dir: str | None) -> list[dict[str, Any]]:
    """One row per known dataset: name, status, per-domain counts, where to obtain it; from every
    registered availability check (`shiftbench.datasets.availability`; torch-free unless a plug-in
    is installed)."""
    from shiftbench.datasets.availability import AVAILABILITY

    AVAILABILITY.load_entry_points()
    rows: list[dict[str, Any]] = []
    for _, check in AVAILABILITY.items():
        found = check(data_dir)
        rows.extend(found if isinstance(found, list) else [found])
    return rows


def cmd_preprocess(ns: argparse.Namespace) -> int:
    """Build the memory-mapped cache of an image-folder dataset."""
    from shiftbench.datasets import get_dataset_class
    from shiftbench.datasets.folder import IMAGE_FOLDER_DATASETS, MultipleEnvironmentImageFolder

    choices = [c.__name__ for c in IMAGE_FOLDER_DATASETS]
    if not ns.dataset:
        raise ShiftbenchError("data preprocess needs --dataset, one of " + ", ".join(choices))
    cls = get_dataset_class(ns.dataset)
    if not issubclass(cls, MultipleEnvironmentImageFolder):
        raise ShiftbenchError(f"--dataset {ns.dataset} is not an image-folder dataset; "
                              f"preprocessing applies to {', '.join(choices)}")
    if ns.workers is not None and ns.workers < 0:
        raise ShiftbenchError(f"--workers must be >= 0, got {ns.workers}")
    cls.preprocess(ns.data_dir, num_workers=ns.workers)
    return 0


def source_table() -> list[dict[str, Any]]:
    """One row per downloadable source: files, checksum kind, where from, terms."""
    from shiftbench.datasets.sources import SOURCES

    rows = []
    for s in SOURCES.values():
        if s.parts:
            files, check = "parts: " + ", ".join(s.parts), ""
        elif s.fetcher is not None and not s.remotes:
            files, check = "through the wilds package", "wilds' own"
        else:
            files = ", ".join(r.filename for r in s.remotes)
            kinds = {r.checksum[0] if r.checksum else "none (size only)" for r in s.remotes}
            check = ", ".join(sorted(kinds))
        folder = s.target or "$SHIFTBENCH_PRETRAINED_DIR or torch's hub cache"
        rows.append({"name": s.name, "folder": folder, "datasets": ", ".join(s.datasets),
                     "files": files, "checksum": check,
                     "how": "manual: " + s.manual if s.manual else "automatic",
                     "licence": s.licence, "homepage": s.homepage})
    return rows


def cmd_download(ns: argparse.Namespace) -> int:
    """Download, verify and unpack the named datasets into --data-dir."""
    from shiftbench.datasets.archive_checks import DownloadError
    from shiftbench.datasets.download import base_url, install
    from shiftbench.datasets.sources import SOURCES, get_source

    if not ns.names:
        rows = source_table()
        if ns.json:
            print(json.dumps(rows, indent=1))
        else:
            from tabulate import tabulate

            print(tabulate([{k: r[k] for k in ("name", "folder", "files", "checksum", "how")}
                            for r in rows], headers="keys", maxcolwidths=50))
        return 0
    if not ns.data_dir:
        raise ShiftbenchError("data download needs --data-dir (the folder the datasets go in)")
    data_dir = Path(ns.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    base = base_url(ns.base_url)
    queue = []
    for name in ns.names:
        source = get_source(name)
        queue += [SOURCES[p] for p in source.parts] if source.parts else [source]
    failed = []
    for source in queue:
        try:
            install(source, data_dir, base, keep_archives=ns.keep_archives, progress=ns.progress)
        except DownloadError as e:
            if len(queue) == 1:
                raise
            failed.append(f"{source.name}: {e}")
    if failed:
        raise ShiftbenchError(f"{len(failed)} of {len(queue)} downloads failed:\n"
                              + "\n".join(failed))
    return 0


def cmd_data(ns: argparse.Namespace) -> int:
    if ns.action == "download":
        return cmd_download(ns)
    if ns.data_dir and not Path(ns.data_dir).is_dir():
        raise ShiftbenchError(f"--data-dir {ns.data_dir} is not a directory")
    if ns.action == "preprocess":
        return cmd_preprocess(ns)
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
    p = subparsers.add_parser(
        "data", help="show which datasets are present under --data-dir; `data preprocess "
                     "--dataset X` builds the decoded-image cache of an image-folder dataset")
    p.add_argument("action", nargs="?", choices=("list", "preprocess", "download"),
                   default="list",
                   help="list (default): datasets present; preprocess: decode and resize every "
                        "image of --dataset once into a memory-mapped cache; download NAME...: "
                        "fetch, verify and unpack datasets (no NAME: the table of sources)")
    p.add_argument("names", nargs="*", metavar="NAME", help="download: datasets to fetch")
    p.add_argument("--base-url", default=None,
                   help="download: fetch every file from this mirror, laid out as "
                        "<base>/<NAME>/<file> (default: $SHIFTBENCH_DOWNLOAD_BASE_URL, else "
                        "each file's own URL)")
    p.add_argument("--keep-archives", action="store_true",
                   help="download: keep the archives in <data-dir>/.downloads after unpacking")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="download: progress bars (default: when stderr is a terminal)")
    p.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None)
    p.add_argument("--dataset", default=None, help="preprocess: the image-folder dataset")
    p.add_argument("--workers", type=int, default=None,
                   help="preprocess: decoding processes (default: from the machine's cores)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_data)
