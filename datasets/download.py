"""Fetching, verifying and unpacking dataset archives (`shiftbench data download`).

A download goes through three stages, each of which leaves nothing half-done where a loader
looks:

1. **fetch**: every file of a source is streamed to `<data-dir>/.downloads/<NAME>/<file>.part`
   with a progress bar; an interrupted transfer is resumed with an HTTP `Range` request (by a
   retry in the same run or by the next run), then the size (the server's `Content-Length` /
   `Content-Range`, and the size in the source table when known) and the MD5 / SHA-256 (when
   the table knows one) are checked before the file is renamed to its final name;
2. **unpack**: archives are extracted into `<data-dir>/.staging-<NAME>-<host>-<pid>/` (members
   that would land outside it are refused; a tar must end with its end-of-archive block), the
   source's `arrange` step builds the loader's layout there, its class folders are counted
   (`Source.classes`), and a marker file `.shiftbench-download.json` records each file's
   SHA-256 and the URL it actually came from (a mirror's, or "placed by hand");
3. **publish**: the finished folder is renamed to `<data-dir>/<target>` in one `os.replace`.

All three run under a lock per source (`<data-dir>/.downloads/<NAME>.lock`,
`shiftbench.datasets.archive_checks`): a second `data download` of the same source (another
Slurm job, say) waits, then finds the first one's folder and reuses it. A re-run finds the
marker and does nothing; stale `.part` files are resumed and stale staging folders removed.
Sources a package downloads (wilds) are fetched into a staging folder and published the same
way, so an interrupted download never leaves a half-filled dataset folder.

The base URL of every file can be redirected to a mirror laid out as
`<base>/<NAME>/<file>` (`--base-url` or `$SHIFTBENCH_DOWNLOAD_BASE_URL`); a file put by hand
at `<data-dir>/.downloads/<NAME>/<file>` is verified and used without any network access.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shiftbench.datasets.archive_checks import (
    DownloadError,
    DownloadLock,
    check_classes,
    check_tar_end,
    staging_name,
)
from shiftbench.errors import StorageError

BASE_URL_ENV = "SHIFTBENCH_DOWNLOAD_BASE_URL"
# Write errors of the local disk (stop at once: retrying cannot help; the .part file is kept).
LOCAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
DOWNLOADS = ".downloads"
MARKER = ".shiftbench-download.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One file of a source. `kind`: "zip", "tar" (any compression) or "file" (kept as is)."""

    url: str
    filename: str
    kind: str = "file"
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None

    @property
    def checksum(self) -> tuple[str, str] | None:
        if self.sha256:
            return "sha256", self.sha256
        if self.md5:
            return "md5", self.md5
        return None


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from and how its files become the loader's layout.

    `arrange(raw, out)` moves what the archives put under `raw` into `out`, which becomes
    `<data-dir>/<target>`. `manual` (non-empty) says why the files cannot be fetched
    automatically and what to do; `parts` makes a source a group of other sources.
    """

    name: str
    target: str
    remotes: tuple[Remote, ...] = ()
    arrange: Callable[[Path, Path], None] | None = None
    homepage: str = ""
    licence: str = ""
    datasets: tuple[str, ...] = ()
    manual: str = ""
    parts: tuple[str, ...] = ()
    fetcher: Callable[[Source, Path, Callable[[str], None]], Path] | None = None
    classes: int = 0  # class folders every domain folder must hold once arranged (0: unchecked)
    class_subpath: str = ""  # where they are inside a domain folder (Office-31: "images")


def base_url(override: str | None = None) -> str | None:
    """The mirror every file is fetched from instead of its own URL, if any."""
    value = override if override is not None else os.environ.get(BASE_URL_ENV)
    return value.rstrip("/") if value else None


def file_url(source: Source, remote: Remote, base: str | None) -> str:
    return f"{base}/{source.name}/{remote.filename}" if base else remote.url


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, remote: Remote, url: str, expected_size: int | None = None) -> None:
    """Check a complete file's size and checksum; a file that fails is deleted."""
    size = path.stat().st_size
    for want in (remote.size, expected_size):
        if want is not None and size != want:
            path.unlink()
            raise DownloadError(f"{remote.filename} from {url}: {size} bytes, expected {want}; "
                                "the partial file was removed, rerun the command to fetch it "
                                "again")
    if remote.checksum:
        algorithm, want = remote.checksum
        got = file_digest(path, algorithm)
        # a shorter value is a published prefix (torchvision's weight files: 8 hex digits)
        if not got.startswith(want.lower()) or len(want) < 8:
            path.unlink()
            raise DownloadError(
                f"{remote.filename} from {url}: {algorithm} {got} does not match the published "
                f"{want}; the file was removed. The source may have changed or the transfer was "
                "corrupted: rerun, and if it fails again report it (or check the file by hand "
                "and place it in the downloads folder)")


