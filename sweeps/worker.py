"""Run one sweep job: `python -m shiftbench.sweeps.worker <shiftbench train flags>`.

The worker takes the job's lock (see `shiftbench.sweeps.state`) before training, so however many
launchers start the same job, only one trains it; the others exit at once with status 0 and say
so. A job started again after a crash resumes from its checkpoint (the trainer does that).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields

EXIT_BUSY = 0  # another worker holds the job: not an error for the launcher


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    from shiftbench.cli import add_train_arguments

    p = argparse.ArgumentParser(prog="python -m shiftbench.sweeps.worker",
                                description="run one sweep job under its lock")
    add_train_arguments(p)
    return p.parse_args(argv)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(argv: Sequence[str] | None = None) -> int:
    from shiftbench.cli import import_user_modules
    from shiftbench.errors import ShiftbenchError, StorageError
    from shiftbench.paths import atomic_write_bytes
    from shiftbench.sweeps.jobs import job_hash, job_identity
    from shiftbench.sweeps.state import JOB_FILE, JobLock, record_attempt
    from shiftbench.trainer import TrainArgs, train

    ns = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # Slurm preemption, `kill`: stop like Ctrl-C
    import_user_modules(ns.imports)
    if ns.threads:
        import torch

        torch.set_num_threads(ns.threads)
    values = {f.name: getattr(ns, f.name) for f in fields(TrainArgs)}
    values["test_envs"] = list(values["test_envs"])
    args = TrainArgs(**values)
    lock = JobLock(args.output_dir)
    try:
        acquired = lock.acquire()
    except (ShiftbenchError, OSError) as e:  # full disk, read-only directory
        err = e if isinstance(e, ShiftbenchError) else StorageError(e.filename or args.output_dir, e)
        try:
            lock.release()
        except OSError:
            pass
        print(f"shiftbench: error: {err}", file=sys.stderr)
        return err.exit_code
    if not acquired:
        print(f"{args.output_dir}: another worker is running this job; leaving it alone",
              flush=True)
        return EXIT_BUSY
    try:
        if (lock.dir / "done").exists():
            print(f"{args.output_dir}: already done", flush=True)
            return 0
        try:
            from shiftbench.trainer import validate_args

            validate_args(args)
        except ShiftbenchError as e:
            print(f"shiftbench: error: {e}", file=sys.stderr)
            return e.exit_code
        try:
            atomic_write_bytes(lock.dir / JOB_FILE, json.dumps(
                {"args": asdict(args), "identity": job_identity(args), "hash": job_hash(args)},
                indent=1, sort_keys=True).encode())
            record_attempt(args.output_dir,
                           resumed=(lock.dir / "checkpoint.pt").exists()
                           or (lock.dir / "checkpoint.prev.pt").exists(),
                           cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                           slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                           threads=ns.threads)
            from shiftbench.loggers import make_loggers

            train(args, progress=False if ns.progress is None else ns.progress,
                  callbacks=make_loggers(ns.loggers, args.output_dir))
        except ShiftbenchError as e:
            print(f"shiftbench: error: {e}", file=sys.stderr)
            return e.exit_code
        except OSError as e:  # the attempts log could not be written (full disk...)
            err = StorageError(e.filename or args.output_dir, e)
            print(f"shiftbench: error: {err}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            print(f"{args.output_dir}: interrupted; resumable from its last checkpoint",
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
