"""A real Slurm round trip: a single-node cluster on loopback, a sweep through submitit.

tests/slurm/start_slurm.sh installs slurm-wlm + munge (as root, from the distribution) when they
are missing, starts munged/slurmctld/slurmd with a throwaway slurm.conf, and stop_slurm.sh stops
them by PID. The test skips, with the script's reason, only where Slurm cannot be installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from shiftbench.cli import main
from shiftbench.sweeps.jobs import enumerate_jobs
from shiftbench.sweeps.spec import SweepSpec
from shiftbench.sweeps.state import job_state, read_attempts

HERE = Path(__file__).parent / "slurm"


@pytest.fixture
def slurm_cluster(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    if shutil.which("bash") is None:
        pytest.skip("no bash to run tests/slurm/start_slurm.sh")
    state = tmp_path / "slurm"
    start = subprocess.run(["bash", str(HERE / "start_slurm.sh"), str(state)], capture_output=True,
                           text=True, timeout=900)
    if start.returncode == 3:
        pytest.skip(start.stderr.strip())
    try:
        assert start.returncode == 0, start.stderr
        monkeypatch.setenv("SLURM_CONF", str(state / "slurm.conf"))
        yield state
    finally:
        subprocess.run(["bash", str(HERE / "stop_slurm.sh"), str(state)], timeout=60)


@pytest.mark.slow
def test_slurm_sweep_round_trip(tmp_path, slurm_cluster):
    out = tmp_path / "sweep"
    flags = ["--datasets", "DebugVector", "--algorithms", "ERM", "--single-test-envs",
             "--n-trials", "1", "--steps", "3", "--output-dir", str(out)]
    code = main(["sweep", "launch", *flags, "--launcher", "slurm", "--slurm-wait",
                 "--slurm-time", "5", "--slurm-cpus", "1", "--threads", "1",
                 "--skip-confirmation", "--no-progress"])
    assert code == 0
    spec = SweepSpec(datasets=["DebugVector"], algorithms=["ERM"], n_trials=1, steps=3,
                     single_test_envs=True)
    spec.validate()
    jobs = enumerate_jobs(spec, out)
    assert len(jobs) == 3
    for job in jobs:
        assert job_state(job.dir).state == "done"
        attempts = read_attempts(job.dir)
        assert len(attempts) == 1 and attempts[0]["slurm_job_id"]  # ran inside Slurm
        steps = [json.loads(x)["step"] for x in (job.dir / "results.jsonl").read_text().splitlines()]
        assert steps[-1] == 2
    # The records collect (when the results package is installed).
    from shiftbench import cli

    if "collect" in cli.build_parser()._subparsers._group_actions[0].choices:
        assert cli.main(["collect", "--input-dir", str(out), "--format", "text",
                         "--output", str(tmp_path / "t.txt")]) == 0
        assert "ERM" in (tmp_path / "t.txt").read_text()
