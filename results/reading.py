"""Read the records of a sweep (ours or DomainBed's) robustly.

A sweep directory holds one directory per trial (at any depth), each with `results.jsonl` (one
JSON record per checkpoint), a `done` marker when the trial finished and, for our trainer, a
`failed` marker when it stopped on an error. DomainBed's sweeps have the same layout without
`failed`.

What the reader does beyond DomainBed's `load_records`:
* a trial restarted by DomainBed appends its records again from step 0. A step that does not
  increase starts a new run; the newest run's records are kept, and of each earlier run only the
  steps before the later run's first step (so a restart from scratch drops the whole earlier
  run, a resume from a checkpoint keeps the prefix it resumed from, a line written twice keeps
  one copy). Every dropped record is counted as a duplicate and reported;
* two trial directories holding the same trial (same arguments except output paths) at the same
  step: the directory that is `done` (else the one with more records, else the first in sorted
  order) wins, the other's records at those steps are dropped and reported;
* a truncated last line (a trial killed while writing) is skipped with a warning; a malformed
  line elsewhere is skipped with a warning naming the file and line;
* an unreadable file (permissions, binary garbage, bad encoding) is reported and skipped, never
  fatal;
* trials are counted as done, incomplete (no `done`, no `failed`) and failed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from shiftbench.errors import ShiftbenchError
from shiftbench.setting import ALIASES, DG
from shiftbench.trial_dir import find_trial_dirs, parse_record_lines, status_of
from shiftbench.trial_record import (
    DONE_FILE,
    FAILED_FILE,
    RESULTS_FILE,
    TRIAL_FILES,
)
from shiftbench.trial_record import trial_key as _args_key

__all__ = ["DONE_FILE", "FAILED_FILE", "RESULTS_FILE", "TRIAL_FILES", "Sweep", "find_trial_dirs",
           "load_records", "read_sweep", "trial_key"]



class RecordsWarning(UserWarning):
    """Something in a sweep directory was skipped or repaired while reading it."""


@dataclass
class JobInfo:
    """One trial directory as found on disk."""

    path: str
    status: str  # "done" | "incomplete" | "failed"
    n_records: int = 0
    n_duplicates: int = 0
    n_bad_lines: int = 0
    truncated: bool = False
    error: str | None = None
    failure: str | None = None  # a failed trial's reason (the `failed` marker's `error`)


@dataclass
class Sweep:
    """The records of a sweep plus what was found (and repaired) while reading it."""

    input_dir: str
    records: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[JobInfo] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def n_duplicates(self) -> int:
        return sum(j.n_duplicates for j in self.jobs)

    def count(self, status: str) -> int:
        return sum(j.status == status for j in self.jobs)

    def summary(self) -> dict[str, Any]:
        return {
            "input_dir": self.input_dir, "records": len(self.records), "jobs": len(self.jobs),
            "done": self.count("done"), "incomplete": self.count("incomplete"),
            "failed": self.count("failed"), "duplicates_dropped": self.n_duplicates,
            "bad_lines": sum(j.n_bad_lines for j in self.jobs),
            "truncated_files": sum(j.truncated for j in self.jobs),
            "unreadable_files": sum(j.error is not None for j in self.jobs),
        }

    def summary_line(self) -> str:
        s = self.summary()
        return (f"Total records: {s['records']} from {s['jobs']} trials ({s['done']} done, "
                f"{s['incomplete']} incomplete, {s['failed']} failed); "
                f"{s['duplicates_dropped']} duplicate records dropped, {s['bad_lines']} bad lines "
                f"skipped, {s['unreadable_files']} unreadable files")


def normalize_record(record: dict[str, Any]) -> dict[str, Any]:
    """Give a record the fields selection relies on, in one canonical form (in place)."""
    args = record.get("args")
    if not isinstance(args, dict):
        raise ValueError("record has no 'args' object")
    for key in ("dataset", "algorithm", "test_envs"):
        if key not in args:
            raise ValueError(f"record args lack {key!r}")
    if "step" not in record:
        raise ValueError("record has no 'step'")
    for key in ("dataset", "algorithm"):
        if not isinstance(args[key], str):
            raise ValueError(f"record args {key!r} is not a string: {args[key]!r}")
    if args.get("task") is not None and not isinstance(args["task"], str):
        raise ValueError(f"record args 'task' is not a string: {args['task']!r}")
    for key in ("hparams_seed", "trial_seed"):
        if key in args and (isinstance(args[key], bool) or not isinstance(args[key], int)):
            raise ValueError(f"record args {key!r} is not an integer: {args[key]!r}")
    step = record["step"]
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
        raise ValueError(f"record 'step' is not a number: {step!r}")
    if not isinstance(record.get("hparams", {}), dict):
        raise ValueError("record 'hparams' is not an object")
    test_envs = args["test_envs"]
    if isinstance(test_envs, int):
        test_envs = [test_envs]
    try:
        args["test_envs"] = sorted(int(e) for e in test_envs)
    except OverflowError as e:  # int(inf)
        raise ValueError(f"record args 'test_envs' is not a list of integers: {test_envs!r}") from e
    task = args.get("task") or DG.name
    args["task"] = ALIASES.get(task, task)
    args.setdefault("hparams_seed", 0)
    args.setdefault("trial_seed", 0)
    record.setdefault("hparams", {})
    return record


def trial_key(record: dict[str, Any]) -> str:
    """What identifies a trial independently of where it was written (its spec's identity)."""
    return _args_key(record["args"])


_SHARED_KEYS = ("args", "hparams", "environments", "label_sources")


def newest_run(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Split at every step that does not increase; keep the last run plus earlier prefixes."""
    runs: list[list[dict[str, Any]]] = []
    for r in records:
        if not runs or not _step_after(r["step"], runs[-1][-1]["step"]):
            runs.append([])
        runs[-1].append(r)
    if not runs:
        return []
    kept = runs[-1]
    for run in reversed(runs[:-1]):
        first = kept[0]["step"]
        kept = [r for r in run if _step_after(first, r["step"])] + kept
    return kept


def _step_after(a: Any, b: Any) -> bool:
    try:
        return a > b
    except TypeError:
        return False


def _read_job(path: Path, warn) -> tuple[JobInfo, list[dict[str, Any]]]:
    job = JobInfo(str(path), status_of(path))
    if job.status == "failed":
        job.failure = _failure(path)
    results = path / RESULTS_FILE
    if not results.exists():
        return job, []
    try:
        text = results.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        job.error = f"{type(e).__name__}: {e}"
        warn(f"{results}: cannot read it ({job.error}); skipped")
        return job, []
    values, bad_json, truncated_line = parse_record_lines(text)
    job.truncated = bool(truncated_line)
    problems = [(number, f"line {number} is not a valid record ({error}); skipped")
                for number, error in bad_json]
    valid = []
    for number, value in values:
        try:
            valid.append(normalize_record(value))
        except (ValueError, TypeError, AttributeError) as e:
            problems.append((number, f"line {number} is not a valid record ({e}); skipped"))
    job.n_bad_lines = len(problems)
    for _, message in sorted(problems):
        warn(f"{results}: {message}")
    if job.truncated:
        warn(f"{results}: line {truncated_line} (the last) is truncated; skipped")
    parsed: list[dict[str, Any]] = []
    for record in valid:
        if parsed:  # share the per-trial dicts between checkpoints (memory of huge sweeps)
            for key in _SHARED_KEYS:
                if key in record and record[key] == parsed[-1].get(key):
                    record[key] = parsed[-1][key]
        parsed.append(record)
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for r in parsed:  # normally one trial per file; a concatenated file is split by trial
        by_trial.setdefault(trial_key(r), []).append(r)
    records = [r for run in by_trial.values() for r in newest_run(run)]
    job.n_duplicates = len(parsed) - len(records)
    if job.n_duplicates:
        warn(f"{path}: {job.n_duplicates} records superseded by a restarted run of the trial "
             "(steps written again); kept the newest run's")
    for r in records:
        r["args"].setdefault("output_dir", str(path))
        r["_job_dir"] = str(path)
    job.n_records = len(records)
    return job, records


def _failure(path: Path) -> str | None:
    """The `error` of a `failed` marker (our trainer writes JSON), or None."""
    try:
        info = json.loads((path / FAILED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    error = info.get("error") if isinstance(info, dict) else None
    return error if isinstance(error, str) else None


def read_sweep(input_dir: str | os.PathLike, *, only_done: bool = False,
               quiet: bool = False) -> Sweep:
    """Read every trial under `input_dir`; problems become warnings, never exceptions.

    `only_done` keeps only the records of trials with a `done` marker (DomainBed keeps all).
    Warnings are also issued as `RecordsWarning` unless `quiet`.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise ShiftbenchError(f"--input-dir {input_dir}: no such directory")
    sweep = Sweep(str(input_dir))

    def warn(message: str) -> None:
        sweep.messages.append(message)
        if not quiet:
            warnings.warn(message, RecordsWarning, stacklevel=3)

    per_job: list[tuple[JobInfo, list[dict[str, Any]]]] = []
    for path in find_trial_dirs(root):
        try:
            per_job.append(_read_job(path, warn))
        except OSError as e:  # e.g. a directory vanishing while we read
            job = JobInfo(str(path), "incomplete", error=f"{type(e).__name__}: {e}")
            warn(f"{path}: cannot read it ({job.error}); skipped")
            per_job.append((job, []))
    _drop_cross_directory_duplicates(per_job, warn)
    for job, records in per_job:
        sweep.jobs.append(job)
        if only_done and job.status != "done":
            continue
        sweep.records.extend(records)
    if not per_job:
        warn(f"{input_dir}: no {RESULTS_FILE} found")
    return sweep


def _drop_cross_directory_duplicates(per_job, warn) -> None:
    """The same trial in two directories: keep one copy of each step (see module docstring)."""
    owners: dict[tuple[str, Any], int] = {}
    rank = {i: (job.status == "done", len(recs), -i) for i, (job, recs) in enumerate(per_job)}
    drop: dict[int, set] = {}
    for i, (_, records) in enumerate(per_job):
        for r in records:
            key = (trial_key(r), r["step"])
            j = owners.get(key)
            if j is None:
                owners[key] = i
                continue
            loser, winner = (i, j) if rank[j] >= rank[i] else (j, i)
            owners[key] = winner
            drop.setdefault(loser, set()).add(key)
    for i, keys in drop.items():
        job, records = per_job[i]
        kept = [r for r in records if (trial_key(r), r["step"]) not in keys]
        n = len(records) - len(kept)
        job.n_duplicates += n
        job.n_records = len(kept)
        per_job[i] = (job, kept)
        warn(f"{job.path}: {n} records duplicate another directory's copy of the same trial; "
             "dropped")


# --------------------------------------------------------------------------------------------
# DataFrame API

_ARG_COLUMNS = ("dataset", "algorithm", "task", "test_envs", "hparams_seed", "trial_seed", "seed")


def records_to_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per record: `args`/`hparams` as dicts, the main args as columns, every metric."""
    rows = []
    for r in records:
        row = {k: v for k, v in r.items()}
        args = r["args"]
        for k in _ARG_COLUMNS:
            value = args.get(k)
            row[k] = tuple(value) if k == "test_envs" else value
        row["job_dir"] = r.get("_job_dir", args.get("output_dir"))
        row.pop("_job_dir", None)
        rows.append(row)
    frame = pd.DataFrame(rows)
    front = [c for c in (*_ARG_COLUMNS, "step", "job_dir") if c in frame.columns]
    return frame[front + [c for c in frame.columns if c not in front]]


def frame_to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Back from `load_records`'s frame to record dicts (missing metrics dropped, not NaN)."""
    derived = set(_ARG_COLUMNS) | {"job_dir"}
    out = []
    for row in frame.to_dict("records"):
        r = {k: v for k, v in row.items() if k not in derived
             and not (isinstance(v, float) and math.isnan(v))}
        r["_job_dir"] = row.get("job_dir")
        out.append(normalize_record(r))
    return out


def load_records(input_dir: str | os.PathLike, *, only_done: bool = False,
                 quiet: bool = False) -> pd.DataFrame:
    """The records of a sweep as a DataFrame; `frame.attrs["summary"]` counts jobs and repairs."""
    sweep = read_sweep(input_dir, only_done=only_done, quiet=quiet)
    frame = records_to_frame(sweep.records)
    frame.attrs["summary"] = sweep.summary()
    frame.attrs["messages"] = list(sweep.messages)
    return frame


def as_records(data: Sweep | pd.DataFrame | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records from any of the accepted containers, normalised."""
    if isinstance(data, Sweep):
        return data.records
    if isinstance(data, pd.DataFrame):
        return frame_to_records(data)
    return [normalize_record(r) for r in data]
