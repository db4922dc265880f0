"""A preprocessed, memory-mapped cache for the image-folder benchmarks.

Each environment's images are decoded once (PIL, RGB), resized to `size x size` with PIL's
bilinear filter (exactly what the evaluation transform's `Resize((size, size))` does) and stored
as one uint8 array `[N, size, size, 3]` (channels last) in
`<cache>/images/<Dataset>-<env>-<size>px-<key>.u8`, with a JSON file beside it holding the
shape and the labels. `key` hashes the cache version,
the size and every source file's path (relative to the dataset folder), byte size, mtime and
label, so adding, removing, relabelling or touching a file selects a different cache.
Data and metadata are written atomically (`shiftbench.datasets.cache_files`), metadata last: a
crash leaves no cache rather than a torn one.

`CachedImageDomain` reads a batch of rows from the memory map and augments it with
`shiftbench.datasets.augment` (DomainBed's training augmentation on uint8 tensors) or only
normalises it; `__getitems__` returns the finished batch, which `shiftbench.data.collate`
passes on without stacking the images again.

The cache is used when the trial's spec says so (`image_cache`, `--image-cache`): the cached and
the lazy path augment the same way but not bit-identically, so the choice is part of the trial's
identity. A missing cache is then built when the dataset is loaded;
`shiftbench data preprocess --dataset PACS --data-dir D` builds it ahead.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from shiftbench.datasets.augment import augment_batch, eval_batch, hue_mode
from shiftbench.datasets.base import CollatedBatch
from shiftbench.datasets.cache_files import atomic_output, load_json, save_json
from shiftbench.errors import IMAGE_ERRORS, ShiftbenchError, image_error
from shiftbench.paths import cache_dir

CACHE_VERSION = 2  # 2: pixels stored channels-last, [N, size, size, 3]
MODE_VARIABLE = "SHIFTBENCH_IMAGE_CACHE"


def refuse_mode_variable() -> None:
    """Raise if `SHIFTBENCH_IMAGE_CACHE` is set: whether a trial reads the cache is its spec's
    `image_cache`, so that no setting outside the spec changes training."""
    if MODE_VARIABLE in os.environ:
        raise ShiftbenchError(
            f"{MODE_VARIABLE}={os.environ[MODE_VARIABLE]!r} is not read (a trial's inputs are all "
            "in its spec); unset it and choose per trial: `shiftbench train --image-cache`, "
            "`image_cache = true` in a sweep spec (or `sweep launch --image-cache`), "
            "`run_trial(..., image_cache=True)`; without it the images are decoded lazily")


def image_cache_dir() -> Path:
    path = cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_key(samples: Sequence[tuple[str, int]], base: str | os.PathLike, size: int) -> str:
    """A hash of the cache version, the size and every file's relative path, size, mtime, label."""
    h = hashlib.sha256(f"shiftbench-image-cache-v{CACHE_VERSION}|{size}".encode())
    for path, label in samples:
        st = os.stat(path)
        rel = os.path.relpath(path, base)
        h.update(f"\n{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{label}".encode())
    return h.hexdigest()[:20]


def cache_paths(dataset: str, env: str, size: int, key: str) -> tuple[Path, Path]:
    """(data file, metadata file) of one environment's cache."""
    safe_env = re.sub(r"[^A-Za-z0-9_.+-]", "_", env)
    stem = f"{dataset}-{safe_env}-{size}px-{key}"
    root = image_cache_dir()
    return root / f"{stem}.u8", root / f"{stem}.json"


def find_cache(dataset: str, env: str, samples: Sequence[tuple[str, int]], base, size: int,
               ) -> tuple[Path, dict] | None:
    """The data file and metadata of a complete, matching cache, else None."""
    key = source_key(samples, base, size)
    data, meta_path = cache_paths(dataset, env, size, key)
    if not data.is_file():
        return None
    meta = load_json(meta_path)
    if not isinstance(meta, dict):
        return None
    expected = len(samples) * 3 * size * size
    if meta.get("key") != key or meta.get("shape") != [len(samples), size, size, 3] or \
            data.stat().st_size != expected or meta.get("labels") != [s[1] for s in samples]:
        return None
    return data, meta


class _Decode(Dataset):
    """Decode + resize one image to uint8 `[size, size, 3]` (for building the cache)."""

    def __init__(self, samples: Sequence[tuple[str, int]], size: int):
        self.samples, self.size = samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        path = self.samples[i][0]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (*IMAGE_ERRORS, Image.DecompressionBombError) as e:
            raise image_error(path, e) from e
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image).copy())


