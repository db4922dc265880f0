"""The `slurm` launcher: one Slurm job array through submitit (imported only when used)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError
from shiftbench.sweeps.jobs import Job
from shiftbench.sweeps.launching import LaunchOptions, LaunchResult, register_launcher

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
    from shiftbench.progress import fit, jobs_progress

    start = last_check = time.time()
    pending = dict(enumerate(submitted))
    with jobs_progress(len(submitted), "slurm", options.progress) as bar:
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
                    bar.write(fit(f"FAILED {jobs[i].describe()}: {str(e).strip().splitlines()[-1:]}"))
            if timeout is not None and time.time() - start > timeout:
                raise ShiftbenchError(f"slurm jobs still pending after {timeout:.0f} s")
            time.sleep(1.0)
