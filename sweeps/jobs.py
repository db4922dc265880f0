"""Jobs: the trials a sweep expands into, each with a stable identity and its own directory.

Enumeration: datasets x algorithms x test-environment sets x hparam seeds x grid points x trial
seeds. Hparam seed k resolves to the same configuration in every trial (the trainer draws it from
`hparams_seed` alone).

Seeding (`SEEDINGS`, the spec's `seeding`). A job's `seed` fixes its initialisation, its batch
order and its augmentation draws. `paired` (the shiftbench protocol's default) derives it from
the dataset, the held-out and source environments and the trial seed only, so at one trial seed
every algorithm and every hyperparameter configuration draws the same batches (at equal batch
size) from the same splits and starts from the same initial weights where the networks agree:
differences between algorithms at one trial seed are paired (common random numbers).
`domainbed` (the domainbed protocol's default) hashes the algorithm and the hparams seed in as
well, as DomainBed does, so every job draws its own. Sweeps made before paired seeding used
`domainbed`'s formula under both protocols: `resolve_seeding` recognises such an output
directory and continues it with the seeds it was made with.

Identity (`job_identity`, `job_hash`): the hash decides a job's directory, `<output-dir>/<hash>`, so
it must change exactly when the job's *result* would; both are `shiftbench.trial_record`'s
`identity` and `spec_hash` (see there for the rules). A golden value is pinned by
tests/test_sweeps_jobs.py. A trial option reaches only the jobs it applies to (its declaration's
`in_settings` / `in_datasets`); the others keep the default, so their hashes do not depend on it.

A job's spec is written to `<job dir>/job.json` (`Job.prepare`) before it is launched; the worker
command is `python -m shiftbench.sweeps.worker <job dir>/job.json`, which reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError
from shiftbench.seeds import seed_hash
from shiftbench.setting import get_setting
from shiftbench.sweeps.facts import dataset_facts
from shiftbench.sweeps.spec import SEEDINGS, SweepSpec, sweep_units
from shiftbench.trial_record import (
    CORE_IDENTITY_KEYS,
    JOB_FILE,
    NOT_IDENTITY_KEYS,
    TrialSpec,
    identity,
    restricted,
    spec_hash,
    trial_options,
    weights_digest,
    write_job_file,
)

TrainArgs = TrialSpec
WORKER_MODULE = "shiftbench.sweeps.worker"
__all__ = ["CORE_IDENTITY_KEYS", "NOT_IDENTITY_KEYS", "Job", "enumerate_jobs", "job_hash",
           "job_identity", "make_job"]


PROTOCOL_SEEDING = {"shiftbench": "paired", "domainbed": "domainbed"}


def spec_seeding(spec: SweepSpec) -> str:
    """The spec's seeding: given, else its protocol's."""
    return spec.seeding or PROTOCOL_SEEDING.get(spec.trial.protocol, "paired")


def job_seed(seeding: str, dataset: str, algorithm: str, test_envs: Any, sources: Any,
             hparams_seed: int, trial_seed: int) -> int:
    """A job's `seed` under `seeding` (see the module docstring)."""
    if seeding == "paired":
        return seed_hash("paired", dataset, list(test_envs),
                         None if sources is None else list(sources), trial_seed)
    if seeding == "domainbed":  # DomainBed's sweep: seed_hash(dataset, algorithm, ...)
        return seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed)
    raise ShiftbenchError(f"unknown seeding {seeding!r}; valid: {', '.join(SEEDINGS)}")


def resolve_seeding(spec: SweepSpec, output_dir: str | Path, data_dir: str | None = None,
                    imports: tuple[str, ...] | list[str] = ()) -> tuple[str, str | None]:
    """The seeding to enumerate `spec` with in `output_dir`, and a note when it is not the
    default. A spec without `seeding` whose jobs already exist in `output_dir` under the other
    seeding only (a sweep made before paired seeding) continues with that one; a directory
    holding jobs of both is refused, naming the choice to make."""
    chosen = spec_seeding(spec)
    if spec.seeding is not None or not Path(output_dir).is_dir():
        return chosen, None
    other = next(s for s in SEEDINGS if s != chosen)

    def existing(seeding: str) -> int:
        jobs = enumerate_jobs(spec, output_dir, data_dir, imports, seeding=seeding)
        return sum(j.dir.is_dir() for j in jobs)

    mine, theirs = existing(chosen), existing(other)
    if not theirs:
        return chosen, None
    if mine:
        raise ShiftbenchError(
            f"{output_dir} holds jobs of this sweep under both seedings ({mine} {chosen}, "
            f"{theirs} {other}); set seeding = \"{chosen}\" or \"{other}\" in the spec "
            "(--seeding) to say which to continue")
    return other, (f"{output_dir}: continuing a sweep made with {other} seeding ({theirs} "
                   f"job(s) found); its trials are {'not ' if other == 'domainbed' else ''}"
                   f"paired across algorithms. Pass --seeding {chosen} to start the {chosen} "
                   "jobs beside them instead")


