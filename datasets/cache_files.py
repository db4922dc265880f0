"""Reading and writing the on-disk caches of generated or decoded datasets, one way for all.

A cache is an optimisation, never a source of truth, so these helpers share three rules:
* a missing file reads as None (the caller builds the data);
* a file that cannot be read (torn, truncated, from another version) is renamed with the
  suffix `.corrupt` (kept for inspection, never read again) and reads as None;
* writes are atomic (temporary file, fsync, rename: a crash leaves the old file or none), and a
  cache folder that cannot be written (read-only, full) only costs rebuilding next time.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from shiftbench.errors import ShiftbenchError
from shiftbench.paths import atomic_write_bytes

T = TypeVar("T")


def quarantine(path: Path) -> None:
    """Move an unreadable cache file aside (its suffix replaced by `.corrupt`)."""
    try:
        os.replace(path, path.with_suffix(".corrupt"))
    except OSError:
        pass


def load_tensors(path: Path, convert: Callable[[Any], T] = lambda data: data) -> T | None:
    """`convert(torch.load(path))` (tensors only, on the CPU), or None when the file is missing
    or unreadable (then quarantined). `convert` failing (a file of the wrong shape) counts as
    unreadable."""
    import torch

    if not path.is_file():
        return None
    try:
        return convert(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:  # noqa: BLE001 - any failure to read means: rebuild
        quarantine(path)
        return None


def save_tensors(path: Path, data: Any) -> bool:
    """`torch.save(data)` atomically; False (nothing written) when the folder is not writable."""
    import torch

    buffer = io.BytesIO()
    torch.save(data, buffer)
    return write_bytes(path, buffer.getvalue())


def write_bytes(path: Path, data: bytes, required: bool = False) -> bool:
    """Write atomically; a failure returns False, or raises `StorageError` when `required`
    (a cache the user asked to build)."""
    try:
        atomic_write_bytes(path, data)
    except (OSError, ShiftbenchError):  # StorageError: read-only or full cache folder
        if required:
            raise
        return False
    return True


def load_json(path: Path) -> Any | None:
    """A JSON cache file's content, or None when missing or unreadable (then quarantined)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        quarantine(path)
        return None


def save_json(path: Path, data: Any, required: bool = False) -> bool:
    return write_bytes(path, json.dumps(data, indent=1).encode(), required)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write a large file into (e.g. a memory map); on
    success it is fsynced and renamed to `path`, on any error removed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
