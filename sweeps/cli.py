"""`shiftbench sweep launch | status | delete-incomplete | rerun-failed` (DomainBed's sweep flags).

    shiftbench sweep launch --datasets Digits --algorithms ERM DANN --n-trials 2 --steps 300 \\
        --output-dir sweep_out --launcher local
    shiftbench sweep status --datasets Digits --algorithms ERM DANN --n-trials 2 --steps 300 \\
        --output-dir sweep_out

Every subcommand re-enumerates the sweep from the same flags (or `--spec sweep.toml`), so the
same flags must be given each time, as in DomainBed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from collections import Counter, defaultdict
from dataclasses import fields

from shiftbench.errors import ShiftbenchError
from shiftbench.options import add_flags
from shiftbench.sweeps.gpus import parse_gpu_count, parse_gpu_ids
from shiftbench.sweeps.jobs import Job, enumerate_jobs, resolve_seeding
from shiftbench.sweeps.launchers import (
    LAUNCHERS,
    LaunchOptions,
    LaunchResult,
    check_slurm_available,
    get_launcher,
)
from shiftbench.sweeps.spec import SpecError, SweepSpec, load_spec, parse_hparams_flag, validate_spec
from shiftbench.sweeps.state import STATES, JobState, job_state, try_lock_for_delete
from shiftbench.trial_dir import TrialDir
from shiftbench.trial_record import sweep_options

MAX_LISTED = 100


def _flag(name: str) -> list[str]:
    from shiftbench.cli import flag

    return flag(name)


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that define a sweep (None = not given, so a --spec file's value stands)."""
    p.add_argument("--spec", default=None, metavar="TOML", help="sweep spec file (see docs)")
    p.add_argument(*_flag("datasets"), nargs="+", default=None)
    p.add_argument(*_flag("algorithms"), nargs="+", default=None,
                   help="default: every algorithm that supports --task")
    p.add_argument(*_flag("task"), default=None, help="dg (default) | uda | ssda | sda | tta")
    p.add_argument(*_flag("n_hparams"), type=int, default=None,
                   help="hparam seeds n_hparams_from..n_hparams-1 (default 1: defaults only)")
    p.add_argument(*_flag("n_hparams_from"), type=int, default=None)
    p.add_argument(*_flag("n_trials"), type=int, default=None, help="trial seeds (default 3)")
    p.add_argument(*_flag("hparams"), default=None, help="JSON object of fixed hparams")
    p.add_argument(*_flag("hparams_preset"), default=None, metavar="NAME",
                   help="a named protocol applied under --hparams (see shiftbench.presets), "
                        "e.g. dann_digits")
    p.add_argument(*_flag("single_test_envs"), action="store_true", default=None,
                   help="hold out single environments only (no pairs for leave-one-out)")
    add_flags(p, sweep_options().values(), sweep=True)  # the trial options every job gets
    p.add_argument(*_flag("seeding"), default=None, metavar="{paired,domainbed}",
                   help="how each job's seed is derived: paired (the shiftbench protocol's "
                        "default: one trial seed gives every algorithm the same batches and "
                        "initialisation) or domainbed (per algorithm and hparams seed)")
    p.add_argument(*_flag("source_envs"), nargs="+", default=None, metavar="ENV",
                   help="environments trained on, in every dataset (default: all but the held-out "
                        "ones); held-out sets are then each other environment")
    p.add_argument(*_flag("tasks"), nargs="+", default=None, metavar="SUITE",
                   help="named source->target task suites instead of held-out sets: office31, "
                        "officehome, digits, visda, domainnet, pacs, vlcs, officehome_loo, terra, "
                        "loo (see shiftbench.sweeps.tasks); --datasets optional")
    p.add_argument(*_flag("data_dir"), default=None)
    p.add_argument(*_flag("output_dir"), required=True)
    p.add_argument(*_flag("import"), dest="imports", action="append", default=[],
                   metavar="MODULE", help="import a module that registers algorithms/datasets/"
                                          "launchers")


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", "--command-launcher", "--command_launcher", dest="launcher",
                   default="local", help=f"one of: {', '.join(sorted(LAUNCHERS))} (default local)")
    p.add_argument(*_flag("skip_confirmation"), action="store_true")
    p.add_argument("--jobs", "-j", dest="n_parallel", type=int, default=None,
                   help="local: jobs at once (default: usable CPU cores)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per job (default: cores / jobs at once)")
    p.add_argument("--gpus", default=None, metavar="N",
                   help="multi_gpu: how many GPUs (the first N visible; default all)")
    p.add_argument("--gpu-ids", default=None, metavar="IDS",
                   help="multi_gpu: which GPUs, e.g. 0,1,3 (CUDA_VISIBLE_DEVICES ids)")
    p.add_argument("--python", default=None, help="interpreter the jobs run with")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--logger", dest="loggers", nargs="+", action="extend", default=[],
                   choices=("csv", "tensorboard", "wandb", "mlflow"), metavar="LOGGER",
                   help="experiment loggers for every job (csv, tensorboard, wandb, mlflow); "
                        "files go in each job's folder")
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--slurm-time", default=None, help="minutes or [D-]HH:MM[:SS]")
    p.add_argument("--slurm-mem", default=None, help="memory per task, e.g. 8G")
    p.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per task")
    p.add_argument("--slurm-cpus", type=int, default=None, help="CPUs per task")
    p.add_argument("--slurm-array-parallelism", type=int, default=256)
    p.add_argument("--slurm-folder", default=None, help="submitit logs (default OUTPUT/.slurm)")
    p.add_argument("--slurm-wait", action="store_true", help="wait for the tasks, with progress")
    p.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch option, e.g. --slurm-option qos=low (repeatable)")


