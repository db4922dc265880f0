"""Run one sweep job: `python -m shiftbench.sweeps.worker <job dir>/job.json [--threads N]`.

The worker reads the job's spec from its `job.json` (written by the launcher, see
`shiftbench.sweeps.jobs.Job.prepare`), takes the job's lock (see `shiftbench.sweeps.state`)
before training, so however many launchers start the same job, only one trains it; the others
exit at once with status 0 and say so. A job started again after a crash resumes from its
checkpoint (the trainer does that). The `shiftbench train` flags are also accepted instead of a
job file (a command that carries the spec as flags, e.g. a requeued Slurm task written so).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import fields

EXIT_BUSY = 0  # another worker holds the job: not an error for the launcher


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m shiftbench.sweeps.worker",
                                description="run one sweep job under its lock")
    if argv and not argv[0].startswith("-"):
        p.add_argument("job_file", help="the job's job.json (or its directory)")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
        p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
        p.add_argument("--logger", dest="loggers", nargs="+", action="extend", default=[],
                       metavar="NAME", help="experiment loggers (see `shiftbench train --help`)")
    else:
        from shiftbench.cli import add_train_arguments

        add_train_arguments(p)
    return p.parse_args(argv)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _spec_of(ns: argparse.Namespace):
    from shiftbench.trial_record import TrialSpec, read_job_file

    if getattr(ns, "job_file", None):
        return read_job_file(ns.job_file)
    from shiftbench.backbones import merge_backbone_flags

    values = {f.name: getattr(ns, f.name) for f in fields(TrialSpec) if hasattr(ns, f.name)}
    values["test_envs"] = list(values["test_envs"])
    values["hparams"] = merge_backbone_flags(ns.hparams, ns.backbone, ns.weights)
    return TrialSpec(**values)


def run(argv: Sequence[str] | None = None) -> int:
    from shiftbench.cli import import_user_modules
    from shiftbench.errors import ShiftbenchError, StorageError
    from shiftbench.sweeps.state import JobLock, record_attempt
    from shiftbench.trial_dir import TrialDir
    from shiftbench.trial_record import write_job_file

    ns = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # Slurm preemption, `kill`: stop like Ctrl-C
    try:
        import_user_modules(ns.imports)
        spec = _spec_of(ns)
    except ShiftbenchError as e:
        print(f"shiftbench: error: {e}", file=sys.stderr)
        return e.exit_code
    if ns.threads:
        import torch

        torch.set_num_threads(ns.threads)
    lock = JobLock(spec.output_dir)
    try:
        acquired = lock.acquire()
    except (ShiftbenchError, OSError) as e:  # full disk, read-only directory
        err = e if isinstance(e, ShiftbenchError) else StorageError(e.filename or spec.output_dir, e)
        try:
            lock.release()
        except OSError:
            pass
        print(f"shiftbench: error: {err}", file=sys.stderr)
        return err.exit_code
    if not acquired:
        print(f"{spec.output_dir}: another worker is running this job; leaving it alone",
              flush=True)
        return EXIT_BUSY
    try:
        from shiftbench.trainer import normalize, train

        try:
            spec = normalize(spec)
            trial_dir = TrialDir(lock.dir)
            if trial_dir.done.exists():
                trial_dir.check_same_trial(spec)
                print(f"{spec.output_dir}: already done", flush=True)
                return 0
        except ShiftbenchError as e:
            print(f"shiftbench: error: {e}", file=sys.stderr)
            return e.exit_code
        try:
            if not getattr(ns, "job_file", None):
                write_job_file(lock.dir, spec)
            record_attempt(spec.output_dir,
                           resumed=trial_dir.checkpoint.exists()
                           or trial_dir.prev_checkpoint.exists(),
                           cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                           slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                           threads=ns.threads)
            from shiftbench.loggers import make_loggers

            train(spec, progress=False if ns.progress is None else ns.progress,
                  callbacks=make_loggers(ns.loggers, spec.output_dir))
        except ShiftbenchError as e:
            print(f"shiftbench: error: {e}", file=sys.stderr)
            return e.exit_code
        except OSError as e:  # the attempts log could not be written (full disk...)
            err = StorageError(e.filename or spec.output_dir, e)
            print(f"shiftbench: error: {err}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            print(f"{spec.output_dir}: interrupted; resumable from its last checkpoint",
                  file=sys.stderr, flush=True)
            return 130
        return 0
    finally:
        lock.release()


def main_exit(argv: Sequence[str] | None = None) -> None:
    """Run and exit with the worker's status (flushing output first)."""
    try:
        code = run(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    raise SystemExit(code)


if __name__ == "__main__":
    main_exit()
