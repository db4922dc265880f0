"""Running jobs on this machine: a pool of worker processes, one per slot (a slot is a set of
extra environment variables, e.g. one GPU), forked from a forkserver that imported torch once.
Used by the `local` and `multi_gpu` launchers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from shiftbench.errors import UnknownNameError
from shiftbench.sweeps.jobs import Job
from shiftbench.sweeps.launching import LaunchOptions, LaunchResult
from shiftbench.trial_record import ERR_FILE, OUT_FILE


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
    from shiftbench.progress import fit, jobs_progress

    result = LaunchResult()
    pending = deque(jobs)
    running: dict[int, tuple[Any, Job, float]] = {}
    base_env = dict(os.environ)  # read at launch: a forked job gets it too
    base_env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                     "OPENBLAS_NUM_THREADS": str(threads)})
    bar = jobs_progress(len(jobs), desc, options.progress)  # plain lines off a terminal

    method = options.start_method
    if method not in ("forkserver", "subprocess"):
        raise UnknownNameError("start method", method, ("forkserver", "subprocess"))
    if options.python and options.python != sys.executable:
        method = "subprocess"  # another interpreter cannot be forked from this one
    ctx = _forkserver([m for job in jobs for m in job.imports]) if method == "forkserver" else None

    def start(slot: int, job: Job) -> None:
        if not job.spec_file.exists():
            job.prepare()
        if ctx is not None:
            proc: Any = ForkedJob(ctx, job.worker_args(threads), {**base_env, **slots[slot]},
                                  job.dir / OUT_FILE, job.dir / ERR_FILE)
        else:
            env = {**base_env, **slots[slot]}
            with open(job.dir / OUT_FILE, "ab") as out, open(job.dir / ERR_FILE, "ab") as err:
                proc = subprocess.Popen(job.command(options.python, threads), stdout=out,
                                        stderr=err, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
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
                bar.write(fit(f"FAILED ({code}) {job.describe()}: {_tail(job.dir / 'err.txt')} "
                              f"[{job.dir}]"))
            bar.set_postfix(running=len(running), failed=len(result.failed), refresh=False)
            bar.update(1)

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
