"""The callable a Slurm task runs (a module of its own: it imports submitit at import time)."""

from __future__ import annotations

import os
import subprocess

import submitit


class SweepTask(submitit.helpers.Checkpointable):
    """Run a job's worker command (an argv list: no shell). On preemption or timeout, submitit
    calls `checkpoint()` (inherited) and requeues this same task, whose worker then resumes the
    trial from its last checkpoint."""

    def __init__(self, argv: list[str], job_dir: str, env: dict[str, str] | None = None):
        self.argv = list(argv)
        self.job_dir = job_dir
        self.env = dict(env or {})  # added to the task's environment (e.g. SHIFTBENCH_DEVICE)

    def __call__(self) -> int:
        env = {**os.environ, **getattr(self, "env", {})}
        code = subprocess.run(self.argv, check=False, env=env).returncode
        if code != 0:
            raise RuntimeError(f"job in {self.job_dir} exited with status {code}; see the "
                               "task's log")
        return code
