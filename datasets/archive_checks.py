"""What makes `shiftbench data download` safe to run twice at once and sure of what it unpacked.

* `DownloadLock`: one lock file per source, `<data-dir>/.downloads/<NAME>.lock` (`flock`, which
  also holds across the hosts of a shared file system that supports it). A second download of
  the same source waits for the first, then finds its finished folder and reuses it; no two
  runs ever write the same `.part` file or staging folder.
* `check_tar_end(tf, path)`: a tar archive must end with its end-of-archive block (POSIX: two
  zero blocks). A tar cut exactly at a member boundary is otherwise a valid, shorter archive
  (e.g. VisDA's train.tar with 9 of its 12 class folders), which only this check refuses.
* `check_classes(out, source)`: after arranging, every domain folder must hold the number of
  class folders the dataset is published with (`Source.classes`).
"""

from __future__ import annotations

import os
import socket
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shiftbench.datasets.lookup import subdirs
from shiftbench.errors import ShiftbenchError, StorageError


class DownloadError(ShiftbenchError):
    """A file could not be fetched or failed verification."""


class DownloadLock:
    """An exclusive lock on one source's downloads under a data directory (a context manager)."""

    def __init__(self, downloads: Path, name: str, log: Callable[[str], None] = print):
        self.path = downloads / f"{name}.lock"
        self.name, self.log, self.fd = name, log, None

    def __enter__(self) -> DownloadLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(self.path, e) from e
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log(f"{self.name}: another `data download` of it is running (lock {self.path}); "
                     "waiting for it to finish")
            start = time.time()
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            self.log(f"{self.name}: the other download ended after {time.time() - start:.0f} s")
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def staging_name(source: str) -> str:
    """A staging folder name no other run (on any host) uses."""
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40]
    return f".staging-{source}-{host}-{os.getpid()}"


def check_tar_end(tf: tarfile.TarFile, path: Path) -> None:
    """`tf` (read to its last member) ends with an end-of-archive block, else a clear error."""
    try:
        tf.fileobj.seek(tf.offset)
        marker = tf.fileobj.read(tarfile.BLOCKSIZE)
    except (OSError, EOFError) as e:
        marker, why = b"", str(e)
    else:
        why = "the file ends after its last member"
    if len(marker) < tarfile.BLOCKSIZE or marker.strip(b"\0"):
        raise DownloadError(f"{path}: truncated tar archive (no end-of-archive block after its "
                            f"{len(tf.getmembers())} members; {why}); it was removed, rerun the "
                            "command to fetch it again")


def check_classes(out: Path, name: str, classes: int, subpath: str = "") -> None:
    """Each domain folder of `out` holds `classes` class folders (under `subpath`)."""
    problems = []
    for domain in subdirs(out):
        base = out / domain / subpath
        found = subdirs(base) if base.is_dir() else []
        if len(found) != classes:
            problems.append(f"{domain}: {len(found)} class folders")
    if problems:
        raise DownloadError(f"{name}: the unpacked archives are incomplete or not the published "
                            f"release (expected {classes} class folders per domain; found "
                            f"{'; '.join(problems)}); the archives were removed, "
                            "rerun the command to fetch them again")
