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
is already running elsewhere is never trained twice, whatever the launcher.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.registry import Registry
from shiftbench.sweeps.jobs import Job
from shiftbench.trial_record import ERR_FILE, OUT_FILE

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


def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _trained_by(job: Job, pid: int, started: float) -> bool:
    """Whether the worker `pid` started at `started` trained the job (it logs an attempt when it
    does; a worker that found the job done or locked by another launcher exits 0 without)."""
    import socket

    from shiftbench.sweeps.state import read_attempts

    host = socket.gethostname()
    return any(a.get("pid") == pid and a.get("host") == host and a.get("time", 0) >= started - 1
               for a in read_attempts(job.dir))


def _catch_sigint() -> Any:
    """Install Python's KeyboardInterrupt handler for SIGINT (main thread only); the previous
    handler, or None when it could not be changed."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.default_int_handler)


def run_pool(jobs: list[Job], slots: list[dict[str, str]], threads: int,
             options: LaunchOptions, desc: str = "sweep") -> LaunchResult:
    """Run jobs as subprocesses, one per slot at a time (a slot = extra environment variables).

    Ctrl-C forwards SIGINT to the running jobs, which stop at once and stay resumable."""
    from tqdm import tqdm

    result = LaunchResult()
    pending = deque(jobs)
    running: dict[int, tuple[Any, Job, float]] = {}
    base_env = dict(os.environ)  # read at launch: a forked job gets it too
    base_env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                     "OPENBLAS_NUM_THREADS": str(threads)})
    bar = tqdm(total=len(jobs), desc=desc, unit="job", disable=not options.progress,
               dynamic_ncols=True, file=sys.stderr)

    method = options.start_method
    if method not in ("forkserver", "subprocess"):
        raise UnknownNameError("start method", method, ("forkserver", "subprocess"))
    if options.python and options.python != sys.executable:
        method = "subprocess"  # another interpreter cannot be forked from this one
    ctx = _forkserver([m for job in jobs for m in job.imports]) if method == "forkserver" else None

    def start(slot: int, job: Job) -> None:
        if not job.spec_file.exists():
            job.prepare()
        argv = job.command(options.python, threads)
        if ctx is not None:
            proc: Any = ForkedJob(ctx, argv[3:], {**base_env, **slots[slot]},
                                  job.dir / OUT_FILE, job.dir / ERR_FILE)
        else:
            env = {**base_env, **slots[slot]}
            with open(job.dir / OUT_FILE, "ab") as out, open(job.dir / ERR_FILE, "ab") as err:
                proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
        running[slot] = (proc, job, time.time())
        result.launched += 1

    def reap() -> None:
        for slot, (proc, job, started) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[slot]
            if code == 0 and not _trained_by(job, proc.pid, started):
                result.elsewhere += 1
            elif code == 0:
                result.succeeded += 1
            else:
                result.failed.append(job)
                bar.write(f"FAILED ({code}) {job.describe()}: {_tail(job.dir / 'err.txt')} "
                          f"[{job.dir}]")
            bar.update(1)
            bar.set_postfix(running=len(running), failed=len(result.failed), refresh=False)

    # Ctrl-C must reach this loop even when the launch inherited SIGINT as ignored (started in
    # the background by a script, or by a process that ignores it): restored when the pool ends.
    previous = _catch_sigint()
    try:
        while pending or running:
            for slot in range(len(slots)):
                if slot not in running and pending:
                    start(slot, pending.popleft())
            reap()
            if running:
                time.sleep(options.poll_interval)
    except KeyboardInterrupt:
        result.interrupted = True
        for proc, _, _ in running.values():
            try:
                proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
        deadline = time.time() + 30
        for proc, _, _ in running.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        result.info.append(f"interrupted: {len(running)} running job(s) stopped and "
                           f"{len(pending)} not started; `sweep launch` again resumes them")
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return result


def _forkserver(extra_modules: list[str]):
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "shiftbench.trainer", "shiftbench.sweeps.worker",
                                *sorted(set(extra_modules))])
    return ctx


def _run_forked(argv: list[str], env: dict[str, str], out: str, err: str, cwd: str,
                path: list[str]) -> None:
    """Body of a forked job: own session; the launcher's environment, directory and import path
    as they are now (the server started earlier); output files; then the worker."""
    os.setsid()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path[:] = path
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, fd)
        os.close(target)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from shiftbench.sweeps.worker import main_exit

    main_exit(argv)


class ForkedJob:
    """A job forked from the forkserver, with the bits of `Popen`'s interface run_pool uses."""

    def __init__(self, ctx, argv: list[str], env: dict[str, str], out: Path, err: Path):
        self.process = ctx.Process(target=_run_forked, args=(
            argv, env, str(out), str(err), os.getcwd(), list(sys.path)))
        self.process.start()
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()


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



_SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.,:=@/+\-\[\]]+$")


def slurm_minutes(value: str | None) -> int | None:
    """Slurm time (`90`, `1:30:00`, `2-00:00:00`) in whole minutes."""
    if value is None:
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not m:
        raise ShiftbenchError(f"--slurm-time {value!r}: expected minutes or [D-]HH:MM[:SS]")
    days, a, b, c = (int(g) if g else 0 for g in m.groups())
    if m.group(3) is None:
        minutes = a if not m.group(1) else days * 1440 + a * 60
    else:
        minutes = days * 1440 + a * 60 + b + (1 if c else 0)
    return max(1, minutes)


