"""The callable a Slurm task runs (a module of its own: it imports submitit at import time)."""

from __future__ import annotations

import subprocess

import submitit


class SweepTask(submitit.helpers.Checkpointable):
    """Run a job's worker command (an argv list: no shell). On preemption or timeout, submitit
    calls `checkpoint()` (inherited) and requeues this same task, whose worker then resumes the
    trial from its last checkpoint."""

    def __init__(self, argv: list[str], job_dir: str):
        self.argv = list(argv)
        self.job_dir = job_dir

    def __call__(self) -> int:
        code = subprocess.run(self.argv, check=False).returncode
        if code != 0:
            raise RuntimeError(f"job in {self.job_dir} exited with status {code}; see the "
                               "task's log")
        return code
