"""Rough edges a user hits: piped output closed early, launchers without their resources."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_closed_pipe_exits_quietly():
    """`shiftbench ... | head`: the reader is gone before anything is written (its end of the
    pipe is closed before the process starts), so every write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "shiftbench", "data", "--json"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


SWEEP = ["--datasets", "DebugVector", "--algorithms", "ERM", "--single-test-envs", "--n-trials",
         "1", "--steps", "2", "--skip-confirmation", "--no-progress"]


def test_multi_gpu_without_cuda_is_refused(tmp_path, capsys):
    import torch

    from shiftbench.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["sweep", "launch", *SWEEP, "--output-dir", str(tmp_path / "s"), "--launcher",
                 "multi_gpu", "--gpus", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "multi_gpu launcher: --gpus 1: no GPU is visible" in err
    assert "--launcher local" in err
    assert not list((tmp_path / "s").rglob("results.jsonl"))  # nothing ran on the CPU


def test_slurm_without_slurm_names_what_is_missing(tmp_path, capsys, monkeypatch):
    import shutil

    from shiftbench.cli import main

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no sbatch anywhere
    code = main(["sweep", "launch", *SWEEP, "--output-dir", str(tmp_path / "s"), "--launcher",
                 "slurm"])
    err = capsys.readouterr().err
    assert code == 2 and "the slurm launcher needs" in err
    assert "sbatch command (not found on PATH" in err and "--launcher local" in err
    assert "Traceback" not in err
    assert shutil.which("sbatch") is None
    monkeypatch.setitem(sys.modules, "submitit", None)  # and no submitit either
    code = main(["sweep", "launch", *SWEEP, "--output-dir", str(tmp_path / "s"), "--launcher",
                 "slurm"])
    err = capsys.readouterr().err
    assert code == 2 and "the Python package submitit" in err and "sbatch" in err


def fake_slurm_client(tmp_path, sbatch_body: str):
    """A folder with stand-ins for Slurm's sbatch (running `sbatch_body`) and srun."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", sbatch_body), ("srun", "exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_slurm_without_srun_names_it(tmp_path, capsys, monkeypatch):
    """submitit cannot start without srun: a host with sbatch only gets a clear error."""
    pytest.importorskip("submitit")
    from shiftbench.cli import main

    bin_dir = fake_slurm_client(tmp_path, "exit 1")
    (bin_dir / "srun").unlink()
    monkeypatch.setenv("PATH", str(bin_dir))
    code = main(["sweep", "launch", *SWEEP, "--output-dir", str(tmp_path / "s"), "--launcher",
                 "slurm"])
    err = capsys.readouterr().err
    assert code == 2 and "srun command (not found on PATH" in err and "Traceback" not in err
    assert "sbatch command" not in err


def test_slurm_that_refuses_the_submission_gives_its_reason(tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    from shiftbench.cli import main

    # a Slurm client whose controller is down: its own sbatch and srun, whether or not this
    # machine has Slurm installed (another test may have installed and started one)
    bin_dir = fake_slurm_client(tmp_path, "echo 'sbatch: error: Unable to contact slurm "
                                          "controller' >&2\nexit 1")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code = main(["sweep", "launch", *SWEEP, "--output-dir", str(tmp_path / "s"), "--launcher",
                 "slurm"])
    err = capsys.readouterr().err
    assert code == 2
    assert "sbatch refused the job array: sbatch: error: Unable to contact slurm controller" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("device, message", [
    ("gpu", "'gpu' is not a device; valid: cpu, cuda"),
    ("cuda", "--device cuda: CUDA is not available"),
])
def test_unusable_device_is_refused(tmp_path, capsys, device, message):
    import torch

    from shiftbench.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", "--dataset", "DebugVector", "--steps", "1", "--device", device,
                 "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "results.jsonl").exists()
