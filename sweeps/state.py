"""The state of a sweep's jobs, and the lock that makes sure a job never runs twice at once.

Files in a job directory (besides the trainer's `results.jsonl`, `done`, `failed`, checkpoints):

* `.lock` — held with `flock(LOCK_EX)` by the worker for as long as it runs. The kernel drops the
  lock when the process dies, however it dies, so a crashed job never blocks its own restart; a
  second worker started for the same job (a second launcher, a requeued Slurm task) cannot take it
  and exits at once. (On NFS, Linux implements flock with the server's byte-range locks.)
* `running` — JSON `{pid, host, started, heartbeat}`, written atomically after the lock is taken;
  the worker touches it every `heartbeat` seconds and removes it on exit. `status` calls a job
  running only if this file is fresh (and, on the same host, its pid is alive), so a job that was
  SIGKILLed or lost with its node shows up as incomplete, not running.
* `attempts.jsonl` — one line per start: when, where, whether it resumed from a checkpoint.
* `job.json` — the job's spec, identity and hash (`shiftbench.trial_record`, which owns the
  trial's own files).

States: done (`done` marker), running (above), failed (`failed` marker from the trainer, with its
error), incomplete (started, neither done nor failed nor running: resumable from its checkpoint
when there is one), not_launched.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shiftbench.paths import atomic_write_bytes
from shiftbench.trial_record import (
    ATTEMPTS_FILE,
    CHECKPOINT_FILE,
    DONE_FILE,
    FAILED_FILE,
    JOB_FILE,
    LOCK_FILE,
    PREV_CHECKPOINT_FILE,
    RESULTS_FILE,
    RUNNING_FILE,
)

STATES = ("done", "running", "incomplete", "failed", "not_launched")
__all__ = ["JOB_FILE", "JobLock", "JobState", "STATES", "job_state", "record_attempt"]


def heartbeat_seconds() -> float:
    """How often a running job touches its `running` file ($SHIFTBENCH_HEARTBEAT, default 10 s)."""
    return float(os.environ.get("SHIFTBENCH_HEARTBEAT", "10"))


def stale_after(interval: float) -> float:
    """A heartbeat older than this means the job is no longer running."""
    return 3 * interval + 5


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    try:  # a zombie (killed, not yet reaped) is not running
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class JobLock:
    """Exclusive, crash-safe ownership of a job directory, with a heartbeat."""

    def __init__(self, job_dir: str | os.PathLike, interval: float | None = None):
        self.dir = Path(job_dir)
        self.interval = interval or heartbeat_seconds()
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if another process holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "heartbeat": self.interval}
        atomic_write_bytes(self.dir / RUNNING_FILE, json.dumps(info).encode())
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="shiftbench-heartbeat", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        path = self.dir / RUNNING_FILE
        while not self._stop.wait(self.interval):
            try:
                os.utime(path)
            except OSError:
                pass

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            (self.dir / RUNNING_FILE).unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> JobLock:
        if not self.acquire():
            raise BlockingIOError(f"{self.dir} is locked by another process")
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def record_attempt(job_dir: str | os.PathLike, **extra: Any) -> None:
    """Append one line to `attempts.jsonl` (call with the lock held)."""
    entry = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), **extra}
    with open(Path(job_dir) / ATTEMPTS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_attempts(job_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(job_dir) / ATTEMPTS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


@dataclass
class JobState:
    state: str
    detail: str = ""


def running_info(job_dir: Path, now: float | None = None) -> dict[str, Any] | None:
    """The `running` file's content if its heartbeat is fresh and its process plausible."""
    path = job_dir / RUNNING_FILE
    try:
        mtime = path.stat().st_mtime
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    age = (now or time.time()) - mtime
    if age > stale_after(float(info.get("heartbeat", heartbeat_seconds()))):
        return None
    if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
        return None
    info["age"] = age
    return info


def job_state(job_dir: str | os.PathLike) -> JobState:
    """Which of `STATES` a job directory is in, with a short detail."""
    d = Path(job_dir)
    if (d / DONE_FILE).exists():
        return JobState("done")
    info = running_info(d)
    if info is not None:
        return JobState("running", f"pid {info['pid']} on {info['host']}")
    failed = d / FAILED_FILE
    if failed.exists():
        try:
            error = json.loads(failed.read_text(encoding="utf-8")).get("error", "")
        except (OSError, json.JSONDecodeError):
            error = "(unreadable failed marker)"
        return JobState("failed", str(error))
    started = any((d / name).exists() for name in (ATTEMPTS_FILE, RESULTS_FILE, CHECKPOINT_FILE))
    if started:
        resumable = (d / CHECKPOINT_FILE).exists() or (d / PREV_CHECKPOINT_FILE).exists()
        return JobState("incomplete", "resumable from its checkpoint" if resumable else
                        "no checkpoint yet (restarts from step 0)")
    return JobState("not_launched")


def try_lock_for_delete(job_dir: Path) -> int | None:
    """Take a job's lock (fd) so it can be deleted without racing a starting worker."""
    if not job_dir.exists():
        return None
    fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
