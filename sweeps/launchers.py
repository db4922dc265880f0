"""Launchers: how a list of jobs gets run. A registry, so users can add their own::

    from shiftbench.sweeps.launchers import LaunchResult, register_launcher

    @register_launcher("my_cluster")
    def my_cluster(jobs, options):
        for job in jobs:
            submit(job.command_str(threads=options.threads))  # a shell-quoted command
        return LaunchResult(launched=len(jobs))

then `shiftbench sweep launch --launcher my_cluster --import my_module ...`, or, from an installed
package, declare the module under the entry-point group `shiftbench.launchers` and the name
resolves without `--import` (as algorithms and datasets do).

Every launcher runs `Job.command()` (the worker), which takes the job's lock first, so a job that
is already running elsewhere is never trained twice, whatever the launcher. A launcher that makes
its own processes (or runs jobs in this one) passes `Job.worker_args(threads)` to
`shiftbench.sweeps.worker.run`.
"""

from __future__ import annotations

from shiftbench.errors import ShiftbenchError
from shiftbench.sweeps.jobs import Job
from shiftbench.sweeps.launching import (
    LAUNCHERS,
    Launcher,
    LaunchOptions,
    LaunchResult,
    get_launcher,
    register_launcher,
    usable_cores,
)
from shiftbench.sweeps.pool import run_pool
from shiftbench.sweeps.slurm import (
    check_sbatch_value,
    check_slurm_available,
    slurm_launcher,
    slurm_minutes,
    wait_for_slurm,
)

__all__ = ["LAUNCHERS", "LaunchOptions", "LaunchResult", "Launcher", "check_sbatch_value",
           "check_slurm_available", "dry_run_launcher", "get_launcher", "local_launcher",
           "multi_gpu_launcher", "register_launcher", "run_pool", "slurm_launcher",
           "slurm_minutes", "usable_cores", "wait_for_slurm"]


@register_launcher("local")
def local_launcher(jobs: list[Job], options: LaunchOptions) -> LaunchResult:
    """N jobs at once on this machine; torch threads per job = cores / N (at least 1)."""
    cores = usable_cores()
    n = options.n_parallel or cores
    if n < 1:
        raise ShiftbenchError(f"--jobs must be >= 1, got {n}")
    threads = options.threads or max(1, cores // n)
    return run_pool(jobs, [{} for _ in range(n)], threads, options)


@register_launcher("multi_gpu")
def multi_gpu_launcher(jobs: list[Job], options: LaunchOptions) -> LaunchResult:
    """One job per GPU at a time, each seeing only its own (`CUDA_VISIBLE_DEVICES`) and required
    to use it (`shiftbench.sweeps.gpus`)."""
    from shiftbench.sweeps.gpus import DEVICE_ENV, resolve_gpus

    gpus = resolve_gpus("multi_gpu", options.gpus, options.gpu_ids) or []
    threads = options.threads or max(1, usable_cores() // len(gpus))
    return run_pool(jobs, [{"CUDA_VISIBLE_DEVICES": g, DEVICE_ENV: "cuda"} for g in gpus],
                    threads, options, desc="sweep (gpus " + ",".join(gpus) + ")")


@register_launcher("dry-run", "dry_run", "dummy")  # "dummy": DomainBed's name
def dry_run_launcher(jobs: list[Job], options: LaunchOptions) -> LaunchResult:
    """Print each job as its `shiftbench train` command; run nothing, write nothing."""
    for job in jobs:
        print(job.train_command_str(options.python, options.threads))
    return LaunchResult(info=[f"dry run: {len(jobs)} command(s) printed, nothing launched"])