def spec_from_args(ns: argparse.Namespace, check_hparams: bool = True) -> SweepSpec:
    """The sweep the flags (and spec file) describe, validated (hparam values only when
    `check_hparams`: they need the algorithm classes, hence torch)."""
    from shiftbench.cli import import_user_modules

    import_user_modules(ns.imports)
    spec = load_spec(ns.spec, validate=False) if ns.spec else SweepSpec()
    given = {f.name: getattr(ns, f.name) for f in fields(SweepSpec)
             if f.name not in ("hparams", "fixed", "grid", "test_envs", "source_envs", "trial")
             and getattr(ns, f.name, None) is not None}
    for name, value in given.items():
        setattr(spec, name, list(value) if isinstance(value, list) else value)
    for name in sweep_options():
        if getattr(ns, name, None) is not None:
            setattr(spec.trial, name, getattr(ns, name))
    if ns.source_envs:
        if spec.tasks:
            raise SpecError("--tasks (named source->target suites) replace --source-envs and "
                            "test-environment sets; give one or the other")
        spec.source_envs = {dataset: list(ns.source_envs) for dataset in spec.datasets}
    if ns.hparams:
        spec.hparams = {**spec.hparams, **parse_hparams_flag(ns.hparams)}
    validate_spec(spec, ns.spec, check_hparams)
    return spec


def sweep_jobs(ns: argparse.Namespace, check_hparams: bool = True) -> tuple[SweepSpec, list[Job]]:
    spec = spec_from_args(ns, check_hparams)
    seeding, note = resolve_seeding(spec, ns.output_dir, ns.data_dir, ns.imports)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return spec, enumerate_jobs(spec, ns.output_dir, ns.data_dir, ns.imports, seeding=seeding)


def job_states(jobs: list[Job]) -> dict[str, JobState]:
    return {job.hash: job_state(job.dir) for job in jobs}


