"""What a trial is and what it leaves on disk: its spec, identity, directory layout and records.

One module, imported by the trainer's store, the sweep jobs/state/worker and the collector; it
imports no torch.

**Spec.** `TrialSpec` holds every input of one trial (the `args` of every record). Its identity
(`identity`, `spec_hash`) is what changes the trial's result; each field declares its rule
(`option(..., identity=...)`):

* `ALWAYS`: dataset, algorithm, test_envs (sorted indices), task, hparams (the JSON overrides,
  parsed and key-sorted), hparams_seed, trial_seed, seed, steps, holdout_fraction;
* `CHANGED` (the default): only when the value differs from the field's default, so a field added
  later whose default reproduces the old behaviour leaves every existing hash alone;
* `NEVER`: where things live or run (output_dir, data_dir, device) or what is merely saved
  (skip_model_save, save_model_every_checkpoint).

The hash is the first 32 hex digits of SHA-256 over the identity's canonical JSON
(`sort_keys=True`, compact separators); a sweep puts each job in `<output-dir>/<hash>`.

**Directory layout** (DomainBed-compatible, plus ours):

* `results.jsonl`: one JSON record per checkpoint (`args`, `hparams`, `step`, `env{i}_{split}_acc`,
  losses, timings, `schema_version`, `label_sources`, `environments`, `unused_envs` when a domain
  was neither source nor target, the `recorded` options where they apply);
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

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError
from shiftbench.options import ALWAYS, NEVER, TrialOption, check_values, declared_options, option
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


def _sorted_envs(value: Any) -> Any:
    return sorted(int(e) for e in ([value] if isinstance(value, int) else value))


def _canonical_task(value: Any) -> Any:
    return ALIASES.get(value, value) if isinstance(value, str) else value


def _canonical_hparams(value: Any) -> Any:
    return canonical_hparams(value)


INDUCTIVE, TRANSDUCTIVE = "inductive", "transductive"  # the `da_mode` values


def _canonical_da_mode(value: Any) -> Any:
    """Unset (None) and `inductive` are one trial: records made before the option are inductive."""
    return None if value == INDUCTIVE else value


@dataclass
class TrialSpec:
    """Every input of one trial. `shiftbench.trial.normalize` checks and canonicalises it once.

    Each field is declared once, here, with `option(...)` (`shiftbench.options.Option`): that
    declaration makes its `train` flag, its sweep flag and spec key, its validation, whether it
    counts in the identity and whether records carry it. Adding an option is adding a field."""

    dataset: str = option("RotatedMNIST", "dataset name", identity=ALWAYS)
    algorithm: str = option("ERM", "algorithm name", identity=ALWAYS)
    test_envs: list[int] = option(
        help="held-out environments, by index or name", factory=lambda: [0], identity=ALWAYS,
        environments=True, canonical=_sorted_envs)
    task: str = option(DG.name, "dg | uda | ssda | sda | tta (DomainBed's domain_generalization "
                       "and domain_adaptation are accepted)", identity=ALWAYS,
                       canonical=_canonical_task)
    hparams: str | None = option(None, "JSON object overriding hparams", identity=ALWAYS,
                                 canonical=_canonical_hparams)
    hparams_seed: int = option(0, "0 = defaults", identity=ALWAYS, minimum=0)
    trial_seed: int = option(0, "fixes every split", identity=ALWAYS, minimum=0)
    seed: int = option(0, "initialisation and sampling", identity=ALWAYS, minimum=0)
    steps: int | None = option(None, "training steps (default: the dataset's)", identity=ALWAYS,
                               minimum=1, sweep=True)
    checkpoint_freq: int | None = option(None, "steps between checkpoints (default: the "
                                         "dataset's)", minimum=1, sweep=True)
    holdout_fraction: float = option(0.2, "fraction of each environment held out for "
                                     "validation", identity=ALWAYS, minimum=0, below=1,
                                     sweep=True)
    uda_holdout_fraction: float | None = option(
        None, "fraction of a target domain given unlabeled (default 0.5 in uda/ssda)",
        minimum=0, below=1, sweep=True)
    target_shots: int = option(3, "labeled target examples per class in ssda/sda", minimum=0,
                               sweep=True)
    tta_mode: str = option(
        "continual", "test-time adaptation (task tta): continual, or episodic (restart from the "
        "trained model after every batch)", choices=("continual", "episodic"), sweep=True,
        recorded=True, in_settings=lambda setting: setting.adapts_at_test)
    eval_splits: str = option(
        "selection", "'selection': the splits model selection reads (skips training domains' "
        "training splits); 'all': every split, as DomainBed", choices=("selection", "all"))
    precision: str = option(
        "fp32", "'bf16': bfloat16 autocast of forward passes (much faster on CPUs with AVX-512 "
        "BF16/AMX and on recent GPUs); weights stay float32", choices=("fp32", "bf16"),
        sweep=True)
    image_cache: bool = option(
        False, "image-folder datasets: read the preprocessed memory-mapped cache (built first "
        "when missing; `shiftbench data preprocess`) instead of decoding every image file; "
        "faster (docs/benchmarks.md), augments the same way but not bit-identically, so it is "
        "part of the trial's identity", sweep=True,
        in_datasets=lambda facts: facts.image_cache)
    output_dir: str = option("train_output", "where the trial's files go", identity=NEVER)
    data_dir: str | None = option(None, "where datasets are found", identity=NEVER)
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: auto)", identity=NEVER)
    skip_model_save: bool = option(False, "do not write model.pkl", identity=NEVER)
    save_model_every_checkpoint: bool = option(False, "write model_step<N>.pkl at every "
                                               "checkpoint", identity=NEVER)
    protocol: str = option(
        "shiftbench", "hparam defaults, search spaces and networks: shiftbench (default) or "
        "domainbed (DomainBed's own)", choices=("shiftbench", "domainbed"), sweep=True)
    source_envs: list[int] | None = option(
        None, "environments trained on, by index or name (default: every environment not in "
        "--test-envs); the others are evaluated but never trained on", environments=True)
    da_mode: str | None = option(
        None, "uda/ssda: transductive (adapt on the whole target domain and test on those "
        "images, as DA papers) or inductive (adapt on part of it, test on the rest); default: "
        "transductive with a DA preset (dann_digits) or task suite (sweep --tasks), else "
        "inductive", choices=(INDUCTIVE, TRANSDUCTIVE), sweep=True, recorded=True,
        in_settings=lambda setting: setting.unlabeled_target, canonical=_canonical_da_mode)
    weights_sha256: str | None = option(
        None, "SHA-256 of the `weights` hparam's file, set by `normalize` and by sweep jobs (a "
        "changed file: a new trial)", flag=False)

    @property
    def setting(self) -> Setting:
        return get_setting(self.task)

    @property
    def resets_adaptation_per_batch(self) -> bool:
        """Test-time adaptation restarts from the trained model after every batch (episodic)."""
        return self.tta_mode == "episodic"

    @property
    def transductive(self) -> bool:
        """The algorithm adapts on the whole target domain and is tested on it (`da_mode`)."""
        return self.da_mode == TRANSDUCTIVE

    def resolved_uda_fraction(self) -> float:
        if self.uda_holdout_fraction is not None:
            return self.uda_holdout_fraction
        return self.setting.default_uda_fraction

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialSpec:
        """A spec from a record's or job file's `args`; unknown keys are refused by name."""
        options = trial_options()
        unknown = sorted(set(values) - set(options))
        if unknown:
            raise ShiftbenchError(f"unknown trial argument(s) {', '.join(unknown)}; valid: "
                                  f"{', '.join(sorted(options))}")
        return cls(**{name: list(v) if isinstance(v, tuple) and options[name].kind is list else v
                      for name, v in values.items()})


@functools.cache
def trial_options() -> dict[str, TrialOption]:
    """Every `TrialSpec` field with its declaration, in order."""
    return declared_options(TrialSpec)


def sweep_options() -> dict[str, TrialOption]:
    """The options a sweep sets for all its jobs (flags, spec keys)."""
    return {n: o for n, o in trial_options().items() if o.declaration.sweep}


def applies(opt: TrialOption, setting: Setting, dataset_facts: Any = None) -> bool:
    """Whether an option means anything in this setting (and for this dataset's facts)."""
    d = opt.declaration
    return ((d.in_settings is None or bool(d.in_settings(setting)))
            and (d.in_datasets is None or dataset_facts is None
                 or bool(d.in_datasets(dataset_facts))))


def restricted(spec: TrialSpec, setting: Setting, dataset_facts: Any = None) -> TrialSpec:
    """`spec` with the options that do not apply here at their defaults (so a sweep's jobs hash
    only what changes them)."""
    resets = {n: o.default for n, o in trial_options().items()
              if not applies(o, setting, dataset_facts)}
    return dataclasses.replace(spec, **resets)


def recorded_options(spec: TrialSpec) -> dict[str, Any]:
    """The options copied to the top level of every record (where they apply)."""
    setting = spec.setting
    return {n: getattr(spec, n) for n, o in trial_options().items()
            if o.declaration.recorded and applies(o, setting)}


def validate_options(spec: TrialSpec, flags: bool = True) -> None:
    """Each value against its declaration (type, choices, bounds); errors name the flag."""
    check_values(trial_options(), spec.to_dict(), flags=flags)


CORE_IDENTITY_KEYS = tuple(n for n, o in trial_options().items() if o.declaration.identity == ALWAYS)
NOT_IDENTITY_KEYS = tuple(n for n, o in trial_options().items() if o.declaration.identity == NEVER)
_DEFAULTS = asdict(TrialSpec())


def canonical_hparams(hparams: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON overrides as a dict (None when empty), so spacing and key order do not count."""
    if hparams is None or hparams == "" or hparams == {}:
        return None
    parsed = json.loads(hparams) if isinstance(hparams, str) else dict(hparams)
    return parsed or None


def overrides_key(hparams: str | Mapping[str, Any] | None) -> str:
    """The fixed hparams overrides as one canonical string ("" for none): key-sorted compact
    JSON, so spacing and key order do not count; a string that is not JSON is kept stripped."""
    try:
        parsed = canonical_hparams(hparams)
    except (ValueError, TypeError):
        return str(hparams).strip()
    if parsed is None:
        return ""
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"), default=str)


def config_key(args: Mapping[str, Any]) -> tuple[int, str]:
    """What names a run's hyperparameter configuration within its group: the hparams seed and
    the fixed overrides (`overrides_key`). A sweep's grid points share the seed and differ in
    the overrides; sorting these keys gives DomainBed's order (smallest seed first)."""
    return int(args.get("hparams_seed", 0)), overrides_key(args.get("hparams"))


def identity(spec: TrialSpec | Mapping[str, Any]) -> dict[str, Any]:
    """The inputs that change a trial's result (see the module docstring).

    A mapping (a record's `args`, possibly DomainBed's) is read leniently: keys TrialSpec does not
    know are kept as they are, DomainBed's task names are mapped to ours."""
    values = spec.to_dict() if isinstance(spec, TrialSpec) else dict(spec)
    out: dict[str, Any] = {}
    options = trial_options()
    for name, value in values.items():
        declaration = options[name].declaration if name in options else None
        if declaration is None:  # a key we do not know (DomainBed's): kept as it is
            out[name] = value
            continue
        if declaration.identity == NEVER:
            continue
        if declaration.canonical is not None:
            value = declaration.canonical(value)
        if declaration.identity == ALWAYS or value != _DEFAULTS[name]:
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


# The fields of the spec when checkpoints stored it whole (all but the paths); fields added
# since are left out of that form at their defaults, so those checkpoints stay resumable.
_LEGACY_CHECKPOINT_FIELDS = (
    "dataset", "algorithm", "test_envs", "task", "hparams", "hparams_seed", "trial_seed", "seed",
    "steps", "checkpoint_freq", "holdout_fraction", "uda_holdout_fraction", "target_shots",
    "tta_mode", "eval_splits", "precision", "skip_model_save", "save_model_every_checkpoint")


def legacy_checkpoint_identity(spec: TrialSpec) -> dict[str, Any]:
    """What checkpoints written before this module stored as their identity (all fields but the
    paths), so that they stay resumable."""
    options = trial_options()

    def changed(name: str, value: Any) -> bool:
        canonical = options[name].declaration.canonical
        return (canonical(value) if canonical else value) != _DEFAULTS[name]

    return {name: value for name, value in spec.to_dict().items()
            if name in _LEGACY_CHECKPOINT_FIELDS
            or (name not in NOT_IDENTITY_KEYS and changed(name, value))}


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
# Record keys: a record's scores are `env{i}_{split}_{metric}` (DomainBed's `env0_out_acc`, and
# ours: `env1_uda_entropy`, `env2_in_miou`, `env2_in_iou_<class>`, ...). Writers and readers build
# and count them with these helpers only.


def record_key(env: int, split: str, metric: str = "acc") -> str:
    """The key of environment `env`'s `split` ("in", "out", "uda", "lab", ...) score `metric`."""
    return f"env{env}_{split}_{metric}"


def trial_key(args: Mapping[str, Any]) -> str:
    """A string that is equal for two records' `args` exactly when they are the same trial."""
    return json.dumps(identity(args), sort_keys=True, default=str)


def iter_specs(values: Iterable[Mapping[str, Any]]) -> list[TrialSpec]:
    return [TrialSpec.from_dict(v) for v in values]


def auto_precision() -> str:
    """The `precision` that `auto` (demo, suites) means here: bf16 where bfloat16 matmuls are
    native (AMX / AVX-512 BF16 CPUs, bf16-capable GPUs; the gain is measured in
    docs/benchmarks.md), else fp32 (emulated bf16 is slower than fp32). Imports torch only when
    called."""
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return "fp32"
    return "bf16" if {"amx_bf16", "avx512_bf16"} & set(flags) else "fp32"
