"""Jobs: the trials a sweep expands into, each with a stable identity and its own directory.

Enumeration: datasets x algorithms x test-environment sets x hparam seeds x grid points x trial
seeds. Hparam seed k resolves to the same configuration in every trial (the trainer draws it from
`hparams_seed` alone); `seed` (initialisation, sampling) is derived from the job's other
coordinates, as in DomainBed.

Identity (`job_identity`, `job_hash`): the hash decides a job's directory, `<output-dir>/<hash>`, so
it must change exactly when the job's *result* would. It covers

* always: dataset, algorithm, test_envs (sorted indices), task, hparams (the JSON overrides,
  parsed and key-sorted, so spacing and key order do not matter), hparams_seed, trial_seed, seed,
  steps, holdout_fraction;
* any other `TrainArgs` field only when it differs from its default. A field added to the trainer
  later, whose default reproduces the old behaviour, therefore leaves every existing hash alone.
  So `precision` (fp32 | bf16), `tta_mode` (continual | episodic), `protocol` (shiftbench |
  domainbed) and `source_envs` (None = all but the test environments) count only when not at
  their default; a sweep passes `tta_mode` only to jobs of a setting that reads it;
* never: where things live or run (`output_dir`, `data_dir`, `device`) or what is merely saved
  (`skip_model_save`, `save_model_every_checkpoint`).

The hash is the first 32 hex digits of SHA-256 over the identity's canonical JSON
(`sort_keys=True`, compact separators). A golden value is pinned by tests/test_sweeps_jobs.py.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from shiftbench.seeds import seed_hash
from shiftbench.setting import get_setting
from shiftbench.sweeps.spec import SweepSpec, sweep_units
from shiftbench.trainer import TrainArgs

CORE_IDENTITY_KEYS = ("dataset", "algorithm", "test_envs", "task", "hparams", "hparams_seed",
                      "trial_seed", "seed", "steps", "holdout_fraction")
NOT_IDENTITY_KEYS = ("output_dir", "data_dir", "device", "skip_model_save",
                     "save_model_every_checkpoint")
WORKER_MODULE = "shiftbench.sweeps.worker"


def _canonical_hparams(hparams: str | dict | None) -> dict[str, Any] | None:
    if hparams is None or hparams == "" or hparams == {}:
        return None
    parsed = json.loads(hparams) if isinstance(hparams, str) else dict(hparams)
    return parsed or None


def job_identity(args: TrainArgs) -> dict[str, Any]:
    """The arguments that change a job's result (see the module docstring)."""
    values = asdict(args)
    defaults = asdict(TrainArgs())
    identity: dict[str, Any] = {}
    for f in fields(TrainArgs):
        name = f.name
        if name in NOT_IDENTITY_KEYS:
            continue
        value = values[name]
        if name == "hparams":
            value = _canonical_hparams(value)
        elif name == "test_envs":
            value = sorted(int(e) for e in value)
        if name in CORE_IDENTITY_KEYS or value != defaults[name]:
            identity[name] = value
    return identity


def job_hash(args: TrainArgs) -> str:
    text = json.dumps(job_identity(args), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass
class Job:
    """One trial of a sweep: its arguments (with `output_dir` set) and its hash."""

    args: TrainArgs
    hash: str
    imports: tuple[str, ...] = ()  # modules the worker imports first (user registrations)
    loggers: tuple[str, ...] = ()  # experiment loggers (`--logger`); not part of the identity

    @property
    def dir(self) -> Path:
        return Path(self.args.output_dir)

    def describe(self) -> str:
        a = self.args
        extra = f" hparams={a.hparams}" if a.hparams else ""
        return (f"{a.dataset} {a.algorithm} task={a.task} test_envs={a.test_envs} "
                f"hparams_seed={a.hparams_seed} trial_seed={a.trial_seed}{extra}")

    def command(self, python: str | None = None, threads: int | None = None) -> list[str]:
        """The worker's argv (no shell involved); `command_str` quotes it for a shell."""
        argv = [python or sys.executable, "-m", WORKER_MODULE]
        defaults = asdict(TrainArgs())
        for name, value in asdict(self.args).items():
            if isinstance(value, bool):
                if value:
                    argv.append("--" + name.replace("_", "-"))
                continue
            if value is None or (value == defaults[name] and name not in CORE_IDENTITY_KEYS
                                 and name != "output_dir"):
                continue
            argv.append("--" + name.replace("_", "-"))
            argv.extend(str(v) for v in value) if isinstance(value, list) else argv.append(str(value))
        for module in self.imports:
            argv += ["--import", module]
        if self.loggers:
            argv += ["--logger", *self.loggers]
        if threads:
            argv += ["--threads", str(threads)]
        return argv

    def command_str(self, python: str | None = None, threads: int | None = None) -> str:
        """The command for a shell: every argument shlex-quoted."""
        return shlex.join(self.command(python, threads))


def make_job(args: TrainArgs, output_dir: str | Path, imports: tuple[str, ...] = ()) -> Job:
    h = job_hash(args)
    args.output_dir = str(Path(output_dir) / h)
    return Job(args, h, tuple(imports))


def enumerate_jobs(spec: SweepSpec, output_dir: str | Path, data_dir: str | None = None,
                   imports: tuple[str, ...] | list[str] = ()) -> list[Job]:
    """Every job of a validated spec, in a deterministic order, without duplicates."""
    from shiftbench.datasets import get_dataset_class

    jobs: dict[str, Job] = {}
    reads_tta_mode = get_setting(spec.task).reads_tta_mode
    units = sweep_units(spec)
    for dataset in dict.fromkeys(u[0] for u in units):  # datasets x algorithms x held-out sets
        steps = spec.steps or get_dataset_class(dataset).N_STEPS  # concrete, so it is hashed
        for algorithm, (_, sources, test_envs) in ((a, u) for a in spec.algorithms
                                                   for u in units if u[0] == dataset):
            for hparams_seed in range(spec.n_hparams_from, spec.n_hparams):
                for point in spec.grid_points(algorithm):
                    overrides = spec.overrides(algorithm, point, dataset)
                    for trial_seed in range(spec.n_trials):
                        args = TrainArgs(
                            dataset=dataset, algorithm=algorithm, test_envs=list(test_envs),
                            task=spec.task,
                            hparams=json.dumps(overrides, sort_keys=True) if overrides else None,
                            hparams_seed=hparams_seed, trial_seed=trial_seed,
                            seed=seed_hash(dataset, algorithm, test_envs, hparams_seed,
                                           trial_seed),
                            steps=steps, checkpoint_freq=spec.checkpoint_freq,
                            holdout_fraction=spec.holdout_fraction,
                            uda_holdout_fraction=spec.uda_holdout_fraction,
                            target_shots=spec.target_shots,
                            # only settings that read tta_mode get it: the others keep the
                            # default, so their job hashes do not depend on it
                            tta_mode=spec.tta_mode if reads_tta_mode else TrainArgs.tta_mode,
                            precision=spec.precision, protocol=spec.protocol,
                            source_envs=None if sources is None else list(sources),
                            data_dir=data_dir)
                        job = make_job(args, output_dir, tuple(imports))
                        jobs.setdefault(job.hash, job)
    return list(jobs.values())
