"""The launcher registry and what launchers take and give (`LaunchOptions`, `LaunchResult`).

The public module is `shiftbench.sweeps.launchers`, which also registers the built-in launchers;
this one holds what they and plug-ins share, so that none of them imports another.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shiftbench.registry import Registry
from shiftbench.sweeps.jobs import Job

Launcher = Callable[[list[Job], "LaunchOptions"], "LaunchResult"]
LAUNCHERS: Registry[Launcher] = Registry("launcher", "shiftbench.launchers")


def register_launcher(name: str, *aliases: str) -> Callable[[Launcher], Launcher]:
    """Decorator: register `fn(jobs, options) -> LaunchResult` under `name` (and `aliases`)."""

    def wrap(fn: Launcher) -> Launcher:
        for key in (name, *aliases):
            LAUNCHERS.register(key)(fn)
        return fn

    return wrap


def get_launcher(name: str) -> Launcher:
    """The launcher registered as `name` (installed plug-ins' entry points included)."""
    return LAUNCHERS.lookup(name)


@dataclass
class LaunchOptions:
    """Options shared by the launchers (each reads the ones it understands)."""

    n_parallel: int | None = None  # local: jobs at once (default: the usable CPU cores)
    threads: int | None = None  # torch threads per job (default: cores / jobs at once)
    gpus: int | None = None  # multi_gpu: how many devices (`shiftbench.sweeps.gpus`)
    gpu_ids: list[str] | None = None  # multi_gpu: which devices (default: every visible one)
    python: str | None = None  # interpreter for the jobs (default: this one)
    progress: bool = True
    poll_interval: float = 0.05
    # local/multi_gpu: "forkserver" forks each job from a process that imported torch and
    # shiftbench once (saves seconds of imports per job); "subprocess" runs the command line.
    start_method: str = "forkserver"
    # slurm
    slurm_folder: str | None = None
    partition: str | None = None
    time: str | None = None  # minutes, or [D-]HH:MM[:SS]
    mem: str | None = None  # e.g. 8G
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    array_parallelism: int = 256
    max_num_timeout: int = 3  # requeues after timeout/preemption
    wait: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more sbatch options


@dataclass
class LaunchResult:
    launched: int = 0
    succeeded: int = 0  # trained (or resumed to the end) by this launch's workers
    elsewhere: int = 0  # ended at once: another launcher had done or was running the job
    failed: list[Job] = field(default_factory=list)
    interrupted: bool = False
    info: list[str] = field(default_factory=list)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
