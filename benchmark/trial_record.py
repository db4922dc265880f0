"""What a trial is and what it leaves on disk: its spec, identity, directory layout and records.

One module, imported by the trainer's store, the sweep jobs/state/worker and the collector; it
imports no torch.

**Spec.** `TrialSpec` holds every input of one trial (the `args` of every record). Its identity
(`identity`, `spec_hash`) is what changes the trial's result:

* always: dataset, algorithm, test_envs (sorted indices), task, hparams (the JSON overrides,
  parsed and key-sorted), hparams_seed, trial_seed, seed, steps, holdout_fraction;
* any other field only when it differs from its default, so a field added later whose default
  reproduces the old behaviour leaves every existing hash alone (precision, tta_mode, protocol,
  source_envs, image_cache, weights_sha256 (the content hash of a `--weights` file), ...);
* never: where things live or run (output_dir, data_dir, device) or what is merely saved
  (skip_model_save, save_model_every_checkpoint).

The hash is the first 32 hex digits of SHA-256 over the identity's canonical JSON
(`sort_keys=True`, compact separators); a sweep puts each job in `<output-dir>/<hash>`.

**Directory layout** (DomainBed-compatible, plus ours):

* `results.jsonl`: one JSON record per checkpoint (`args`, `hparams`, `step`, `env{i}_{split}_acc`,
  losses, timings, `schema_version`, `label_sources`, `environments`, `unused_envs` when a domain
  was neither source nor target, `tta_mode` in settings that adapt at test time);
* `done`: written last, containing "done"; `failed`: JSON describing why a trial stopped;
* `checkpoint.pt` (+ `checkpoint.prev.pt`, each with a `.sha256`): the resumable state, written by
  the trainer's checkpoint store;
* `job.json`: `{"args": spec, "identity": ..., "hash": ...}`, the spec a sweep worker runs;
* `model.pkl`: the final model (unless skipped); sweep bookkeeping: `.lock`, `running`,
  `attempts.jsonl`, `out.txt`, `err.txt`.

**Same directory, different trial.** A directory holding another trial's records is refused with
an error naming the fields that differ (`check_same_trial`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError, StorageError
from shiftbench.paths import atomic_write_bytes
from shiftbench.setting import ALIASES, DG, Setting, get_setting

RESULTS_FILE = "results.jsonl"
DONE_FILE = "done"
FAILED_FILE = "failed"
CHECKPOINT_FILE = "checkpoint.pt"
PREV_CHECKPOINT_FILE = "checkpoint.prev.pt"
JOB_FILE = "job.json"
MODEL_FILE = "model.pkl"
OUT_FILE = "out.txt"  # a launched job's stdout, then stderr
ERR_FILE = "err.txt"
LOCK_FILE = ".lock"  # sweep bookkeeping (shiftbench.sweeps.state)
RUNNING_FILE = "running"
ATTEMPTS_FILE = "attempts.jsonl"
# Files any trial writes early (ours and DomainBed's): a directory holding one is a trial.
TRIAL_FILES = frozenset({RESULTS_FILE, DONE_FILE, FAILED_FILE, CHECKPOINT_FILE, OUT_FILE, ERR_FILE})


@dataclass
class TrialSpec:
    """Every input of one trial. `shiftbench.trial.normalize` checks and canonicalises it once."""

    dataset: str = "RotatedMNIST"
    algorithm: str = "ERM"
    test_envs: list[int] = field(default_factory=lambda: [0])
    task: str = DG.name
    hparams: str | None = None
    hparams_seed: int = 0
    trial_seed: int = 0
    seed: int = 0
    steps: int | None = None
    checkpoint_freq: int | None = None
    holdout_fraction: float = 0.2
    uda_holdout_fraction: float | None = None
    target_shots: int = 3
    tta_mode: str = "continual"
    eval_splits: str = "selection"
    precision: str = "fp32"
    image_cache: bool = False  # image-folder datasets: read the preprocessed cache, not the files
    output_dir: str = "train_output"
    data_dir: str | None = None
    device: str | None = None
    skip_model_save: bool = False
    save_model_every_checkpoint: bool = False
    protocol: str = "shiftbench"
    source_envs: list[int] | None = None  # None: every environment not in test_envs
    # SHA-256 of the `weights` hparam's file, set by `normalize` (a changed file: a new trial)
    weights_sha256: str | None = None

    @property
    def setting(self) -> Setting:
        return get_setting(self.task)

    def resolved_uda_fraction(self) -> float:
        if self.uda_holdout_fraction is not None:
            return self.uda_holdout_fraction
        return self.setting.default_uda_fraction

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialSpec:
        """A spec from a record's or job file's `args`; unknown keys are refused by name."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ShiftbenchError(f"unknown trial argument(s) {', '.join(unknown)}; valid: "
                                  f"{', '.join(sorted(names))}")
        spec = cls(**dict(values))
        for name in ("test_envs", "source_envs"):
            if isinstance(getattr(spec, name), tuple):
                setattr(spec, name, list(getattr(spec, name)))
        return spec


