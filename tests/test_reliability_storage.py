"""A full disk or a read-only output directory: a clear error, nothing lost, resumable afterwards.

Two ways of injecting the fault: a failing `fsync` of a regular file at the N-th write (every
write point of a trial is tried, so the error strikes while writing a record, a checkpoint, its
checksum, the model and the `done` marker), and, when the tests run as root, a real tiny tmpfs
that fills up (partial writes included) or is mounted read-only.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import uuid

import pytest
from helpers import stable_records

from shiftbench.cli import main
from shiftbench.errors import StorageError
from shiftbench.trainer import TrainArgs, train

QUIET = {"log": lambda msg: None, "progress": False}
FLAGS = ["--dataset", "DebugVector", "--algorithm", "ERM", "--test-envs", "1", "--steps", "5",
         "--checkpoint-freq", "2", "--hparams", '{"batch_size": 8}']


def _args(out) -> TrainArgs:
    return TrainArgs(dataset="DebugVector", algorithm="ERM", test_envs=[1], steps=5, checkpoint_freq=2,
                     output_dir=str(out), hparams='{"batch_size": 8}')


def _complete_lines(path) -> list[dict]:
    """Every complete line of results.jsonl must be a valid record (a torn tail is allowed)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]  # what follows the last newline is a torn tail, if anything
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(_args(out), **QUIET)
    return stable_records(out)


class FailingFsync:
    """os.fsync that raises `error` at the n-th fsync of a regular file (directories pass)."""

    def __init__(self, n: int, code: int):
        self.n, self.code, self.count, self.fired = n, code, 0, False
        self.original = os.fsync

    def __call__(self, fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            self.count += 1
            if self.count == self.n:
                self.fired = True
                raise OSError(self.code, os.strerror(self.code))
        self.original(fd)


def test_every_write_point_failing_is_clear_and_resumable(tmp_path, monkeypatch, reference):
    counter = FailingFsync(0, errno.ENOSPC)
    monkeypatch.setattr(os, "fsync", counter)
    train(_args(tmp_path / "count"), **QUIET)
    n_writes = counter.count
    assert n_writes >= 9  # 3 records, 3 checkpoints with checksums, model, done
    tried = 0
    for n in range(1, n_writes + 1):
        code = errno.ENOSPC if n % 2 else errno.EROFS
        out = tmp_path / f"fail{n}"
        fault = FailingFsync(n, code)
        monkeypatch.setattr(os, "fsync", fault)
        with pytest.raises(StorageError) as info:
            train(_args(out), **QUIET)
        assert fault.fired
        message = str(info.value)
        assert str(out) in message
        assert ("no space left on device" if code == errno.ENOSPC else "read-only") in message
        assert not (out / "done").exists() and not (out / "failed").exists()
        before = _complete_lines(out / "results.jsonl")
        assert [r["step"] for r in before] == [0, 2, 4][:len(before)]
        monkeypatch.setattr(os, "fsync", counter.original)  # space is back
        train(_args(out), **QUIET)
        assert stable_records(out) == reference, f"write {n}"
        tried += 1
    assert tried == n_writes


def test_cli_reports_a_failing_disk_and_resumes(tmp_path, monkeypatch, capsys, reference):
    out = tmp_path / "run"
    monkeypatch.setattr(os, "fsync", FailingFsync(4, errno.ENOSPC))
    code = main(["train", *FLAGS, "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 4
    assert "no space left on device" in err and str(out) in err and "Traceback" not in err
    assert len(_complete_lines(out / "results.jsonl")) >= 1
    monkeypatch.undo()
    assert main(["train", *FLAGS, "--output-dir", str(out)]) == 0
    assert stable_records(out) == reference


def _mount(path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"shiftbench-{uuid.uuid4().hex[:6]}",
                           str(path)], capture_output=True)
    return proc.returncode == 0


def _remount(path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    if not _mount(mnt, "size=2m"):
        pytest.skip("needs root and permission to mount a tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.tmpfs
def test_real_full_tmpfs_then_more_space(tiny_tmpfs, capsys, reference):
    out = tiny_tmpfs / "run"
    # a checkpoint is ~1 MB: the second one (checkpoint + previous) does not fit in 2 MB
    code = main(["train", *FLAGS, "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "no space left on device" in err and "Traceback" not in err
    before = _complete_lines(out / "results.jsonl")
    assert 1 <= len(before) < 3 and not (out / "done").exists()
    assert [r["step"] for r in before] == [0, 2, 4][:len(before)]
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # no temporary file left behind
    _remount(tiny_tmpfs, "size=32m")
    assert main(["train", *FLAGS, "--output-dir", str(out)]) == 0
    assert stable_records(out) == reference


@pytest.mark.tmpfs
def test_real_read_only_directory(tiny_tmpfs, capsys, reference):
    out = tiny_tmpfs / "run"
    _remount(tiny_tmpfs, "size=32m")
    train(_args(out), **QUIET)  # a finished trial ...
    (out / "done").unlink()  # ... made unfinished again so the rerun has to write
    saved = (out / "results.jsonl").read_bytes()
    _remount(tiny_tmpfs, "ro")
    code = main(["train", *FLAGS, "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 4 and "read-only file system" in err and "Traceback" not in err
    assert (out / "results.jsonl").read_bytes() == saved
    code = main(["train", *FLAGS, "--output-dir", str(tiny_tmpfs / "new")])
    err = capsys.readouterr().err
    assert code == 4 and "read-only file system" in err and str(tiny_tmpfs / "new") in err
    _remount(tiny_tmpfs, "rw")
    assert main(["train", *FLAGS, "--output-dir", str(tiny_tmpfs / "new")]) == 0
    assert stable_records(tiny_tmpfs / "new") == reference


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch, reference):
    out = tmp_path / "run"
    # stop the trial once two checkpoints exist: when the third record is written
    fault = FailingFsync(7, errno.ENOSPC)  # writes: rec0, ckpt0, sha0, rec2, ckpt2, sha2, rec4...
    monkeypatch.setattr(os, "fsync", fault)
    with pytest.raises(StorageError):
        train(_args(out), **QUIET)
    monkeypatch.undo()
    assert (out / "checkpoint.prev.pt").exists()
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated (e.g. by a full disk)
    messages: list[str] = []
    train(_args(out), log=messages.append, progress=False)
    assert any("checkpoint.pt is corrupted or incomplete" in m for m in messages), messages
    assert any("resuming from the checkpoint at step 0" in m for m in messages), messages
    assert stable_records(out) == reference


def test_sweep_worker_reports_a_full_disk_and_leaves_the_job_resumable(tmp_path, monkeypatch, capsys,
                                                                        reference):
    from shiftbench.sweeps.state import job_state
    from shiftbench.sweeps.worker import run

    out = tmp_path / "job"
    argv = [*FLAGS, "--output-dir", str(out)]
    for n in (1, 6):  # the lock's `running` file; a write during training
        monkeypatch.setattr(os, "fsync", FailingFsync(n, errno.ENOSPC))
        assert run(argv) == 4
        err = capsys.readouterr().err
        assert "no space left on device" in err and "Traceback" not in err
        monkeypatch.undo()
        assert job_state(out).state in ("incomplete", "not_launched")
    assert run(argv) == 0
    assert job_state(out).state == "done"
    assert stable_records(out) == reference