def build_cache(dataset: str, env: str, samples: Sequence[tuple[str, int]], base, size: int,
                num_workers: int | None = None) -> Path:
    """Decode every image of one environment into the cache; returns the data file."""
    from shiftbench.data import default_num_workers

    if not samples:
        raise ShiftbenchError(f"{dataset}/{env}: no images to preprocess")
    key = source_key(samples, base, size)
    data, meta_path = cache_paths(dataset, env, size, key)
    shape = (len(samples), size, size, 3)
    workers = default_num_workers() if num_workers is None else num_workers
    with atomic_output(data) as tmp:
        out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
        loader = DataLoader(_Decode(samples, size), batch_size=32, num_workers=workers)
        start = 0
        for batch in loader:
            out[start:start + len(batch)] = batch.numpy()
            start += len(batch)
        out.flush()
        del out
    meta = {"version": CACHE_VERSION, "dataset": dataset, "environment": env, "key": key,
            "shape": list(shape), "labels": [s[1] for s in samples], "source": str(base)}
    save_json(meta_path, meta, required=True)
    # Caches of older file lists for the same dataset, environment and size are now stale.
    for old in data.parent.glob(f"{data.name.rsplit('-', 1)[0]}-*"):
        if old.suffix in (".u8", ".json") and old.stem != data.stem:
            old.unlink(missing_ok=True)
    return data


def ensure_cache(dataset: str, env: str, samples: Sequence[tuple[str, int]], base, size: int,
                 num_workers: int | None = None) -> tuple[Path, dict]:
    """The matching cache of one environment (data file, metadata), built first when missing.

    Processes that need the same missing cache (the jobs of a sweep) build it once: the builder
    holds an exclusive lock on `<Dataset>-<env>-<size>px.lock` beside the caches; the others wait
    for it, then find what it built."""
    found = find_cache(dataset, env, samples, base, size)
    if found is not None:
        return found
    data, _ = cache_paths(dataset, env, size, source_key(samples, base, size))
    lock_path = data.with_name(data.name.rsplit("-", 1)[0] + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            found = find_cache(dataset, env, samples, base, size)
            if found is None:
                build_cache(dataset, env, samples, base, size, num_workers)
                found = find_cache(dataset, env, samples, base, size)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    if found is None:
        raise ShiftbenchError(f"{dataset}/{env}: the image cache just built at {data} does not "
                              "match its source files (were they changed meanwhile?)")
    return found


class CachedImageDomain(Dataset):
    """One environment read from a preprocessed cache (see the module docstring).

    Has the attributes of `ImageFolderDomain` (`samples`, `targets`, `classes`, `name`) so
    that splits and `shiftbench data` work unchanged.
    """

    def __init__(self, data_path: str | os.PathLike, samples: list[tuple[str, int]],
                 classes: Sequence[str], augment: bool, size: int, name: str = "",
                 hue: str = "hsv"):
        self.data_path, self.samples, self.classes = Path(data_path), samples, list(classes)
        self.augment, self.size, self.name = augment, size, name
        self.targets = [label for _, label in samples]
        self.hue = hue_mode({"hue": hue})
        self._array: np.memmap | None = None

    @property
    def array(self) -> np.memmap:
        if self._array is None:  # opened lazily, once per (worker) process
            n = len(self.samples)
            self._array = np.memmap(self.data_path, dtype=np.uint8, mode="r",
                                    shape=(n, self.size, self.size, 3))
        return self._array

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # never pickle the mapped data into worker processes
        return state

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs `[B, 3, size, size]` (augmented or not) and labels `[B]` of `indices`."""
        idx = np.asarray(indices, dtype=np.int64)
        # [B, 3, size, size] in channels-last memory: the layout of the fast uint8 resize
        x = torch.from_numpy(np.ascontiguousarray(self.array[idx])).permute(0, 3, 1, 2)
        x = augment_batch(x, self.size, hue=self.hue) if self.augment else eval_batch(x)
        return x, torch.as_tensor([self.targets[i] for i in idx], dtype=torch.long)

    def __getitems__(self, indices: Sequence[int]) -> CollatedBatch:
        """The batch's (input, label) pairs, carrying the batch tensors themselves so that
        `shiftbench.data.collate` passes them on without stacking the images again."""
        return CollatedBatch(*self.batch(indices))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch([i])
        return x[0], int(y[0])
