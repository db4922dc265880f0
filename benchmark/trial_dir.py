"""A trial directory's files: its records (`results.jsonl`), markers and trial check.

The layout is described in `shiftbench.trial_record`; this module reads and writes it
crash-safely. Torch-free.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError, StorageError
from shiftbench.paths import atomic_write_bytes
from shiftbench.trial_record import (
    CHECKPOINT_FILE,
    DONE_FILE,
    FAILED_FILE,
    JOB_FILE,
    PREV_CHECKPOINT_FILE,
    RESULTS_FILE,
    TRIAL_FILES,
    TrialSpec,
    differing_fields,
    read_job_file,
)


def parse_record_lines(text: str) -> tuple[list[tuple[int, Any]], list[tuple[int, str]], int]:
    """`(values with their line numbers, bad lines with their error, truncated line or 0)` of a
    `results.jsonl` text; a malformed last line counts as truncated (a killed writer)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    records, bad, truncated = [], [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                truncated = number
            else:
                bad.append((number, str(e)))
            continue
        records.append((number, value))
    return records, bad, truncated


class TrialDir:
    """The files of one trial directory (records and markers), written crash-safely."""

    def __init__(self, path: str | os.PathLike):
        self.dir = Path(path)
        self.results = self.dir / RESULTS_FILE
        self.done = self.dir / DONE_FILE
        self.failed = self.dir / FAILED_FILE
        self.checkpoint = self.dir / CHECKPOINT_FILE
        self.prev_checkpoint = self.dir / PREV_CHECKPOINT_FILE
        self.job_file = self.dir / JOB_FILE

    def append_record(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        try:
            with open(self.results, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a part of the line may be on disk: resume truncates it
            raise StorageError(self.results, e) from e

    def read_records(self) -> list[dict[str, Any]]:
        """The complete records, in order, up to the first line that does not parse."""
        if not self.results.exists():
            return []
        records = []
        for line in self.results.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line
        return records

    def truncate_records(self, n: int) -> None:
        """Keep the first n complete records (drop what a killed run wrote after its checkpoint)."""
        if not self.results.exists():
            return
        lines = self.results.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [ln for ln in lines[:n] if ln.endswith("\n")]
        if len(kept) != len(lines):
            atomic_write_bytes(self.results, "".join(kept).encode("utf-8"))

    def mark_done(self) -> None:
        atomic_write_bytes(self.done, b"done")

    def mark_failed(self, info: Mapping[str, Any]) -> None:
        atomic_write_bytes(self.failed, json.dumps(dict(info), indent=1).encode())

    def recorded_args(self) -> dict[str, Any] | None:
        """The spec this directory's trial ran with: its first record's `args`, else its job
        file's; None for a directory with neither."""
        for record in self.read_records()[:1]:
            if isinstance(record.get("args"), dict):
                return record["args"]
        if self.job_file.exists():
            try:
                return read_job_file(self.job_file).to_dict()
            except ShiftbenchError:
                return None
        return None

    def check_same_trial(self, spec: TrialSpec) -> None:
        """Refuse to write `spec`'s trial into a directory holding another trial's records."""
        recorded = self.recorded_args()
        if recorded is None or not self.results.exists():
            return
        diff = differing_fields(recorded, spec.to_dict())
        if diff:
            state = "finished" if self.done.exists() else "started"
            raise ShiftbenchError(
                f"{self.dir} holds a different trial ({state}; its arguments differ: "
                f"{'; '.join(diff)}; recorded != requested); use another --output-dir, or delete "
                "that directory to replace it")


def find_trial_dirs(input_dir: str | os.PathLike) -> list[Path]:
    """Every trial directory under `input_dir` (itself included): a directory holding one of
    `TRIAL_FILES`, or an empty directory directly under `input_dir` (a launched trial that has
    not written anything yet, as DomainBed's sweep sees it)."""
    root = Path(input_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=None):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if RESULTS_FILE in filenames or (here != root and TRIAL_FILES & set(filenames)):
            found.append(here)
        elif here.parent == root and not filenames and not dirnames:
            found.append(here)
    return sorted(found)


def status_of(path: str | os.PathLike) -> str:
    """done | failed | incomplete, from the markers."""
    d = Path(path)
    return "done" if (d / DONE_FILE).exists() else "failed" if (d / FAILED_FILE).exists() \
        else "incomplete"