def _offline_hint(source: Source, remote: Remote, dest: Path) -> str:
    return (f"download {remote.url} by hand (on a machine with network access) and put it at "
            f"{dest}, then rerun the command: the file is verified and unpacked without network "
            f"access; or point ${BASE_URL_ENV} / --base-url at a mirror laid out as "
            f"<base>/{source.name}/{remote.filename}")


def _content_range_total(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a `Content-Range: bytes a-b/total` header."""
    m = re.match(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) else None
    return first, (int(m.group(2)) if m.group(2) != "*" else None)


def fetch(source: Source, remote: Remote, dest_dir: Path, base: str | None = None,
          progress: bool | None = None, retries: int = 4, timeout: float = 60.0) -> Path:
    """Download one file into `dest_dir` (resuming a `.part` file), verified; returns its path."""
    from tqdm import tqdm

    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / remote.filename
    url = file_url(source, remote, base)
    if final.is_file():
        verify(final, remote, f"{final} (placed earlier)")
        return final
    part = final.with_name(final.name + ".part")
    total: int | None = remote.size
    show = sys.stderr.isatty() if progress is None else progress
    last_error: Exception | None = None
    for attempt in range(retries):
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": "shiftbench-download"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=timeout) as resp:
                if resp.status == 206:
                    first, total = _content_range_total(resp.headers.get("Content-Range"))
                    if first != offset:  # a range we did not ask for: start over
                        offset = 0
                else:
                    offset = 0  # the server ignored the range (or none was asked)
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length else remote.size
                ctype = resp.headers.get("Content-Type", "")
                if ctype.startswith("text/html") and not remote.filename.endswith(".html"):
                    raise DownloadError(
                        f"{url} answered with a web page instead of {remote.filename} (a "
                        "sign-in, terms or quota page, or a moved file): "
                        + _offline_hint(source, remote, final))
                with open(part, "ab" if offset else "wb") as out, tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True,
                        desc=f"{source.name}/{remote.filename}", disable=not show,
                        file=sys.stderr) as bar:
                    while True:
                        try:
                            block = resp.read(CHUNK)
                        except http.client.IncompleteRead as e:  # keep what did arrive
                            out.write(e.partial)
                            raise
                        if not block:
                            break
                        out.write(block)
                        bar.update(len(block))
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # asked past the end: complete if the size matches
                _, total = _content_range_total(e.headers.get("Content-Range"))
                if total == offset:
                    break
                part.unlink()
                last_error = e
                continue
            if e.code in (401, 403, 404, 410, 451):
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}. The file is gone or "
                                    "needs a sign-in or acceptance of terms: "
                                    + _offline_hint(source, remote, final)) from None
            last_error = e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if isinstance(e, OSError) and e.errno in LOCAL_ERRNOS:  # our disk, not the network
                raise StorageError(part, e) from e
            last_error = e
            if isinstance(e, urllib.error.URLError) and not part.is_file() and attempt == 0 \
                    and not isinstance(e.reason, TimeoutError):
                raise DownloadError(f"cannot reach {url} ({e.reason}); are you offline? "
                                    + _offline_hint(source, remote, final)) from None
        size = part.stat().st_size if part.is_file() else 0
        if last_error is None and (total is None or size >= total):
            break
        if attempt + 1 < retries:
            time.sleep(min(0.2 * 2 ** attempt, 5.0))
            last_error = None
    else:
        size = part.stat().st_size if part.is_file() else 0
        raise DownloadError(f"{url}: transfer interrupted at {size} of {total or '?'} bytes "
                            f"({last_error or 'connection closed early'}); rerun the command "
                            f"to resume from {part}")
    verify(part, remote, url, expected_size=total)
    os.replace(part, final)
    return final


def _safe_member(root: Path, name: str, archive: Path) -> Path:
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise DownloadError(f"{archive}: member {name!r} would be written outside the "
                            "extraction folder; refusing the archive")
    return target


def unpack(path: Path, remote: Remote, into: Path) -> None:
    """Extract an archive (or copy a plain file) into the folder `into`."""
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    try:
        if remote.kind == "zip":
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    _safe_member(root, info.filename, path)
                    zf.extract(info, into)
        elif remote.kind == "tar":
            with tarfile.open(path) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(into, filter="data")
                else:  # pragma: no cover - Python without extraction filters
                    for member in tf.getmembers():
                        _safe_member(root, member.name, path)
                        if member.issym() or member.islnk():
                            raise DownloadError(f"{path}: links are not allowed ({member.name})")
                    tf.extractall(into)
                try:
                    check_tar_end(tf, path)
                except DownloadError:
                    path.unlink(missing_ok=True)
                    raise
        else:
            shutil.copyfile(path, into / remote.filename)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DownloadError(f"{path} is not a readable {remote.kind} archive ({e}); delete it "
                            "and rerun to download it again") from e


def find_folder_with(raw: Path, names: tuple[str, ...], depth: int = 3) -> Path:
    """The folder under `raw` (at most `depth` levels down) that holds every folder in `names`."""
    frontier = [raw]
    for _ in range(depth + 1):
        for folder in frontier:
            if all((folder / n).is_dir() for n in names):
                return folder
        frontier = [c for f in frontier for c in sorted(f.iterdir())
                    if c.is_dir() and not c.name.startswith(("__MACOSX", "."))]
    raise DownloadError(f"the downloaded archives do not contain the folders "
                        f"{', '.join(names)} (looked {depth} levels deep under {raw})")


def move_folders(*names: str, rename: dict[str, str] | None = None,
                 ) -> Callable[[Path, Path], None]:
    """An `arrange` step: move the folders `names` (found together) into the output."""

    def arrange(raw: Path, out: Path) -> None:
        base = find_folder_with(raw, names)
        out.mkdir(parents=True, exist_ok=True)
        for n in names:
            os.replace(base / n, out / (rename or {}).get(n, n))

    return arrange


def move_files(*names: str, subdir: str = "") -> Callable[[Path, Path], None]:
    """An `arrange` step: move plain files into `out/<subdir>`."""

    def arrange(raw: Path, out: Path) -> None:
        (out / subdir).mkdir(parents=True, exist_ok=True)
        for n in names:
            os.replace(raw / n, out / subdir / n)

    return arrange


def install(source: Source, data_dir: Path, base: str | None = None,
            keep_archives: bool = False, progress: bool | None = None,
            log: Callable[[str], None] = print) -> Path:
    """Download, verify and unpack one source into `data_dir/<target>`; returns that folder.
    Under the source's lock: a concurrent run of the same source waits, then reuses its result."""
    if not source.target and source.fetcher is not None:  # files that live elsewhere (weights)
        with DownloadLock(data_dir / DOWNLOADS, source.name, log):
            return source.fetcher(source, data_dir, log, base=base, progress=progress)
    target = data_dir / source.target
    if (target / MARKER).is_file():
        log(f"{source.name}: already downloaded ({target})")
        return target
    with DownloadLock(data_dir / DOWNLOADS, source.name, log):
        if (target / MARKER).is_file():
            log(f"{source.name}: already downloaded ({target})")
            return target
        if target.exists():
            log(f"{source.name}: {target} already exists (not made by `data download`); left as "
                "it is: remove it to download again")
            return target
        for stale in data_dir.glob(f".staging-{source.name}-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        if source.fetcher is not None:
            return _install_fetched(source, data_dir, target, log)
        return _install_files(source, data_dir, target, base, keep_archives, progress, log)


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _install_fetched(source: Source, data_dir: Path, target: Path, log) -> Path:
    """A package downloads it (wilds) into a staging folder, published in one rename."""
    staging = data_dir / staging_name(source.name)
    try:
        staging.mkdir(parents=True)
        path = source.fetcher(source, staging, log)
        if not path.is_dir():
            raise DownloadError(f"{source.name}: the download made no folder {path.name}")
        (path / MARKER).write_text(json.dumps({"source": source.name, "via": "package",
                                               "installed": _stamp()}, indent=1))
        os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{source.name}: ready in {target}")
    return target


def _install_files(source: Source, data_dir: Path, target: Path, base: str | None,
                   keep_archives: bool, progress: bool | None, log) -> Path:
    downloads = data_dir / DOWNLOADS / source.name
    if source.manual and not source.remotes:
        raise DownloadError(f"{source.name} cannot be downloaded automatically: {source.manual}")
    if source.manual and not all((downloads / r.filename).is_file() for r in source.remotes):
        missing = [r.filename for r in source.remotes if not (downloads / r.filename).is_file()]
        raise DownloadError(f"{source.name} cannot be downloaded automatically: "
                            f"{source.manual}. Put {', '.join(missing)} in {downloads}, then "
                            "rerun the command to verify and unpack them")
    placed = {r.filename for r in source.remotes if (downloads / r.filename).is_file()}
    files = [fetch(source, r, downloads, base, progress) for r in source.remotes]
    staging = data_dir / staging_name(source.name)
    raw, out = staging / "raw", staging / "out"
    try:
        for path, remote in zip(files, source.remotes):
            log(f"{source.name}: unpacking {path.name}")
            unpack(path, remote, raw)
        (source.arrange or move_folders())(raw, out)
        if source.classes:
            try:
                check_classes(out, source.name, source.classes, source.class_subpath)
            except DownloadError:
                for path in files:
                    path.unlink(missing_ok=True)
                raise
        record = {"source": source.name, "files": [
            {"file": r.filename, "published_url": r.url,
             "url": "placed by hand" if r.filename in placed else file_url(source, r, base),
             "bytes": p.stat().st_size, "sha256": file_digest(p, "sha256")}
            for p, r in zip(files, source.remotes)], "installed": _stamp()}
        (out / MARKER).write_text(json.dumps(record, indent=1))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archives:
        for path in files:
            path.unlink(missing_ok=True)
    log(f"{source.name}: ready in {target}")
    return target
