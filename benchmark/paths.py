"""Where shiftbench keeps generated data, and crash-safe file writing."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from shiftbench.errors import StorageError


def cache_dir() -> Path:
    """$SHIFTBENCH_CACHE, else ~/.cache/shiftbench (created on demand)."""
    root = os.environ.get("SHIFTBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "shiftbench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that a crash leaves either the old file or the new one, never a torn one.

    An OSError (disk full, read-only directory...) becomes a `StorageError` naming the path; the
    old file, if any, is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise StorageError(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise StorageError(path, e) from e
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
