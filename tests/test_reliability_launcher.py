"""A launcher SIGKILLed mid-sweep while its job keeps running, then relaunched: every job ends once.

(`tests/test_sweeps_launch.py` covers the launcher and its worker killed together, Ctrl-C, and two
launchers at once.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import erm_lr_grid_spec

from shiftbench.cli import main
from shiftbench.sweeps.jobs import enumerate_jobs
from shiftbench.sweeps.spec import SweepSpec
from shiftbench.sweeps.state import job_state, read_attempts

STEPS, FREQ = 80, 10
FLAGS = ["--datasets", "DebugVector", "--algorithms", "ERM", "--single-test-envs", "--n-trials", "1",
         "--steps", str(STEPS), "--checkpoint-freq", str(FREQ), "--jobs", "1", "--skip-confirmation",
         "--no-progress", "--threads", "1"]


def _records(job_dir) -> list[dict]:
    path = job_dir / "results.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sigkilled_launcher_orphan_job_and_relaunch_end_every_job_once(tmp_path):
    out = tmp_path / "sweep"
    spec = SweepSpec(datasets=["DebugVector"], algorithms=["ERM"], n_trials=1, steps=STEPS,
                     single_test_envs=True, checkpoint_freq=FREQ)
    spec.validate()
    jobs = enumerate_jobs(spec, out)
    assert len(jobs) == 3
    launcher = subprocess.Popen([sys.executable, "-m", "shiftbench", "sweep", "launch", *FLAGS,
                                 "--output-dir", str(out)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    worker_pid = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            running = jobs[0].dir / "running"
            if running.exists() and len(_records(jobs[0].dir)) >= 2:
                worker_pid = json.loads(running.read_text())["pid"]
                break
            time.sleep(0.02)
        else:
            pytest.fail("the first job never reached its second checkpoint")
        os.kill(launcher.pid, signal.SIGKILL)  # only the launcher: its worker runs on, orphaned
        launcher.wait()
        # Relaunch at once: the orphan still holds its job, the others are (re)started here.
        assert main(["sweep", "launch", *FLAGS, "--output-dir", str(out)]) == 0
        deadline = time.time() + 120
        while not (jobs[0].dir / "done").exists() and time.time() < deadline:
            time.sleep(0.05)
        while (jobs[0].dir / "running").exists() and time.time() < deadline:
            time.sleep(0.05)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        if worker_pid is not None and (jobs[0].dir / "running").exists():
            _kill(worker_pid)
        for job in jobs:  # never leave a worker behind, whatever happened
            info = job.dir / "running"
            if info.exists():
                try:
                    _kill(json.loads(info.read_text())["pid"])
                except (ValueError, KeyError):
                    pass
    expected = list(range(0, STEPS, FREQ)) + [STEPS - 1]
    for job in jobs:
        assert job_state(job.dir).state == "done", job.dir
        assert [r["step"] for r in _records(job.dir)] == expected  # no duplicate, none missing
    assert len(read_attempts(jobs[0].dir)) == 1  # the orphan was never trained a second time
    for job in jobs[1:]:  # not started before the kill: trained once, by the relaunch
        assert [a["resumed"] for a in read_attempts(job.dir)] == [False]
    # A further launch finds nothing to do and changes nothing.
    before = [(j.dir / "results.jsonl").read_bytes() for j in jobs]
    assert main(["sweep", "launch", *FLAGS, "--output-dir", str(out)]) == 0
    assert [(j.dir / "results.jsonl").read_bytes() for j in jobs] == before


def test_a_diverging_job_is_failed_the_sweep_goes_on_and_collect_shows_it(tmp_path, capsys):
    out = tmp_path / "sweep"
    spec = erm_lr_grid_spec(tmp_path, (1e-3, 1e30))
    flags = ["--spec", str(spec), "--output-dir", str(out), "--skip-confirmation", "--no-progress",
             "--threads", "1"]
    assert main(["sweep", "launch", *flags]) == 1  # one job failed; the other still ran
    states = {}
    for job_dir in (p for p in out.iterdir() if (p / "results.jsonl").exists() or (p / "failed").exists()):
        states[job_state(job_dir).state] = job_dir
    assert set(states) == {"done", "failed"}
    failed = json.loads((states["failed"] / "failed").read_text())
    assert failed["error"] == "non-finite loss" and isinstance(failed["step"], int)
    assert any(v in ("nan", "inf") for v in failed["values"].values())
    capsys.readouterr()
    assert main(["collect", "--input-dir", str(out), "--selection", "oracle"]) == 0
    text = capsys.readouterr().out
    assert "1 done" in text and "1 failed" in text