def job_identity(args: TrialSpec) -> dict[str, Any]:
    """The arguments that change a job's result (`shiftbench.trial_record.identity`)."""
    return identity(args)


def job_hash(args: TrialSpec) -> str:
    return spec_hash(args)


@dataclass
class Job:
    """One trial of a sweep: its arguments (with `output_dir` set) and its hash."""

    args: TrialSpec
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

    @property
    def spec_file(self) -> Path:
        return self.dir / JOB_FILE

    def prepare(self) -> Path:
        """Write the job's spec file (what the worker reads); returns its path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return write_job_file(self.dir, self.args)

    def command(self, python: str | None = None, threads: int | None = None) -> list[str]:
        """The worker's argv (no shell involved; run `prepare` first); `command_str` quotes it."""
        return [python or sys.executable, "-m", WORKER_MODULE, *self.worker_args(threads)]

    def worker_args(self, threads: int | None = None) -> list[str]:
        """The worker's arguments (`command()` after `python -m <worker module>`): what a
        launcher passes to `shiftbench.sweeps.worker.run` / `main_exit` to run the job in a
        process it made itself."""
        return [str(self.spec_file), *self._run_options(threads)]

    def _run_options(self, threads: int | None) -> list[str]:
        """Options that change how a job runs, not what it computes (imports, loggers, threads)."""
        argv: list[str] = []
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

    def train_command(self, python: str | None = None, threads: int | None = None) -> list[str]:
        """`python -m shiftbench train` with the job's spec as flags (what a dry run shows): it
        trains the same trial into the same directory, without the sweep's lock."""
        argv = [python or sys.executable, "-m", "shiftbench", "train"]
        defaults = TrialSpec().to_dict()
        options = trial_options()
        for name, value in self.args.to_dict().items():
            if isinstance(value, bool):
                if value:
                    argv.append("--" + name.replace("_", "-"))
                continue
            if not options[name].declaration.flag:
                continue  # no flag: derived (as weights_sha256, from the weights file)
            if value is None or (value == defaults[name] and name not in CORE_IDENTITY_KEYS
                                 and name != "output_dir"):
                continue
            argv.append("--" + name.replace("_", "-"))
            argv.extend(str(v) for v in value) if isinstance(value, list) else argv.append(str(value))
        return argv + self._run_options(threads)

    def train_command_str(self, python: str | None = None, threads: int | None = None) -> str:
        return shlex.join(self.train_command(python, threads))


def make_job(args: TrialSpec, output_dir: str | Path, imports: tuple[str, ...] = ()) -> Job:
    args.weights_sha256 = weights_digest(args.hparams)  # a changed weights file: a new job
    h = job_hash(args)
    args.output_dir = str(Path(output_dir) / h)
    return Job(args, h, tuple(imports))


def enumerate_jobs(spec: SweepSpec, output_dir: str | Path, data_dir: str | None = None,
                   imports: tuple[str, ...] | list[str] = (), seeding: str | None = None
                   ) -> list[Job]:
    """Every job of a validated spec, in a deterministic order, without duplicates; `seeding`
    overrides the spec's (`spec_seeding`)."""
    seeding = seeding or spec_seeding(spec)
    jobs: dict[str, Job] = {}
    setting = get_setting(spec.task)
    units = sweep_units(spec)
    for dataset in dict.fromkeys(u[0] for u in units):  # datasets x algorithms x held-out sets
        facts = dataset_facts(dataset)
        # the options that apply to this setting and dataset; the others at their defaults
        template = restricted(spec.trial, setting, facts)
        if setting.unlabeled_target and template.da_mode is None:
            template = dataclasses.replace(template, da_mode=spec.resolved_da_mode())
        steps = template.steps or facts.n_steps  # concrete, so it is hashed
        for algorithm, (_, sources, test_envs) in ((a, u) for a in spec.algorithms
                                                   for u in units if u[0] == dataset):
            for hparams_seed in range(spec.n_hparams_from, spec.n_hparams):
                for point in spec.grid_points(algorithm):
                    overrides = spec.overrides(algorithm, point, dataset)
                    for trial_seed in range(spec.n_trials):
                        args = dataclasses.replace(
                            template, dataset=dataset, algorithm=algorithm,
                            test_envs=list(test_envs), task=spec.task,
                            hparams=json.dumps(overrides, sort_keys=True) if overrides else None,
                            hparams_seed=hparams_seed, trial_seed=trial_seed,
                            seed=job_seed(seeding, dataset, algorithm, test_envs, sources,
                                          hparams_seed, trial_seed),
                            steps=steps, source_envs=None if sources is None else list(sources),
                            data_dir=data_dir)
                        job = make_job(args, output_dir, tuple(imports))
                        jobs.setdefault(job.hash, job)
    return list(jobs.values())