def check_sbatch_value(name: str, value: Any) -> str:
    """sbatch options become `#SBATCH` lines: refuse anything that could break out of one."""
    text = str(value)
    if not _SBATCH_VALUE.match(text):
        raise ShiftbenchError(f"slurm option {name}={text!r} contains characters that are not "
                              "allowed (letters, digits and _.,:=@/+-[] only)")
    return text


def check_slurm_available() -> None:
    """submitit importable and Slurm's `sbatch` and `srun` on PATH, else an error naming what
    is missing."""
    import shutil

    missing = []
    try:
        import submitit  # noqa: F401
    except ImportError:
        missing.append("the Python package submitit (pip install 'submitit>=1.5', or "
                       "pip install 'shiftbench[slurm]')")
    if shutil.which("sbatch") is None:
        missing.append("Slurm's sbatch command (not found on PATH: this machine is not a Slurm "
                       "submit host, or Slurm's bin folder is not on PATH)")
    if shutil.which("srun") is None:  # submitit refuses to start without it
        missing.append("Slurm's srun command (not found on PATH; submitit starts every task "
                       "through srun)")
    if missing:
        raise ShiftbenchError("the slurm launcher needs " + " and ".join(missing)
                              + "; use --launcher local to run the sweep on this machine")


def slurm_executor(folder: str | Path, options: LaunchOptions, threads: int):
    try:
        import submitit
    except ImportError:
        raise ShiftbenchError("the slurm launcher needs submitit: pip install 'submitit>=1.5' "
                              "(or pip install shiftbench[slurm])") from None
    params: dict[str, Any] = {"job_name": "shiftbench", "cpus_per_task": options.cpus_per_task or threads,
                              "array_parallelism": options.array_parallelism, "nodes": 1,
                              "ntasks_per_node": 1}
    if options.partition:
        params["partition"] = check_sbatch_value("partition", options.partition)
    minutes = slurm_minutes(options.time)
    if minutes:
        params["time"] = minutes
    if options.mem:
        params["mem"] = check_sbatch_value("mem", options.mem)
    if options.gpus_per_task:
        params["gpus_per_node"] = int(options.gpus_per_task)
    extra = {check_sbatch_value("option", k): check_sbatch_value(k, v)
             for k, v in options.extra.items()}
    if extra:
        params["additional_parameters"] = extra
    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=options.max_num_timeout)
    executor.update_parameters(**params)
    return executor


@register_launcher("slurm")
def slurm_launcher(jobs: list[Job], options: LaunchOptions) -> LaunchResult:
    """One Slurm job array through submitit; a preempted or timed-out task is requeued and its
    job resumes from its checkpoint. With `wait`, shows progress until every task has ended."""
    from shiftbench.sweeps.slurm_task import SweepTask

    if not jobs:
        return LaunchResult()
    check_slurm_available()
    threads = options.threads or options.cpus_per_task or 1
    folder = options.slurm_folder or str(jobs[0].dir.parent / ".slurm" / "%j")
    executor = slurm_executor(folder, options, threads)
    from submitit.core.utils import FailedJobError

    try:
        with executor.batch():
            env = {"SHIFTBENCH_DEVICE": "cuda"} if options.gpus_per_task else {}  # GPU or fail
            submitted = [executor.submit(SweepTask(job.command(options.python, threads),
                                                   str(job.dir), env)) for job in jobs]
    except FailedJobError as e:  # sbatch itself failed: no controller, bad partition, ...
        message = " | ".join(line for line in str(e).splitlines() if line.strip())
        raise ShiftbenchError(f"sbatch refused the job array: {message or 'no message'}; nothing "
                              "was submitted. Check that the Slurm controller answers (sinfo) "
                              "and the --slurm-* options; `sweep launch` again submits the "
                              "jobs") from None
    ids = sorted({str(s.job_id).split("_")[0] for s in submitted})
    result = LaunchResult(launched=len(jobs), info=[
        f"submitted {len(jobs)} task(s) as Slurm job array {', '.join(ids)}; logs in "
        f"{Path(folder).parent}"])
    if options.wait:
        wait_for_slurm(submitted, jobs, result, options)
    return result


def wait_for_slurm(submitted: list, jobs: list[Job], result: LaunchResult,
                   options: LaunchOptions, timeout: float | None = None) -> None:
    """Poll submitit jobs until each has ended; count successes and failures."""
    from tqdm import tqdm

    start = last_check = time.time()
    pending = dict(enumerate(submitted))
    with tqdm(total=len(submitted), desc="slurm", unit="job", disable=not options.progress,
              file=sys.stderr) as bar:
        while pending:
            # A task's result file (success or error) appears when it ends; asking Slurm (sacct)
            # only now and then spares clusters without accounting a warning per poll.
            ask_slurm = time.time() - last_check > 30
            last_check = time.time() if ask_slurm else last_check
            for i, sjob in list(pending.items()):
                if not (sjob.paths.result_pickle.exists() or (ask_slurm and sjob.done())):
                    continue
                del pending[i]
                bar.update(1)
                try:
                    sjob.result()
                    result.succeeded += 1
                except Exception as e:  # noqa: BLE001 - any task failure is reported, not raised
                    result.failed.append(jobs[i])
                    bar.write(f"FAILED {jobs[i].describe()}: {str(e).strip().splitlines()[-1:]}")
            if timeout is not None and time.time() - start > timeout:
                raise ShiftbenchError(f"slurm jobs still pending after {timeout:.0f} s")
            time.sleep(1.0)