CORE_IDENTITY_KEYS = ("dataset", "algorithm", "test_envs", "task", "hparams", "hparams_seed",
                      "trial_seed", "seed", "steps", "holdout_fraction")
NOT_IDENTITY_KEYS = ("output_dir", "data_dir", "device", "skip_model_save",
                     "save_model_every_checkpoint")
_DEFAULTS = asdict(TrialSpec())


def canonical_hparams(hparams: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON overrides as a dict (None when empty), so spacing and key order do not count."""
    if hparams is None or hparams == "" or hparams == {}:
        return None
    parsed = json.loads(hparams) if isinstance(hparams, str) else dict(hparams)
    return parsed or None


def identity(spec: TrialSpec | Mapping[str, Any]) -> dict[str, Any]:
    """The inputs that change a trial's result (see the module docstring).

    A mapping (a record's `args`, possibly DomainBed's) is read leniently: keys TrialSpec does not
    know are kept as they are, DomainBed's task names are mapped to ours."""
    values = spec.to_dict() if isinstance(spec, TrialSpec) else dict(spec)
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in NOT_IDENTITY_KEYS:
            continue
        if name == "hparams":
            value = canonical_hparams(value)
        elif name == "test_envs":
            value = sorted(int(e) for e in ([value] if isinstance(value, int) else value))
        elif name == "task":
            value = ALIASES.get(value, value) if isinstance(value, str) else value
        if name in CORE_IDENTITY_KEYS or name not in _DEFAULTS or value != _DEFAULTS[name]:
            out[name] = value
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content (e.g. the `weights` hparam's file: `weights_sha256`)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise ShiftbenchError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


def weights_digest(hparams: str | Mapping[str, Any] | None) -> str | None:
    """`file_sha256` of the file the hparams' `weights` names (None without one)."""
    path = (canonical_hparams(hparams) or {}).get("weights")
    return file_sha256(path) if path else None


def spec_hash(spec: TrialSpec | Mapping[str, Any]) -> str:
    text = json.dumps(identity(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# Fields added after trials were first recorded, with the default that reproduces the old
# behaviour (checkpoints written before stored the spec without them).
_ADDED_FIELDS = {"protocol": "shiftbench", "source_envs": None, "image_cache": False,
                 "weights_sha256": None}


def legacy_checkpoint_identity(spec: TrialSpec) -> dict[str, Any]:
    """What checkpoints written before this module stored as their identity (all fields but the
    paths), so that they stay resumable."""
    d = spec.to_dict()
    for key in ("output_dir", "data_dir", "device"):
        d.pop(key)
    for key, default in _ADDED_FIELDS.items():
        if d[key] == default:
            d.pop(key)
    return d


def same_identity(stored: Mapping[str, Any], spec: TrialSpec) -> bool:
    """Whether an identity saved in a checkpoint (either form) is the spec's."""
    return dict(stored) in (identity(spec), legacy_checkpoint_identity(spec))


def differing_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """`name: a-value != b-value` for every identity field in which two specs differ."""
    ia, ib = identity(a), identity(b)
    out = []
    for name in sorted(set(ia) | set(ib)):
        va = ia.get(name, _DEFAULTS.get(name))
        vb = ib.get(name, _DEFAULTS.get(name))
        if va != vb:
            out.append(f"{name}: {json.dumps(va, sort_keys=True)} != {json.dumps(vb, sort_keys=True)}")
    return out


def job_document(spec: TrialSpec) -> dict[str, Any]:
    return {"args": spec.to_dict(), "identity": identity(spec), "hash": spec_hash(spec)}


def write_job_file(job_dir: str | os.PathLike, spec: TrialSpec) -> Path:
    """Write `job.json` (atomically) and return its path."""
    path = Path(job_dir) / JOB_FILE
    atomic_write_bytes(path, json.dumps(job_document(spec), indent=1, sort_keys=True).encode())
    return path


def read_job_file(path: str | os.PathLike) -> TrialSpec:
    """The spec of a `job.json` (or of the `job.json` inside a directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / JOB_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ShiftbenchError(f"cannot read the job file {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShiftbenchError(f"{path} is not a job file (invalid JSON: {e})") from None
    if not isinstance(document, dict) or not isinstance(document.get("args"), dict):
        raise ShiftbenchError(f"{path} is not a job file (no 'args' object)")
    return TrialSpec.from_dict(document["args"])


# --------------------------------------------------------------------------------------------
# Records


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


def trial_key(args: Mapping[str, Any]) -> str:
    """A string that is equal for two records' `args` exactly when they are the same trial."""
    return json.dumps(identity(args), sort_keys=True, default=str)


def status_of(path: str | os.PathLike) -> str:
    """done | failed | incomplete, from the markers."""
    d = Path(path)
    return "done" if (d / DONE_FILE).exists() else "failed" if (d / FAILED_FILE).exists() \
        else "incomplete"


def iter_specs(values: Iterable[Mapping[str, Any]]) -> list[TrialSpec]:
    return [TrialSpec.from_dict(v) for v in values]
