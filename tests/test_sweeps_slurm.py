"""A real Slurm round trip: a single-node cluster on loopback, a sweep through submitit.

tests/slurm/start_slurm.sh installs slurm-wlm + munge (as root, from the distribution) when they
are missing, starts munged/slurmctld/slurmd with a throwaway slurm.conf, and stop_slurm.sh stops
them by PID. The test skips, with the script's reason, only where Slurm cannot be installed."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from shiftbench.cli import main
from shiftbench.sweeps.jobs import enumerate_jobs
from shiftbench.sweeps.spec import SweepSpec
from shiftbench.sweeps.state import job_state, read_attempts

HERE = Path(__file__).parent / "slurm"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    pytest.importorskip("submitit")
    tmp_path = tmp_path_factory.mktemp("slurm-cluster")
    monkeypatch = pytest.MonkeyPatch()
    if shutil.which("bash") is None:
        pytest.skip("no bash to run tests/slurm/start_slurm.sh")
    state = tmp_path / "slurm"
    # one cluster at a time on this machine: its daemons listen on fixed ports, and with
    # pytest-xdist each worker that runs a test of this module builds its own cluster
    lock = open(Path(tempfile.gettempdir()) / "shiftbench-test-slurm.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    start = subprocess.run(["bash", str(HERE / "start_slurm.sh"), str(state)], capture_output=True,
                           text=True, timeout=900)
    if start.returncode == 3:
        lock.close()
        pytest.skip(start.stderr.strip())
    try:
        assert start.returncode == 0, start.stderr
        monkeypatch.setenv("SLURM_CONF", str(state / "slurm.conf"))
        yield state
    finally:
        monkeypatch.undo()
        subprocess.run(["bash", str(HERE / "stop_slurm.sh"), str(state)], timeout=60)
        lock.close()


@pytest.mark.slow
@pytest.mark.slurm
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


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_requeued_task_resumes_from_checkpoint(tmp_path, slurm_cluster):
    """A running task requeued by Slurm (as on preemption) continues from its checkpoint."""
    out = tmp_path / "sweep"
    toml = tmp_path / "one.toml"
    toml.write_text("[test_envs]\nDebugVector = [[0]]\n")
    code = main(["sweep", "launch", "--datasets", "DebugVector", "--algorithms", "ERM",
                 "--spec", str(toml), "--n-trials", "1", "--steps", "600", "--checkpoint-freq",
                 "20", "--output-dir", str(out), "--launcher", "slurm", "--slurm-time", "5",
                 "--slurm-cpus", "1", "--threads", "1", "--skip-confirmation", "--no-progress"])
    assert code == 0
    spec = SweepSpec(datasets=["DebugVector"], algorithms=["ERM"], n_trials=1, steps=600,
                     checkpoint_freq=20, test_envs={"DebugVector": [[0]]})
    spec.validate()
    (job,) = enumerate_jobs(spec, out)
    job_dir = job.dir
    results = job_dir / "results.jsonl"
    deadline = time.time() + 240
    while not (results.exists() and len(results.read_text().splitlines()) >= 3):
        assert time.time() < deadline, "the Slurm task never reached its third checkpoint"
        time.sleep(0.1)
    slurm_id = read_attempts(job_dir)[0]["slurm_job_id"]
    subprocess.run(["scontrol", "requeue", slurm_id], check=True, timeout=30)
    # Slurm holds a requeued job for a while (BeginTime); once it is pending again, release it
    # now, as the administrator.
    deadline = time.time() + 120
    while "PENDING" not in subprocess.run(["squeue", "-h", "-o", "%T", "-j", slurm_id],
                                          capture_output=True, text=True, timeout=30).stdout:
        assert time.time() < deadline, "the requeued task never became pending"
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"jobid={slurm_id}", "StartTime=now"], check=True,
                   timeout=30)
    deadline = time.time() + 360
    while not (job_dir / "done").exists():
        assert time.time() < deadline, "the requeued task did not finish"
        time.sleep(0.2)
    deadline = time.time() + 30  # let the task leave the queue before the cluster stops
    while subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=30).stdout:
        if time.time() > deadline:
            break
        time.sleep(0.2)
    assert [a["resumed"] for a in read_attempts(job_dir)] == [False, True]
    steps = [json.loads(x)["step"] for x in results.read_text().splitlines()]
    assert steps == list(range(0, 600, 20)) + [599]