def status_table(jobs: list[Job], states: dict[str, JobState]) -> str:
    """Counts per dataset/algorithm and state, with a total row and a progress bar."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for job in jobs:
        counts[(job.args.dataset, job.args.algorithm)][states[job.hash].state] += 1
    rows = []
    total: Counter = Counter()
    for (dataset, algorithm), c in counts.items():
        rows.append([dataset, algorithm] + [c[s] for s in STATES] + [sum(c.values())])
        total.update(c)
    rows.append(["total", ""] + [total[s] for s in STATES] + [sum(total.values())])
    # two-line headers ("not / launched") keep the table within 80 columns
    names = ["dataset", "algorithm", *STATES, "jobs"]
    head = [[n.split("_")[0] if "_" in n else "" for n in names],
            [n.split("_", 1)[-1] for n in names]]
    body = [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in head + body) for i in range(len(names))]
    grid = head + [["-" * w for w in widths]] + body
    table = "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                       for r in grid)
    n, done = len(jobs), total["done"]
    width = 40
    filled = int(width * done / n) if n else width
    bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{n} done ({100 * done / max(n, 1):.0f}%)"
    mean = mean_trial_seconds([j for j in jobs if states[j.hash].state == "done"])
    if mean is not None and done < n:
        bar += (f"; a done trial took {mean:.0f} s on average, so about {mean * (n - done):.0f} "
                "s of trial time remain (divide by the jobs run at once)")
    return table + "\n" + textwrap.fill(bar, 80, subsequent_indent="  ")


def mean_trial_seconds(done_jobs: list[Job], sample: int = 50) -> float | None:
    """Mean `wall_time` of the last record of (up to `sample`) finished jobs."""
    import json

    times = []
    for job in done_jobs[:sample]:
        try:
            with open(TrialDir(job.dir).results, "rb") as f:
                last = f.read().splitlines()[-1]
            times.append(float(json.loads(last)["wall_time"]))
        except (OSError, IndexError, KeyError, ValueError):
            continue
    return sum(times) / len(times) if times else None


def confirm(question: str, skip: bool) -> bool:
    if skip:
        return True
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        print("\nno answer on standard input; pass --skip-confirmation to proceed without one",
              file=sys.stderr)
        return False
    return answer.strip().lower() in ("y", "yes")


def launch_options(ns: argparse.Namespace) -> LaunchOptions:
    extra = {}
    for item in ns.slurm_option:
        if "=" not in item:
            raise ShiftbenchError(f"--slurm-option {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        extra[k] = v
    return LaunchOptions(
        n_parallel=ns.n_parallel, threads=ns.threads,
        gpus=parse_gpu_count(ns.gpus), gpu_ids=parse_gpu_ids(ns.gpu_ids), python=ns.python,
        progress=ns.progress, slurm_folder=ns.slurm_folder, partition=ns.slurm_partition,
        time=ns.slurm_time, mem=ns.slurm_mem, gpus_per_task=ns.slurm_gpus,
        cpus_per_task=ns.slurm_cpus, array_parallelism=ns.slurm_array_parallelism,
        wait=ns.slurm_wait, extra=extra)


def check_launch(name: str, options: LaunchOptions) -> None:
    """What a launcher needs from this machine (GPUs, Slurm), checked before anything is written."""
    from shiftbench.sweeps.gpus import resolve_gpus

    resolve_gpus(name, options.gpus, options.gpu_ids)
    if name == "slurm":
        check_slurm_available()


def _list(jobs: list[Job], states: dict[str, JobState]) -> None:
    """One line per job (at most 80 columns); hparams shared by every job are said once."""
    shared = {j.args.hparams for j in jobs}
    if len(shared) == 1 and None not in shared:
        print(textwrap.fill(f"  hparams of every job: {shared.pop()}", 80, subsequent_indent="    "))
        shared = set()
    for job in jobs[:MAX_LISTED]:
        a = job.args
        text = (f"  {states[job.hash].state:<12} {job.hash[:8]}  {a.dataset} {a.algorithm} "
                f"{a.task} test_envs={a.test_envs} trial {a.trial_seed} hparams {a.hparams_seed}"
                + (f" {a.hparams}" if shared and a.hparams else ""))
        print(textwrap.fill(text, 80, subsequent_indent=" " * 25))
    if len(jobs) > MAX_LISTED:
        print(f"  ... and {len(jobs) - MAX_LISTED} more")


def run_launch(jobs: list[Job], ns: argparse.Namespace, states: dict[str, JobState],
               what: str) -> int:
    launcher = get_launcher(ns.launcher)
    options = launch_options(ns)
    if not jobs:
        print(f"nothing to launch: no {what} job")
        return 0
    if ns.launcher not in ("dry-run", "dry_run", "dummy"):
        print(f"{what} jobs to launch with the {ns.launcher} launcher:")
        _list(jobs, states)
        if not confirm(f"Launch {len(jobs)} job(s)?", ns.skip_confirmation):
            print("nothing launched")
            return 1
    if ns.launcher not in ("dry-run", "dry_run", "dummy"):
        check_launch(ns.launcher, options)  # refused before any job directory is written
        for job in jobs:  # the spec file each worker reads
            job.prepare()
    result: LaunchResult = launcher(jobs, options)
    for line in result.info:
        print(line)
    if ns.launcher not in ("dry-run", "dry_run", "dummy", "slurm") or options.wait:
        elsewhere = (f", {result.elsewhere} done or running by another launcher (not run here)"
                     if result.elsewhere else "")
        print(f"launched {result.launched}, succeeded {result.succeeded} (trained here)"
              f"{elsewhere}, failed {len(result.failed)}")
    if result.interrupted:
        return 130
    return 1 if result.failed else 0


def _with_loggers(jobs: list[Job], ns: argparse.Namespace) -> list[Job]:
    """The jobs with `--logger` set (packages checked here, before anything is launched)."""
    names = getattr(ns, "loggers", [])
    if not names:
        return jobs
    import dataclasses

    from shiftbench.loggers import make_loggers

    make_loggers(names, ".")  # fails early when a logger's package is missing
    return [dataclasses.replace(j, loggers=tuple(names)) for j in jobs]


def cmd_launch(ns: argparse.Namespace) -> int:
    _, jobs = sweep_jobs(ns)
    jobs = _with_loggers(jobs, ns)
    states = job_states(jobs)
    print(status_table(jobs, states))
    todo = [j for j in jobs if states[j.hash].state in ("not_launched", "incomplete")]
    n_failed = sum(s.state == "failed" for s in states.values())
    if n_failed:
        print(f"{n_failed} failed job(s) are not relaunched; see `sweep status --verbose` and "
              "`sweep rerun-failed`")
    return run_launch(todo, ns, states, "not-done")


def cmd_status(ns: argparse.Namespace) -> int:
    _, jobs = sweep_jobs(ns, check_hparams=False)  # reads states only: no torch
    states = job_states(jobs)
    print(status_table(jobs, states))
    if ns.verbose:
        for job in jobs:
            st = states[job.hash]
            if st.state != "done":
                print(textwrap.fill(f"{st.state:<12} {job.hash}  {job.describe()}", 80,
                                    subsequent_indent=" " * 13))
                if st.detail:
                    print(textwrap.fill(st.detail, 80, initial_indent=" " * 13,
                                        subsequent_indent=" " * 13))
    return 0


def cmd_delete_incomplete(ns: argparse.Namespace) -> int:
    _, jobs = sweep_jobs(ns)
    states = job_states(jobs)
    wanted = ("incomplete", "failed") if ns.include_failed else ("incomplete",)
    victims = [j for j in jobs if states[j.hash].state in wanted]
    if not victims:
        print("no incomplete job to delete")
        return 0
    print("jobs to delete (running jobs are never deleted):")
    _list(victims, states)
    if not confirm(f"Delete {len(victims)} job directory(ies)?", ns.skip_confirmation):
        print("nothing deleted")
        return 1
    deleted = delete_jobs(victims)
    print(f"deleted {deleted} job director{'y' if deleted == 1 else 'ies'}")
    return 0


def delete_jobs(jobs: list[Job]) -> int:
    """Remove job directories, each under its lock (a job that started meanwhile is kept)."""
    import os

    deleted = 0
    for job in jobs:
        fd = try_lock_for_delete(job.dir)
        if fd is None:
            continue
        try:
            if job_state(job.dir).state in ("incomplete", "failed"):
                shutil.rmtree(job.dir)
                deleted += 1
        finally:
            os.close(fd)
    return deleted


def cmd_rerun_failed(ns: argparse.Namespace) -> int:
    _, jobs = sweep_jobs(ns)
    jobs = _with_loggers(jobs, ns)
    states = job_states(jobs)
    failed = [j for j in jobs if states[j.hash].state == "failed"]
    for job in failed[:MAX_LISTED]:
        print(textwrap.fill(f"  failed: {job.describe()}: {states[job.hash].detail}", 80,
                            subsequent_indent="    "))
    if failed and ns.from_scratch:
        if not confirm(f"Delete the {len(failed)} failed job(s)' checkpoints and records?",
                       ns.skip_confirmation):
            return 1
        delete_jobs(failed)
        ns.skip_confirmation = True
    return run_launch(failed, ns, states, "failed")


def register(subparsers) -> None:
    """Add `sweep` with its subcommands."""
    p = subparsers.add_parser("sweep", help="launch and manage sweeps of trials",
                              description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND")
    sub.required = True

    q = sub.add_parser("launch", help="run every job that is not done (resumes incomplete ones)")
    add_spec_arguments(q)
    add_launch_arguments(q)
    q.set_defaults(func=cmd_launch)

    q = sub.add_parser("status", help="counts of done/running/incomplete/failed/not launched")
    add_spec_arguments(q)
    q.add_argument("--verbose", "-v", action="store_true", help="list every job that is not done")
    q.set_defaults(func=cmd_status)

    q = sub.add_parser("delete-incomplete", aliases=["delete_incomplete"],
                       help="delete the directories of incomplete jobs (never running ones)")
    add_spec_arguments(q)
    q.add_argument(*_flag("skip_confirmation"), action="store_true")
    q.add_argument("--include-failed", action="store_true", help="delete failed jobs too")
    q.set_defaults(func=cmd_delete_incomplete)

    q = sub.add_parser("rerun-failed", aliases=["rerun_failed"],
                       help="launch the failed jobs again (from their checkpoint, or "
                            "--from-scratch)")
    add_spec_arguments(q)
    add_launch_arguments(q)
    q.add_argument("--from-scratch", action="store_true",
                   help="delete their checkpoints and records first")
    q.set_defaults(func=cmd_rerun_failed)
