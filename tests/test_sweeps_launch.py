"""Job state, idempotent launching, crash recovery, delete-incomplete, rerun-failed, multi_gpu.

These start real worker processes on the tiny DebugVector dataset (a few steps each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shiftbench.cli import main
from shiftbench.sweeps.jobs import enumerate_jobs
from shiftbench.sweeps.spec import SweepSpec
from shiftbench.sweeps.state import JobLock, job_state, read_attempts

SWEEP = ["--datasets", "DebugVector", "--algorithms", "ERM", "--single-test-envs"]


def _jobs(out: Path, n_trials: int = 1, steps: int = 3, algorithm: str = "ERM",
          checkpoint_freq: int | None = None):
    spec = SweepSpec(datasets=["DebugVector"], algorithms=[algorithm], n_trials=n_trials, steps=steps,
                     single_test_envs=True, checkpoint_freq=checkpoint_freq)
    spec.validate()
    return enumerate_jobs(spec, out)


def _records(job_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (job_dir / "results.jsonl").read_text().splitlines()]


def _launch_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shiftbench", "sweep", "launch", *SWEEP, "--output-dir", str(out),
            "--skip-confirmation", "--no-progress", "--threads", "1", *extra]


def test_lock_is_exclusive_across_processes_and_crash_is_not_running(tmp_path):
    job_dir = tmp_path / "job"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from shiftbench.sweeps.state import JobLock, record_attempt
        lock = JobLock({str(job_dir)!r}, interval=0.2)
        assert lock.acquire()
        record_attempt({str(job_dir)!r})
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert job_state(job_dir).state == "running"
        assert not JobLock(job_dir).acquire()  # a second owner is refused
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        # The heartbeat file is still there, but its process is gone: not running.
        assert (job_dir / "running").exists()
        assert job_state(job_dir).state == "incomplete"
        lock = JobLock(job_dir)
        assert lock.acquire()  # the kernel released the dead owner's lock
        lock.release()
    finally:
        holder.kill()


def test_stale_heartbeat_from_another_host_is_not_running(tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "attempts.jsonl").write_text("{}\n")
    (job_dir / "running").write_text(json.dumps({"pid": 1, "host": "elsewhere", "heartbeat": 1}))
    assert job_state(job_dir).state == "running"  # fresh: trusted (we cannot see that host)
    old = time.time() - 60
    os.utime(job_dir / "running", (old, old))
    assert job_state(job_dir).state == "incomplete"


@pytest.mark.slow
def test_two_concurrent_launchers_run_each_job_once(tmp_path):
    out = tmp_path / "sweep"
    cmd = _launch_cmd(out, "--n-trials", "1", "--steps", "3", "--jobs", "2")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    jobs = _jobs(out, n_trials=1)
    assert len(jobs) == 3
    for job in jobs:
        assert job_state(job.dir).state == "done"
        assert len(read_attempts(job.dir)) == 1, job.dir  # trained by exactly one worker
        steps = [r["step"] for r in _records(job.dir)]
        assert steps == sorted(set(steps)) and steps[-1] == 2
    # Each launcher reports what its own workers trained: together, each job once.
    import re

    summaries = [re.search(r"launched (\d+), succeeded (\d+) \(trained here\)(?:, (\d+) done "
                           r"or running by another launcher)?", o) for o in outputs]
    assert all(summaries), outputs
    assert sum(int(m.group(2)) for m in summaries) == 3, outputs
    assert all(int(m.group(1)) == int(m.group(2)) + int(m.group(3) or 0) for m in summaries)
    # A third launch finds nothing to do.
    assert main(["sweep", "launch", *SWEEP, "--output-dir", str(out), "--n-trials", "1",
                 "--steps", "3", "--skip-confirmation"]) == 0
    assert all(len(read_attempts(j.dir)) == 1 for j in jobs)


@pytest.mark.slow
def test_sigkilled_job_resumes_from_checkpoint_without_duplicate_records(tmp_path):
    out = tmp_path / "sweep"
    args = ["--n-trials", "1", "--steps", "400", "--checkpoint-freq", "20", "--jobs", "1"]
    launcher = subprocess.Popen(_launch_cmd(out, *args), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    job = _jobs(out, steps=400, checkpoint_freq=20)[0]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (job.dir / "results.jsonl").exists() and len(_records(job.dir)) >= 3 and \
                    (job.dir / "running").exists():
                break
            time.sleep(0.02)
        else:
            pytest.fail("the job never reached its third checkpoint")
        worker_pid = json.loads((job.dir / "running").read_text())["pid"]
        os.killpg(launcher.pid, signal.SIGKILL)
        os.kill(worker_pid, signal.SIGKILL)
        launcher.wait()
        for _ in range(100):  # until the kernel has reaped the worker
            try:
                os.kill(worker_pid, 0)
                time.sleep(0.02)
            except ProcessLookupError:
                break
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        info = job.dir / "running"
        if info.exists():  # never leave a worker behind, whatever happened
            try:
                os.kill(json.loads(info.read_text())["pid"], signal.SIGKILL)
            except (ProcessLookupError, ValueError, KeyError):
                pass
    assert job_state(job.dir).state == "incomplete"
    assert "resumable" in job_state(job.dir).detail
    assert (job.dir / "done").exists() is False
    code = main(["sweep", "launch", *SWEEP, "--output-dir", str(out), "--skip-confirmation",
                 "--no-progress", "--threads", "1", *args])
    assert code == 0
    attempts = read_attempts(job.dir)
    assert [a["resumed"] for a in attempts] == [False, True]
    steps = [r["step"] for r in _records(job.dir)]
    assert steps == list(range(0, 400, 20)) + [399]  # every checkpoint once, none duplicated


def test_delete_incomplete_keeps_done_and_running_jobs(tmp_path):
    out = tmp_path / "sweep"
    done, incomplete, running, untouched = _jobs(out, n_trials=1)[:3] + [None]
    for job in (done, incomplete, running):
        job.dir.mkdir(parents=True)
        (job.dir / "attempts.jsonl").write_text("{}\n")
        (job.dir / "results.jsonl").write_text("{}\n")
    (done.dir / "done").write_text("done")
    lock = JobLock(running.dir)
    assert lock.acquire()
    try:
        code = main(["sweep", "status", *SWEEP, "--steps", "3", "--n-trials", "1",
                     "--output-dir", str(out)])
        assert code == 0
        code = main(["sweep", "delete_incomplete", *SWEEP, "--steps", "3", "--n-trials", "1",
                     "--output-dir", str(out), "--skip_confirmation"])
        assert code == 0
        assert done.dir.exists() and running.dir.exists()
        assert not incomplete.dir.exists()
    finally:
        lock.release()


FLAKY = '''
import os
from shiftbench.algorithms import register_algorithm
from shiftbench.algorithms.erm import ERM

@register_algorithm
class FlakySweepERM(ERM):
    """ERM that raises on its third update while $SHIFTBENCH_TEST_FAIL is set."""
    PAPER = "test double"

    def update(self, minibatches, unlabeled=None):
        self._calls = getattr(self, "_calls", 0) + 1
        if os.environ.get("SHIFTBENCH_TEST_FAIL") and self._calls >= 3:
            raise RuntimeError("injected failure")
        return super().update(minibatches, unlabeled)
'''


@pytest.fixture
def flaky_algorithm(tmp_path, monkeypatch):
    from shiftbench.algorithms import base

    (tmp_path / "flaky_sweep_plugin.py").write_text(FLAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    import flaky_sweep_plugin  # noqa: F401

    yield "FlakySweepERM"
    base.ALGORITHM_REGISTRY._items.pop("FlakySweepERM", None)
    if "FlakySweepERM" in base.ALGORITHMS:
        base.ALGORITHMS.remove("FlakySweepERM")
    sys.modules.pop("flaky_sweep_plugin", None)


def test_failed_jobs_are_reported_and_rerun_failed_resumes_them(tmp_path, monkeypatch, capsys,
                                                                 flaky_algorithm):
    out = tmp_path / "sweep"
    flags = ["--datasets", "DebugVector", "--algorithms", flaky_algorithm, "--single-test-envs",
             "--n-trials", "1", "--steps", "6", "--checkpoint-freq", "1", "--output-dir", str(out),
             "--import", "flaky_sweep_plugin"]
    monkeypatch.setenv("SHIFTBENCH_TEST_FAIL", "1")
    spec = SweepSpec(datasets=["DebugVector"], algorithms=[flaky_algorithm], n_trials=1, steps=6,
                     checkpoint_freq=1, single_test_envs=True)
    spec.validate()
    jobs = enumerate_jobs(spec, out)[:2]
    # Restrict the sweep to two jobs with a spec file's test_envs.
    toml = tmp_path / "s.toml"
    toml.write_text('[test_envs]\nDebugVector = [[0], [1]]\n')
    flags += ["--spec", str(toml)]
    flags_launch = ["--skip-confirmation", "--no-progress", "--threads", "1"]
    assert main(["sweep", "launch", *flags, *flags_launch]) == 1
    assert all(job_state(j.dir).state == "failed" for j in jobs)
    assert "injected failure" in job_state(jobs[0].dir).detail
    capsys.readouterr()
    assert main(["sweep", "launch", *flags, *flags_launch]) == 0
    assert "nothing to launch" in capsys.readouterr().out  # failed jobs are not relaunched
    monkeypatch.delenv("SHIFTBENCH_TEST_FAIL")
    assert main(["sweep", "rerun-failed", *flags, *flags_launch]) == 0
    for job in jobs:
        assert job_state(job.dir).state == "done"
        assert [a["resumed"] for a in read_attempts(job.dir)] == [False, True]
        assert [r["step"] for r in _records(job.dir)] == list(range(6))


def test_multi_gpu_launcher_gives_each_job_one_device_it_must_use(tmp_path, monkeypatch):
    import torch

    from shiftbench.sweeps import gpus

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(gpus, "cuda_device_count", lambda: 8)  # the launcher sees 8 fake GPUs
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "sweep"
    code = main(["sweep", "launch", *SWEEP, "--n-trials", "1", "--steps", "2", "--output-dir",
                 str(out), "--launcher", "multi_gpu", "--gpu-ids", "3,5", "--threads", "1",
                 "--skip-confirmation", "--no-progress"])
    assert code == 1  # the jobs got no usable GPU: failed, not trained on the CPU
    jobs = _jobs(out, steps=2)
    devices = [read_attempts(j.dir)[0]["cuda_visible_devices"] for j in jobs]
    assert len(devices) == 3 and set(devices) <= {"3", "5"}
    for job in jobs:
        assert job_state(job.dir).state == "failed" and not (job.dir / "results.jsonl").exists()
        assert "SHIFTBENCH_DEVICE (set by the launcher that asked for a GPU) cuda: CUDA is not " \
               "available" in (job.dir / "err.txt").read_text()


BLOCKING = textwrap.dedent('''
    import os
    import time
    from pathlib import Path

    from shiftbench.algorithms import register_algorithm
    from shiftbench.algorithms.erm import ERM


    @register_algorithm
    class BlockingERM(ERM):
        """ERM that, once its step-40 checkpoint is written, says so and waits (interruptibly)
        until the test releases it: the interrupt then always finds both jobs at that point."""

        PAPER = "none (a test helper)"

        def update(self, minibatches, unlabeled=None):
            if int(self.num_updates) == 41:
                flags = Path(os.environ["SB_BLOCK_DIR"])
                (flags / f"{os.getpid()}.waiting").touch()
                while not (flags / "release").exists():
                    time.sleep(0.05)
            return super().update(minibatches, unlabeled)
''')


@pytest.fixture
def blocking(tmp_path, monkeypatch):
    """The BlockingERM plug-in, importable here and by the launched processes."""
    from shiftbench.algorithms import ALGORITHM_REGISTRY, ALGORITHMS

    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "sb_blocking.py").write_text(BLOCKING)
    flags = tmp_path / "flags"
    flags.mkdir()
    monkeypatch.syspath_prepend(str(plug))
    __import__("sb_blocking")
    env = {**os.environ, "SB_BLOCK_DIR": str(flags),
           "PYTHONPATH": os.pathsep.join([str(plug), *sys.path])}
    yield env, flags
    ALGORITHM_REGISTRY._items.pop("BlockingERM", None)
    if "BlockingERM" in ALGORITHMS:
        ALGORITHMS.remove("BlockingERM")
    sys.modules.pop("sb_blocking", None)


@pytest.mark.slow
def test_ctrl_c_stops_jobs_and_leaves_them_resumable(tmp_path, blocking):
    env, flags = blocking
    out = tmp_path / "sweep"
    args = ["--n-trials", "1", "--steps", "400", "--checkpoint-freq", "20", "--jobs", "2",
            "--algorithms", "BlockingERM", "--import", "sb_blocking"]
    launcher = subprocess.Popen(_launch_cmd(out, *args), stdout=subprocess.PIPE, env=env,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    jobs = _jobs(out, steps=400, checkpoint_freq=20, algorithm="BlockingERM")
    try:
        # both running jobs wait at step 41 (after their step-40 checkpoint) until released, so
        # however slow the machine, Ctrl-C finds them there; the deadline only bounds a hang
        deadline = time.time() + 900
        while len(list(flags.glob("*.waiting"))) < 2 and launcher.poll() is None:
            if time.time() > deadline:
                pytest.fail("the jobs never reached their step-40 checkpoint")
            time.sleep(0.05)
        assert launcher.poll() is None, launcher.communicate()[0]
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output = launcher.communicate(timeout=600)[0]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 130, output
    assert "interrupted" in output
    for job in jobs[:2]:
        state = job_state(job.dir)
        assert state.state == "incomplete" and "resumable" in state.detail, state
        assert [r["step"] for r in _records(job.dir)] == [0, 20, 40]
    assert job_state(jobs[2].dir).state == "not_launched"
